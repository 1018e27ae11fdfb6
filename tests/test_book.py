"""The built book, read in a real browser (headless Chromium), as a reader would see it.

Builds the book (``tools/build_book.py``, smoke profile) from the notebooks nbval executed earlier in the same
pytest session (fixture ``nbval_executed`` in ``conftest.py``; notebooks not executed there are executed now),
serves ``_build/html`` on a loopback port and opens every page of the table of contents in headless Chromium
(DevTools protocol over a pipe, see ``tools/book_screenshots.py``). After the page's scripts have run (MathJax
typeset, images loaded), each test fails on one kind of defect:

* a broken internal link (missing page or missing ``#anchor``), an image that does not load, or a script or
  stylesheet fetched from another site (the book must work offline);
* raw, untypeset math (``\\(``, ``$$``, ``\\begin{``, ``$\\alpha$``…) in the text, or a math element that
  MathJax did not turn into ``mjx-container``;
* an error output (traceback) on a notebook page;
* a notebook page with fewer figures than its notebook makes (image outputs and ``{glue:figure}``);
* a figure without a number and caption, never referred to, or a plot shown bare outside a captioned
  figure; a page that does not open with one admonition; a notebook page without its profile banner.

Skipped, with the reason, only where no Chromium binary is found (install the Debian packages ``chromium``
and ``chromium-driver``, as ``.ci/run`` does, or set ``BIOFT_CHROMIUM``). Marked ``browser``: runs last.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import book_screenshots as browser_tools  # noqa: E402  (tools/ is not a package)

pytestmark = pytest.mark.browser

HTML = ROOT / "_build" / "html"
SRC = ROOT / "_build" / "src"
IMAGE_MIMES = ("image/png", "image/jpeg", "image/svg+xml", "image/gif")
REMOVED_OUTPUT = {"remove-output", "remove_output", "remove-cell", "remove_cell"}
#: Text that MathJax would have replaced had it typeset the page.
RAW_MATH = re.compile(
    r"\\\(|\\\)|\\\[|\\\]|\$\$|\\begin\{|\\end\{"
    r"|\$[^$\s][^$\n]{0,80}?\\[A-Za-z]+[^$\n]{0,80}?\$"  # $\alpha$, $W + \frac{a}{r}BA$
    r"|\\(?:frac|sqrt|mathrm|mathbf|mathcal|operatorname|sum|prod|log|exp|alpha|beta|theta|sigma|top)\b"
)

#: Everything the checks need from one page, read from the live DOM after its scripts ran.
INSPECT_JS = r"""(() => {
  const article = document.querySelector('article.bd-article') || document.querySelector('main') || document.body;
  const skip = new Set(['SCRIPT', 'STYLE', 'PRE', 'CODE', 'KBD', 'SAMP', 'TEXTAREA', 'NOSCRIPT',
                        'MJX-CONTAINER', 'MJX-ASSISTIVE-MML']);
  const texts = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    let hidden = false;
    for (let el = node.parentElement; el; el = el.parentElement)
      if (skip.has(el.tagName) || el.classList.contains('highlight')) { hidden = true; break; }
    if (!hidden && node.nodeValue.trim()) texts.push(node.nodeValue);
  }
  const loaded = img => img.complete && img.naturalWidth > 0;
  const h1 = article.querySelector('h1');
  let first = h1 ? h1.nextElementSibling : null;
  while (first && (first.tagName === 'SPAN' || first.tagName === 'A' || first.tagName === 'STYLE')) first = first.nextElementSibling;
  return {
    status_title: document.title,
    h1: h1 ? h1.textContent.replace(/[#¶]\s*$/, '').trim() : null,
    opens_with_admonition: !!(first && first.classList.contains('admonition')),
    links: [...document.querySelectorAll('a[href]')].map(a => [a.getAttribute('href'), a.href]),
    images: [...document.images].map(img => ({src: img.getAttribute('src'), ok: loaded(img), in_article: article.contains(img)})),
    assets: [...document.querySelectorAll('script[src], link[rel=stylesheet][href]')].map(e => e.src || e.href),
    ids: [...document.querySelectorAll('[id]')].map(e => e.id).concat([...document.querySelectorAll('a[name]')].map(a => a.name)),
    math_total: article.querySelectorAll('.math').length,
    math_typeset: [...article.querySelectorAll('.math')].filter(e => e.querySelector('mjx-container')).length,
    mjx: document.querySelectorAll('mjx-container').length,
    text: texts.join('\n'),
    tracebacks: [...article.querySelectorAll('.traceback, .output.error')].map(e => e.textContent.slice(0, 400)),
    output_text: [...article.querySelectorAll('.cell_output')].map(e => e.textContent).join('\n'),
    figures: [...article.querySelectorAll('figure')].map(f => ({
      id: f.id, images: [...f.querySelectorAll('img')].map(loaded),
      number: (f.querySelector('.caption-number') || {}).textContent || '',
      caption: ((f.querySelector('.caption-text') || f.querySelector('figcaption') || {}).textContent || '').trim()})),
    article_images: [...article.querySelectorAll('img')].filter(loaded).length,
    loose_images: [...article.querySelectorAll('img')].filter(img => !img.closest('figure')).map(img => img.getAttribute('src')),
    banner: !!article.querySelector('.bioft-profile-banner'),
  };
})()"""


# --- building and visiting ---------------------------------------------------------------------------
def _failed_notebooks(session) -> list[str]:
    """Notebooks nbval ran in this session with a failing cell (the book cannot be built from them)."""
    cells: dict[str, list] = {}
    for item in session.items:
        if type(item).__name__ == "IPyNbCell":
            cells.setdefault(str(item.parent.path), []).append(item)
    return sorted(path for path, items in cells.items()
                  if any(getattr(c, "bioft_passed", None) is False for c in items))


@pytest.fixture(scope="module")
def built_book(request, nbval_executed) -> Path:
    """``_build/html`` built in the smoke profile, from nbval's executed notebooks where this session has them."""
    failed = _failed_notebooks(request.session)
    if failed:
        pytest.fail(f"not building the book: these notebooks failed under nbval in this session: {failed}")
    import build_book

    start = time.monotonic()
    try:
        index = build_book.build_book("smoke")
    except subprocess.CalledProcessError as err:  # the warnings are in the captured output above
        pytest.fail(f"the book build failed (exit {err.returncode}); its warnings are in the captured stdout/stderr",
                    pytrace=False)
    except Exception as err:  # a notebook failed under papermill: say which and why, without 5 tracebacks
        pytest.fail(f"the book build failed: {type(err).__name__}: {str(err).strip()[-2000:]}", pytrace=False)
    print(f"book built in {time.monotonic() - start:.0f} s; reused {len(nbval_executed)} notebooks executed by nbval")
    return index.parent


def test_book_builds_without_warnings(built_book):
    """``jupyter-book build -W`` succeeded (a warning fails it) and every page of the table of contents exists."""
    pages = browser_tools.book_pages(built_book)
    assert (built_book / "index.html").exists()
    toc_files = _toc_files()
    missing = [f for f in toc_files if not (built_book / f"{f}.html").exists()]
    assert not missing, f"pages in _toc.yml missing from the build: {missing}"
    assert len(pages) == len(toc_files)


def _toc_files() -> list[str]:
    import yaml

    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    return [toc["root"]] + [ch["file"] for part in toc["parts"] for ch in part["chapters"]]


@pytest.fixture(scope="module")
def site(built_book) -> dict:
    """Every page of the book as the browser saw it: ``{"base": url, "pages": {path: inspection}}``."""
    binary = browser_tools.find_chromium()
    if binary is None:
        pytest.skip("Chromium not found: install the Debian packages chromium and chromium-driver "
                    "(`apt-get install -y chromium chromium-driver`, as .ci/run does) or set BIOFT_CHROMIUM")
    pages = {}
    start = time.monotonic()
    with browser_tools.serve(built_book) as base, browser_tools.Chromium(binary) as browser:
        browser.goto(base)  # index.html redirects to the root page of the table of contents
        root = browser_tools.book_pages(built_book)[0]
        browser.wait_for(f"location.pathname.endsWith({json.dumps('/' + root)})")
        for page in browser_tools.book_pages(built_book):
            browser.goto(base + page)
            pages[page] = browser.evaluate(INSPECT_JS)
    print(f"inspected {len(pages)} pages in Chromium in {time.monotonic() - start:.1f} s")
    return {"base": base, "pages": pages}


def _report(problems: list[str]) -> str:
    return f"{len(problems)} problem(s):\n  " + "\n  ".join(problems)


# --- links and images --------------------------------------------------------------------------------
_static_ids: dict[str, set[str]] = {}


def _ids_of(path: str, site: dict) -> set[str]:
    if path in site["pages"]:
        return set(site["pages"][path]["ids"])
    if path not in _static_ids:
        text = (HTML / path).read_text(errors="replace")
        _static_ids[path] = set(re.findall(r'\b(?:id|name)="([^"]+)"', text))
    return _static_ids[path]


def test_internal_links_and_images(site):
    """Every link to a page of this site reaches an existing file and anchor; every image loads; scripts and
    stylesheets come from the book itself (it works offline)."""
    problems = []
    for page, info in site["pages"].items():
        for href, absolute in info["links"]:
            if not href or href.startswith(("mailto:", "javascript:", "data:", "tel:")):
                continue
            parts = urlsplit(absolute)
            if not absolute.startswith(site["base"]):
                continue  # external: cannot be checked offline
            path = unquote(parts.path).lstrip("/")
            target = HTML / path
            if path == "" or path.endswith("/"):
                target, path = target / "index.html", path + "index.html"
            if not target.is_file():
                problems.append(f"{page}: link {href!r} points to a missing file {path}")
            elif parts.fragment and target.suffix == ".html" and unquote(parts.fragment) not in _ids_of(path, site):
                problems.append(f"{page}: link {href!r}: no element with id {parts.fragment!r} in {path}")
        for image in info["images"]:
            if not image["ok"]:
                problems.append(f"{page}: image {image['src']!r} did not load")
        for asset in info["assets"]:  # the book must work offline: no CDN for MathJax, fonts or scripts
            if not asset.startswith(site["base"]):
                problems.append(f"{page}: loads {asset} from another site; the book must work offline")
    assert not problems, _report(problems)


# --- math --------------------------------------------------------------------------------------------
def test_math_is_typeset(site):
    """No raw LaTeX in the text, and every math element was typeset by MathJax (served offline)."""
    problems = []
    for page, info in site["pages"].items():
        for match in RAW_MATH.finditer(info["text"]):
            context = info["text"][max(0, match.start() - 40):match.end() + 40].replace("\n", " ")
            problems.append(f"{page}: raw math {match.group(0)!r} in the text: …{context}…")
        if info["math_typeset"] < info["math_total"]:
            problems.append(f"{page}: MathJax typeset {info['math_typeset']} of {info['math_total']} math elements")
    typeset = sum(info["mjx"] for info in site["pages"].values())
    assert typeset > 0, "no page has any typeset math (mjx-container): is MathJax loading?"
    assert not problems, _report(problems)


# --- notebook pages ----------------------------------------------------------------------------------
def _notebook_pages(site: dict) -> dict[str, nbformat.NotebookNode]:
    """Notebook pages of the site and the executed notebook each was rendered from."""
    notebooks = {}
    for page in site["pages"]:
        source = SRC / page.replace(".html", ".ipynb")
        if source.exists():
            notebooks[page] = nbformat.read(source, as_version=4)
    return notebooks


def test_notebook_pages_show_no_errors(site):
    """No notebook page shows an error output or a traceback."""
    problems = []
    for page, nb in _notebook_pages(site).items():
        for i, cell in enumerate(nb.cells):
            for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
                if out.output_type == "error":
                    problems.append(f"{page}: cell {i} has an error output {out.ename}: {out.evalue}")
        info = site["pages"][page]
        problems += [f"{page}: the page shows a traceback: {t[:200]!r}" for t in info["tracebacks"]]
        if "Traceback (most recent call last)" in info["output_text"]:
            problems.append(f"{page}: an output shows 'Traceback (most recent call last)'")
    assert not problems, _report(problems)


def expected_figures(nb: nbformat.NotebookNode) -> dict:
    """What figures the executed notebook makes: image outputs shown, ``{glue:figure}`` directives (with
    their ``:name:``), and whether any code makes a figure at all."""
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    shown = 0
    for cell in nb.cells:
        if cell.cell_type != "code" or REMOVED_OUTPUT & set(cell.metadata.get("tags", [])):
            continue
        shown += sum(1 for out in cell.outputs if out.output_type in ("display_data", "execute_result")
                     and any(m in out.get("data", {}) for m in IMAGE_MIMES))
    glued = re.findall(r"[`:]{3,}\s*\{glue:figure\}\s*(\S+)([^`]*?)(?:\n[`:]{3,}|$)", markdown)
    names = [m.group(1) for _, body in glued if (m := re.search(r":name:\s*(\S+)", body))]
    makes = bool(shown or glued or re.search(r"\bglue\([^)]*fig|\bplt\.|\bplots\.|\.savefig\(|\.plot\(", code))
    return {"shown": shown, "glued": len(glued), "names": names, "makes": makes}


def test_notebook_pages_show_their_figures(site):
    """A notebook page has at least as many loaded images as its notebook makes, and each named glued figure
    holds an image."""
    problems = []
    for page, nb in _notebook_pages(site).items():
        info, want = site["pages"][page], expected_figures(nb)
        need = want["shown"] + want["glued"]
        if want["makes"] and info["article_images"] == 0:
            problems.append(f"{page}: its notebook makes figures but the page shows no image")
        elif info["article_images"] < need:
            problems.append(f"{page}: {info['article_images']} images shown, the notebook makes {need} "
                            f"({want['shown']} image outputs + {want['glued']} glue:figure)")
        by_id = {f["id"]: f for f in info["figures"]}
        for name in want["names"]:
            if name not in by_id or not any(by_id[name]["images"]):
                problems.append(f"{page}: figure {name!r} has no loaded image")
    assert not problems, _report(problems)


def test_figures_are_numbered_captioned_and_referenced(site):
    """Every figure has a number and a caption, and some page links to it; no plot is shown bare, outside a
    captioned figure (a figure glued with ``display=False`` but left open also shows as a plain output)."""
    referenced = {urlsplit(absolute).fragment for info in site["pages"].values() for _, absolute in info["links"]}
    problems = []
    for page, info in site["pages"].items():
        for src in info["loose_images"]:
            problems.append(f"{page}: image {src} is shown outside a numbered, captioned figure; show it with "
                            "{glue:figure}, and close it after glue(..., display=False) (plt.close(fig)) so that "
                            "it is not shown a second time as a plain output")
        for fig in info["figures"]:
            label = fig["id"] or "(figure without id)"
            if not fig["number"].strip() or not fig["caption"]:
                problems.append(f"{page}: figure {label} lacks a number or a caption")
            if re.fullmatch(r"id\d+", fig["id"] or "id0"):
                problems.append(f"{page}: a figure has no :name:, so the prose cannot refer to it; name it "
                                f"(e.g. fig05-speed) and cite it with {{numref}}")
            elif fig["id"] not in referenced:
                problems.append(f"{page}: figure {label} is never referred to ({{numref}}`{fig['id']}`)")
    assert not problems, _report(problems)


# --- page structure ----------------------------------------------------------------------------------
def test_pages_open_with_one_admonition_and_notebooks_show_the_profile(site):
    """Every page opens (right under its title) with an admonition; every notebook page shows its profile
    banner, so a reader knows which profile produced the outputs."""
    problems = []
    for page, info in site["pages"].items():
        if info["h1"] is None or info["status_title"].startswith("Error response"):
            problems.append(f"{page}: not a book page (title {info['status_title']!r})")
        elif not info["opens_with_admonition"]:
            problems.append(f"{page}: does not open with an admonition under its title")
    for page in _notebook_pages(site):
        if not site["pages"][page]["banner"]:
            problems.append(f"{page}: no profile banner (P.show() in a cell tagged remove-input)")
    assert not problems, _report(problems)

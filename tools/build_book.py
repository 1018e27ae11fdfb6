"""Execute the notebooks in one profile and build the HTML book (Jupyter Book 1.x). Used by `make book`.

Steps:
1. Execute each notebook listed in ``_toc.yml`` with papermill into ``_build/executed/notebooks/``
   (the working directory is ``notebooks/``, as under nbval). An executed copy is reused when it is newer
   than its source and was made in the same profile (``make test`` leaves such copies behind).
2. Stage a source tree in ``_build/src`` (config, toc, ``book/``, the executed notebooks, and MathJax 3
   copied from the ``django-static-mathjax`` wheel so that math renders with no CDN).
3. ``jupyter-book build _build/src --path-output . -W --keep-going`` (a warning fails the build), which writes
   ``_build/html``; print the path of ``index.html``.

Usage: ``python tools/build_book.py [--profile smoke|full] [--force] [--screenshots]``.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "_build"
EXECUTED = BUILD / "executed"
SRC = BUILD / "src"
PROFILE_KEY = "bioft_profile"


def toc_notebooks(root: Path = ROOT) -> list[Path]:
    """Notebook files named in ``_toc.yml``, in book order."""
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    files = [ch["file"] for part in toc.get("parts", []) for ch in part.get("chapters", [])]
    return [root / f"{f}.ipynb" for f in files if (root / f"{f}.ipynb").exists()]


def executed_path(source: Path) -> Path:
    return EXECUTED / source.relative_to(ROOT)


def is_fresh(source: Path, profile: str) -> bool:
    """True if an executed copy exists, is newer than ``source``, the package and the stored GPU results
    (pages render them), and used ``profile``."""
    target = executed_path(source)
    if not target.exists():
        return False
    results = ROOT / "book" / "results"  # folders included: their mtime changes when a file is added or removed
    inputs = [*(ROOT / "bioft_tutorial").rglob("*.py"), *([results, *results.rglob("*")] if results.is_dir() else [])]
    package_mtime = max(p.stat().st_mtime for p in inputs)
    if target.stat().st_mtime < max(source.stat().st_mtime, package_mtime):
        return False
    nb = nbformat.read(target, as_version=4)
    return nb.metadata.get(PROFILE_KEY) == profile


def mark_profile(path: Path, profile: str) -> None:
    nb = nbformat.read(path, as_version=4)
    nb.metadata[PROFILE_KEY] = profile
    nbformat.write(nb, path)


def execute(source: Path, profile: str) -> float:
    """Execute one notebook with papermill in ``profile``; returns seconds taken."""
    import papermill

    target = executed_path(source)
    target.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    os.environ["BIOFT_PROFILE"] = profile
    papermill.execute_notebook(str(source), str(target), cwd=str(source.parent), progress_bar=False,
                               kernel_name="python3", log_output=False)
    mark_profile(target, profile)
    return time.time() - start


def stage(notebooks: list[Path]) -> None:
    """Copy what Jupyter Book needs into ``_build/src``."""
    if SRC.exists():
        shutil.rmtree(SRC)
    SRC.mkdir(parents=True)
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy2(ROOT / name, SRC / name)
    shutil.copytree(ROOT / "book", SRC / "book")
    for page in (SRC / "book").glob("*.md"):  # pages executed at build time (setup.md reads book/results/gpu)
        if "execution_mode: force" in page.read_text().split("\n---", 1)[0]:
            page.touch()  # so that Sphinx re-reads and re-executes them even when only the results changed
    for nb in notebooks:
        dest = SRC / nb.relative_to(ROOT)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(executed_path(nb), dest)
    import mathjax  # the django-static-mathjax wheel

    es5 = Path(mathjax.__file__).parent / "static" / "mathjax" / "es5"
    if not (es5 / "tex-mml-chtml.js").exists():
        raise FileNotFoundError(f"MathJax not found at {es5}; pip install django-static-mathjax==3.2.2.1")
    shutil.copytree(es5, SRC / "_static_extra" / "mathjax" / "es5")


def build_html() -> Path:
    """Run Jupyter Book on the staged tree; returns the path of index.html."""
    html = BUILD / "html"
    if html.exists():
        shutil.rmtree(html)
    cmd = [str(Path(sys.executable).parent / "jupyter-book"), "build", str(SRC), "--path-output", str(ROOT),
           "-W", "--keep-going"]
    subprocess.run(cmd, check=True, cwd=ROOT)
    index = html / "index.html"
    if not index.exists():
        raise FileNotFoundError(f"the build finished but {index} is missing")
    return index


def build_book(profile: str, force: bool = False, screenshots: bool = False) -> Path:
    """Execute (if needed), stage and build; returns ``_build/html/index.html``."""
    notebooks = toc_notebooks()
    for nb in notebooks:
        if force or not is_fresh(nb, profile):
            seconds = execute(nb, profile)
            print(f"executed {nb.relative_to(ROOT)} in {seconds:.0f} s ({profile})", flush=True)
        else:
            print(f"reusing executed {nb.relative_to(ROOT)} ({profile})", flush=True)
    stage(notebooks)
    index = build_html()
    if screenshots:
        from book_screenshots import take_screenshots  # tools/book_screenshots.py

        for path in take_screenshots(index.parent, BUILD / "screenshots"):
            print(f"screenshot {path}")
    return index


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default=os.environ.get("BIOFT_PROFILE", "smoke"), choices=("smoke", "full"))
    parser.add_argument("--force", action="store_true", help="re-execute every notebook")
    parser.add_argument("--screenshots", action="store_true", help="also write _build/screenshots/*.png")
    args = parser.parse_args()
    index = build_book(args.profile, force=args.force, screenshots=args.screenshots)
    print(f"\nThe book is at {index}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()

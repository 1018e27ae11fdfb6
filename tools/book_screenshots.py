"""Drive headless Chromium over the DevTools protocol: screenshots of the built book, and page inspection.

Used by ``make screenshots`` / ``make book SCREENSHOTS=1`` (through :func:`take_screenshots`, imported by
``tools/build_book.py``) and by ``tests/test_book.py``. Standard library only: Chromium is started with
``--remote-debugging-pipe``, so the DevTools protocol runs over two pipes (JSON messages ending in a NUL byte)
and needs neither a websocket client nor selenium/chromedriver. The book is served from a loopback
``http.server`` (pages opened as ``file://`` would not load MathJax and fonts as a reader's browser does).

Chromium comes from the distribution (Debian: ``apt-get install chromium``); set ``BIOFT_CHROMIUM`` to use
another binary. Usage::

    python tools/book_screenshots.py [_build/html] [_build/screenshots]
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import http.server
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from base64 import b64decode
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
#: Flags for a reproducible, offline, sandbox-free (root in CI containers) headless browser.
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--disable-dev-shm-usage", "--no-default-browser-check",
    "--hide-scrollbars", "--mute-audio", "--remote-debugging-pipe",
)
WIDTH, HEIGHT = 1280, 900  # a laptop screen: the sidebar and the page body both show
MAX_SHOT_HEIGHT = 12000  # px per PNG; taller pages are cut into several (Chromium's limit is ~16k)

#: Resolves when the page has loaded, MathJax has typeset, images have loaded (or failed) and fonts are ready.
READY_JS = """(async () => {
  const sleep = ms => new Promise(r => setTimeout(r, ms));
  if (document.readyState !== 'complete') await new Promise(r => addEventListener('load', r, {once: true}));
  const mathjaxScript = document.querySelector('script[src*="mathjax"]');
  const t0 = Date.now();
  while (mathjaxScript && !(window.MathJax && MathJax.startup && MathJax.startup.promise) && Date.now() - t0 < 20000)
    await sleep(50);
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) await MathJax.startup.promise;
  await Promise.all([...document.images].map(img => img.complete ? null : new Promise(r => {
    img.addEventListener('load', r); img.addEventListener('error', r); setTimeout(r, 10000); })));
  await document.fonts.ready;
  await sleep(50);
  return true;
})()"""


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome binary (``$BIOFT_CHROMIUM`` first), or None."""
    override = os.environ.get("BIOFT_CHROMIUM")
    if override:
        return shutil.which(override) or (override if Path(override).exists() else None)
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


class ChromiumError(RuntimeError):
    """Chromium failed to start, crashed, or a DevTools command failed or timed out."""


class Chromium:
    """One headless Chromium, one tab, driven over ``--remote-debugging-pipe``.

    >>> with Chromium() as browser:
    ...     browser.goto("http://127.0.0.1:8000/book/intro.html")
    ...     browser.evaluate("document.title")
    """

    def __init__(self, binary: str | None = None, width: int = WIDTH, height: int = HEIGHT, timeout_s: float = 60):
        self.binary = binary or find_chromium()
        if self.binary is None:
            raise ChromiumError("Chromium not found: apt-get install chromium (Debian), or set BIOFT_CHROMIUM")
        self.width, self.height, self.timeout_s = width, height, timeout_s
        self._next_id = 0
        self._buffer = b""
        self._events: list[dict] = []

    # --- process and pipes -------------------------------------------------------------------------
    def __enter__(self) -> "Chromium":
        self._profile = tempfile.mkdtemp(prefix="bioft-chromium-")
        # Chromium reads commands on fd 3 and writes replies on fd 4. Our pipe ends are first moved to
        # descriptors >= 10 so that putting them on 3 and 4 in the child cannot overwrite one another.
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        high_r = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD_CLOEXEC, 10)
        high_w = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD_CLOEXEC, 10)
        for fd in (to_browser_r, from_browser_w):
            os.close(fd)
        cmd = [self.binary, *CHROMIUM_FLAGS, f"--user-data-dir={self._profile}",
               f"--window-size={self.width},{self.height}", "about:blank"]

        def child_fds() -> None:  # runs in the child before exec; the copies on 3 and 4 survive exec
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)

        self._log = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log,
                                      close_fds=False, preexec_fn=child_fds)
        os.close(high_r)
        os.close(high_w)
        try:
            target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            self._session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime"):
                self.send(f"{domain}.enable", session=True)
            self.send("Emulation.setDeviceMetricsOverride", {"width": self.width, "height": self.height,
                                                             "deviceScaleFactor": 1, "mobile": False}, session=True)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        with contextlib.suppress(Exception):
            self.send("Browser.close", timeout_s=5)
        with contextlib.suppress(Exception):
            self._proc.wait(timeout=10)
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        for fd in (self._to_browser, self._from_browser):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._log.close()
        shutil.rmtree(self._profile, ignore_errors=True)

    def _browser_log(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-2000:]

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ChromiumError("timed out waiting for Chromium")
            ready, _, _ = select.select([self._from_browser], [], [], min(left, 1.0))
            if ready:
                chunk = os.read(self._from_browser, 1 << 20)
                if not chunk:
                    raise ChromiumError(f"Chromium exited (code {self._proc.poll()}):\n{self._browser_log()}")
                self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method: str, params: dict | None = None, session: bool = False,
             timeout_s: float | None = None) -> dict:
        """Send one DevTools command and return its result (events that arrive meanwhile are kept)."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self._session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise ChromiumError(f"{method} failed: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self._events.append(reply)

    def _wait_event(self, name: str, timeout_s: float) -> dict:
        deadline = time.monotonic() + timeout_s
        while True:
            for i, event in enumerate(self._events):
                if event["method"] == name:
                    return self._events.pop(i)
            event = self._read_message(deadline)
            if "method" in event:
                self._events.append(event)

    # --- pages -------------------------------------------------------------------------------------
    def goto(self, url: str) -> None:
        """Open ``url`` and wait until it has loaded, MathJax has typeset, and its images have loaded."""
        self._events.clear()
        result = self.send("Page.navigate", {"url": url}, session=True)
        if result.get("errorText"):
            raise ChromiumError(f"could not open {url}: {result['errorText']}")
        self._wait_event("Page.loadEventFired", self.timeout_s)
        for _ in range(5):  # a page that redirects (index.html) navigates again while we wait
            try:
                self.evaluate(READY_JS)
                return
            except ChromiumError as err:
                if "navigated" not in str(err):
                    raise
                self._wait_event("Page.loadEventFired", self.timeout_s)
        raise ChromiumError(f"{url} kept navigating")

    def wait_for(self, expression: str, timeout_s: float = 10) -> None:
        """Poll a JavaScript expression until it is truthy (across navigations), or raise."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if self.evaluate(expression):
                    return
            except ChromiumError as err:
                if "navigated" not in str(err) and "context" not in str(err):
                    raise
            time.sleep(0.1)
        raise ChromiumError(f"timed out waiting for {expression!r}")

    def evaluate(self, expression: str):
        """Value of a JavaScript expression in the page (promises are awaited; the value is JSON)."""
        result = self.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                                "returnByValue": True}, session=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise ChromiumError(f"JavaScript error: {details.get('exception', {}).get('description', details)}")
        return result["result"].get("value")

    def screenshot(self, path: Path, full_page: bool = True) -> list[Path]:
        """Write PNGs of the page, as a reader scrolling down would see it: the window is made as tall as the
        page (so nothing is re-laid out), in tiles of at most :data:`MAX_SHOT_HEIGHT` px (``name.png``,
        ``name-2.png``, ...). Returns the paths written."""
        total = int(self.evaluate("document.documentElement.scrollHeight")) if full_page else self.height
        height = max(self.height, min(total, MAX_SHOT_HEIGHT))
        metrics = {"width": self.width, "deviceScaleFactor": 1, "mobile": False}
        self.send("Emulation.setDeviceMetricsOverride", {**metrics, "height": height}, session=True)
        written = []
        try:
            for i, top in enumerate(range(0, max(total, 1), height)):
                self.evaluate(f"window.scrollTo(0, {top}); "
                              "new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
                shot = self.send("Page.captureScreenshot", {"format": "png"}, session=True)
                tile = path if i == 0 else path.with_name(f"{path.stem}-{i + 1}{path.suffix}")
                tile.parent.mkdir(parents=True, exist_ok=True)
                tile.write_bytes(b64decode(shot["data"]))
                written.append(tile)
                if not full_page:
                    break
        finally:
            self.evaluate("window.scrollTo(0, 0)")
            self.send("Emulation.setDeviceMetricsOverride", {**metrics, "height": self.height}, session=True)
        return written


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # no request log on stderr
        pass


@contextlib.contextmanager
def serve(html_dir: Path) -> Iterator[str]:
    """Serve ``html_dir`` on a free loopback port; yields the base URL (``http://127.0.0.1:PORT/``)."""
    handler = functools.partial(_QuietHandler, directory=str(html_dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def book_pages(html_dir: Path) -> list[str]:
    """The book's pages as paths relative to ``html_dir`` (``book/intro.html`` …), in table-of-contents order
    when the staged ``_toc.yml`` is found beside the build, otherwise every page but Sphinx's own."""
    toc_file = Path(html_dir).parent / "src" / "_toc.yml"
    if toc_file.exists():
        import yaml

        toc = yaml.safe_load(toc_file.read_text())
        files = [toc["root"]] + [ch["file"] for part in toc.get("parts", []) for ch in part.get("chapters", [])]
        return [f"{f}.html" for f in files if (Path(html_dir) / f"{f}.html").exists()]
    skip = {"genindex.html", "search.html", "index.html"}
    return sorted(str(p.relative_to(html_dir)) for p in Path(html_dir).rglob("*.html")
                  if p.name not in skip and not p.relative_to(html_dir).parts[0].startswith("_"))


def shot_name(page: str) -> str:
    """``notebooks/03_gpu_training.html`` -> ``notebooks_03_gpu_training.png``."""
    return page.removesuffix(".html").replace("/", "_") + ".png"


def take_screenshots(html_dir: Path, out_dir: Path) -> list[Path]:
    """Write full-page PNGs of every page of the book built in ``html_dir`` to ``out_dir``; returns the paths.

    Old PNGs in ``out_dir`` are removed first, so the folder shows exactly the current book."""
    html_dir, out_dir = Path(html_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.png"):
        old.unlink()
    written = []
    with serve(html_dir) as base, Chromium() as browser:
        for page in book_pages(html_dir):
            browser.goto(base + page)
            written += browser.screenshot(out_dir / shot_name(page))
    return written


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    html_dir = Path(args[0]) if args else ROOT / "_build" / "html"
    out_dir = Path(args[1]) if len(args) > 1 else ROOT / "_build" / "screenshots"
    if not (html_dir / "index.html").exists():
        raise SystemExit(f"{html_dir}/index.html not found; build the book first (make book)")
    for path in take_screenshots(html_dir, out_dir):
        print(path)


if __name__ == "__main__":
    main()

"""Test setup: no network, offline hub, smoke profile; keep nbval's executed notebooks for the book test.

* Every test runs with ``HF_HUB_OFFLINE=1`` and a socket guard: a connection to anything but this machine
  (loopback, Unix sockets: the notebook kernels talk over those) raises :class:`NetworkBlocked`.
* Tests marked ``browser`` run last. By then nbval (``--nbval-lax notebooks``) has executed every notebook in
  this session; :func:`executed_notebooks` writes those executed copies to ``_build/executed`` so that the
  book test builds the book from them instead of executing everything a second time.
"""
from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent

for _key, _value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                     "BIOFT_PROFILE": "smoke", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ[_key] = _value


class NetworkBlocked(RuntimeError):
    """Raised when a test tries to reach another machine."""


_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex
_real_getaddrinfo = socket.getaddrinfo


def _is_local(address) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX path
        return True
    host = address[0]
    if host in ("localhost", "", None):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _guarded_connect(self, address):
    if not _is_local(address):
        raise NetworkBlocked(f"test tried to connect to {address!r}; tests must not use the network")
    return _real_connect(self, address)


def _guarded_connect_ex(self, address):
    if not _is_local(address):
        raise NetworkBlocked(f"test tried to connect to {address!r}; tests must not use the network")
    return _real_connect_ex(self, address)


def _guarded_getaddrinfo(host, *args, **kwargs):
    if host not in (None, "localhost") and not _is_local((host,)):
        raise NetworkBlocked(f"test tried to resolve {host!r}; tests must not use the network")
    return _real_getaddrinfo(host, *args, **kwargs)


socket.socket.connect = _guarded_connect
socket.socket.connect_ex = _guarded_connect_ex
socket.getaddrinfo = _guarded_getaddrinfo


def pytest_collection_modifyitems(session, config, items):
    """Run tests marked ``browser`` after everything else (they reuse the notebooks nbval executed)."""
    items.sort(key=lambda item: 1 if item.get_closest_marker("browser") else 0)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if call.when == "call":
        item.bioft_passed = report.passed
    return report


def executed_notebooks(session) -> list[Path]:
    """Write the notebooks nbval executed in this session (all cells passed) to ``_build/executed``."""
    import nbformat

    by_file: dict[Path, list] = {}
    for item in session.items:
        if type(item).__name__ == "IPyNbCell":
            by_file.setdefault(Path(str(item.parent.path)), []).append(item)
    written = []
    for path, cells in by_file.items():
        if not all(getattr(c, "bioft_passed", False) for c in cells):
            continue
        nb = cells[0].parent.nb
        for c in cells:
            c.cell.outputs = [nbformat.from_dict(o) for o in (c.test_outputs or [])]
        nb.metadata["bioft_profile"] = os.environ.get("BIOFT_PROFILE", "smoke")
        target = ROOT / "_build" / "executed" / path.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, target)
        written.append(target)
    return written


@pytest.fixture(scope="session")
def nbval_executed(request) -> list[Path]:
    """The executed notebooks of this session (see :func:`executed_notebooks`)."""
    return executed_notebooks(request.session)


@pytest.fixture(scope="module")
def one_thread():
    """One CPU thread: bitwise-repeatable math, tiny models run fastest, and no fight with other processes."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

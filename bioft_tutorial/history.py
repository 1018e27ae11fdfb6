"""A training run's log: one JSON object per optimizer step, appended to ``history.jsonl`` as it comes.

Opening it for a resumed run keeps the rows up to the checkpoint's step and drops what the interrupted run
logged after it, so the log always matches the weights. Needs only the standard library.
"""
from __future__ import annotations

import json
import os
from pathlib import Path


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temporary file in the same folder, fsync, rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class History:
    """A run's log: rows in memory and in a JSON-lines file (one object per line, appended as they come).

    Opening with ``keep_until=k`` keeps the rows of steps ``<= k`` already in the file (a resumed run drops
    what the interrupted one logged after its last checkpoint); ``keep_until=0`` starts afresh.
    """

    def __init__(self, path: str | Path, keep_until: int = 0, write: bool = True):
        self.path, self.write = Path(path), write
        old = self.path.read_text(encoding="utf-8").splitlines() if self.path.exists() and keep_until else []
        self.rows = [r for r in map(json.loads, old) if r["step"] <= keep_until]
        if write:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.rows))

    def append(self, row: dict) -> None:
        self.rows.append(row)
        if self.write:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")

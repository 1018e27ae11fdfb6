"""An on-disk cache of window scores: one small checksummed JSON file per (model, window sequence).

An interrupted scoring run (Ctrl-C, a lost GPU session, a crash) resumes from here: windows already scored
are read back instead of recomputed.

* **Atomic writes.** An entry is written to a temporary file in the same folder and renamed over its final
  name (``os.replace``), so a reader sees either no entry or a complete one, never half of one.
* **Checksums.** Each entry stores the SHA-256 of its own content and of the window sequence it scores. An
  entry that does not parse, fails its checksum or belongs to another sequence or model (a torn write after
  a power cut, a disk error, a hand edit) is logged, counted in :attr:`WindowCache.corrupted` and treated as
  missing, so the window is rescored and the entry rewritten. A cached number is never trusted unchecked.

Layout: ``<directory>/<model key>/<2 hex>/<64 hex>.json`` where the hex is the SHA-256 of the model key and
the sequence. Delete the folder to start afresh.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)
FORMAT = "bioft-window-score/1"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class WindowCache:
    """Scores of windows under one model, keyed by the window's sequence.

    Args:
        directory: root folder of the cache (created if needed).
        model_key: identifies the model and its weights; entries of other keys are never returned.
    """

    def __init__(self, directory: str | Path, model_key: str):
        self.model_key = model_key
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model_key)[:80]
        self.folder = Path(directory) / f"{slug}-{_digest(model_key)[:8]}"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.corrupted = 0  # entries found damaged (and so rescored) since this object was made

    def path(self, seq: str) -> Path:
        key = _digest(f"{self.model_key}\n{seq}")
        return self.folder / key[:2] / f"{key}.json"

    @staticmethod
    def _checksum(entry: dict) -> str:
        body = {k: v for k, v in entry.items() if k != "checksum"}
        return _digest(json.dumps(body, sort_keys=True))

    def get(self, seq: str) -> float | None:
        """The cached score of ``seq``, or ``None`` if absent or damaged (damaged entries are logged)."""
        path = self.path(seq)
        try:
            entry = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError, UnicodeDecodeError) as err:
            return self._damaged(path, f"unreadable ({type(err).__name__})")
        if not isinstance(entry, dict) or entry.get("checksum") != self._checksum(entry):
            return self._damaged(path, "checksum mismatch")
        if (entry.get("format"), entry.get("model"), entry.get("sequence_sha256"), entry.get("length")) != (
                FORMAT, self.model_key, _digest(seq), len(seq)):
            return self._damaged(path, "entry belongs to another model or sequence")
        value = entry.get("score")
        return float(value) if isinstance(value, (int, float)) else self._damaged(path, "no numeric score")

    def _damaged(self, path: Path, why: str) -> None:
        self.corrupted += 1
        log.warning("cache entry %s is damaged (%s); rescoring that window", path, why)
        return None

    def put(self, seq: str, score: float) -> None:
        """Store ``score`` for ``seq`` atomically (temporary file + rename)."""
        entry = {"format": FORMAT, "model": self.model_key, "sequence_sha256": _digest(seq), "length": len(seq),
                 "score": float(score)}
        entry["checksum"] = self._checksum(entry)
        path = self.path(seq)
        path.parent.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(entry, handle)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

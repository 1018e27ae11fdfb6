"""An on-disk cache of pooled window embeddings: one checksummed safetensors file per (model, blocks, window).

The companion of :class:`~.cache.WindowCache` (which holds one score per window) for
:func:`~.embeddings.embed_windows`: an interrupted extraction resumes from here. Entries are written to a
temporary file and renamed over their final name, so a reader sees a whole entry or none; each carries the
SHA-256 of its tensors and of the window it describes, and a damaged or foreign entry is logged, counted
and recomputed, never trusted. Delete the folder to start afresh.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import struct
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from ..data.files import atomic_write_bytes

log = logging.getLogger(__name__)
FORMAT = "bioft-window-embedding/1"


class EmbeddingCache:
    """Pooled embeddings of windows under one model and one set of blocks, one safetensors file per window.

    Layout: ``<directory>/<model key>-<8 hex>/<2 hex>/<64 hex>.safetensors``; the hex is the SHA-256 of the
    model key, the blocks, the variant index and the sequence. The file's metadata holds those and a SHA-256 of
    the tensors; an entry that fails any check is logged, counted in :attr:`corrupted` and recomputed.
    """

    def __init__(self, directory: str | Path, model_key: str, layers: Sequence[int]):
        self.model_key, self.layers = model_key, [int(k) for k in layers]
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model_key)[:80]
        self.folder = Path(directory) / f"{slug}-{hashlib.sha256(model_key.encode()).hexdigest()[:8]}"
        self.corrupted = 0

    def _identity(self, seq: str, index: int) -> dict[str, str]:
        return {"format": FORMAT, "model": self.model_key, "layers": json.dumps(self.layers), "index": str(index),
                "sequence_sha256": hashlib.sha256(seq.encode()).hexdigest()}

    def path(self, seq: str, index: int) -> Path:
        key = hashlib.sha256(json.dumps(self._identity(seq, index), sort_keys=True).encode()).hexdigest()
        return self.folder / key[:2] / f"{key}.safetensors"

    def get(self, seq: str, index: int) -> dict[str, np.ndarray] | None:
        """The cached pooled vectors of ``seq``, or ``None`` if absent or damaged (damaged entries are logged)."""
        path = self.path(seq, index)
        try:
            blob = path.read_bytes()
            tensors, meta = load_tensors(blob), _metadata(blob)
        except FileNotFoundError:
            return None
        except Exception as err:  # a torn or foreign file: whatever the parser raises
            return self._damaged(path, f"unreadable ({type(err).__name__})")
        identity = self._identity(seq, index)
        if any(meta.get(k) != v for k, v in identity.items()) or meta.get("checksum") != _checksum(tensors):
            return self._damaged(path, "checksum or identity mismatch")
        return {name: tensor.numpy() for name, tensor in tensors.items()}

    def _damaged(self, path: Path, why: str) -> None:
        self.corrupted += 1
        log.warning("cache entry %s is damaged (%s); recomputing that window", path, why)
        return None

    def put(self, seq: str, index: int, pooled: dict[str, np.ndarray]) -> None:
        """Store ``pooled`` for ``(seq, index)`` atomically (temporary file + rename)."""
        tensors = {name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in pooled.items()}
        meta = {**self._identity(seq, index), "checksum": _checksum(tensors)}
        atomic_write_bytes(self.path(seq, index), save_tensors(tensors, metadata=meta))


def _checksum(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode() + tensors[name].numpy().tobytes())
    return digest.hexdigest()


def _metadata(blob: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file: its header is an 8-byte length, then JSON."""
    (size,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8:8 + size]).get("__metadata__", {})

"""Result records of GPU measurements: environment fields and atomic JSON files.

A results file is a JSON object ``{"command": ..., "env": {...}, "results": [ {...}, ... ]}`` under
``book/results/gpu/``. Every result dict also carries the env fields (``gpu``, ``torch``, ``transformers``,
``date``) so that a single record can be quoted on its own.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import tempfile
from pathlib import Path

import torch

RESULTS_DIR = Path("book") / "results" / "gpu"


def env_info() -> dict:
    """GPU name and count, memory, library versions, date (UTC), host CPU count."""
    import transformers

    info = {
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "gpu_count": torch.cuda.device_count(),
        "gpu_mem_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cpu_count": os.cpu_count(),
    }
    try:
        import peft

        info["peft"] = peft.__version__
    except ImportError:
        info["peft"] = None
    return info


def write_results(command: str, results: list[dict], out_dir: str | Path | None = None,
                  tag: str | None = None) -> Path:
    """Write ``results`` atomically to ``<out_dir>/<command>[-<tag>]-<date>.json`` and return the path."""
    env = env_info()
    out = Path(out_dir or RESULTS_DIR)
    out.mkdir(parents=True, exist_ok=True)
    stamp = env["date"].replace(":", "").replace("-", "")
    path = out / f"{command}{'-' + tag if tag else ''}-{stamp}.json"
    records = [{**{k: env[k] for k in ("gpu", "torch", "transformers", "date")}, **r} for r in results]
    payload = json.dumps({"command": command, "env": env, "results": records}, indent=2, default=str)
    fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        handle.write(payload + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path


def load_results(pattern: str = "*.json", results_dir: str | Path | None = None) -> list[dict]:
    """All result records of files matching ``pattern`` (each record gains a ``file`` field)."""
    records = []
    for path in sorted(Path(results_dir or RESULTS_DIR).glob(pattern)):
        for record in json.loads(path.read_text())["results"]:
            records.append({**record, "file": path.name})
    return records


def find_results_dir(results_dir: str | Path | None = None) -> Path | None:
    """``book/results/gpu`` looked up from the working directory upwards (notebooks run in ``notebooks/``),
    then beside the package (an editable install lives in the repository); ``None`` if there is none."""
    if results_dir is not None:
        return Path(results_dir)
    here = Path.cwd().resolve()
    for root in (here, *here.parents, Path(__file__).resolve().parents[2]):
        if (root / RESULTS_DIR).is_dir():
            return root / RESULTS_DIR
    return None


def stored_results(command: str, results_dir: str | Path | None = None) -> list[dict]:
    """Measured GPU records of ``command`` (files ``<command>-*.json``): no smoke run, no failed case."""
    folder = find_results_dir(results_dir)
    if folder is None:
        return []
    records = load_results(f"{command}-*.json", folder)
    return [r for r in records if not r.get("smoke") and "error" not in r and r.get("gpu") != "cpu"]

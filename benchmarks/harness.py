"""What every benchmark shares: the environment record, one results file per run, a case runner, step statistics.

A results file is ``<out>/<command>[-<tag>]-<YYYYMMDDTHHMMSSZ>.json`` holding
``{"command": ..., "env": {...}, "results": [record, ...]}``; every record repeats the GPU, library versions
and date so that it can be quoted alone. The file is rewritten (atomically) after every case, so a run that
is stopped half-way keeps what it measured.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import pandas as pd
import torch

log = logging.getLogger(__name__)
RESULTS_DIR = Path("book") / "results" / "gpu"
SMOKE_DIR = Path("_build") / "benchmarks-smoke"
#: Dense bf16 peak of the tensor cores, TFLOP/s (vendor data sheets), matched on the device name.
PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.4, "H200": 989.4, "GH200": 989.4,
                    "B200": 2250.0, "A100": 312.0, "L40S": 362.1, "L4": 121.0, "A10": 125.0, "RTX 4090": 165.2}
ENV_FIELDS = ("gpu", "torch", "transformers", "peft", "date")


def env_info() -> dict:
    """GPU name, count and memory, library versions, date (UTC), Python and CPU count."""
    import peft
    import transformers

    cuda = torch.cuda.is_available()
    return {"gpu": torch.cuda.get_device_name(0) if cuda else "cpu", "gpu_count": torch.cuda.device_count(),
            "gpu_mem_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if cuda else None,
            "torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__,
            "peft": peft.__version__, "python": platform.python_version(),
            "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "cpu_count": os.cpu_count(),
            **_optional_versions()}


def _optional_versions() -> dict:
    """Versions of the optional kernel libraries that are installed (FlashAttention-4, torchao)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("flash-attn-4", "nvidia-cutlass-dsl", "torchao"):
        try:
            found[name.replace("-", "_")] = version(name)
        except PackageNotFoundError:
            pass
    return found


class ResultsFile:
    """One run's results file, rewritten atomically with every record so far after each case."""

    def __init__(self, command: str, out_dir: str | Path | None, smoke: bool, tag: str | None = None):
        self.command, self.env = command, env_info()
        folder = Path(out_dir) if out_dir else (SMOKE_DIR if smoke else RESULTS_DIR)
        stamp = self.env["date"].replace(":", "").replace("-", "")
        words = [command, tag, "smoke" if smoke else None, stamp]
        self.path = folder / ("-".join(w for w in words if w) + ".json")

    def stamp(self, record: dict) -> dict:
        """``record`` with the environment fields in front."""
        return {**{k: self.env[k] for k in ENV_FIELDS}, **record}

    def write(self, records: list[dict]) -> Path:
        """Write every record so far (temporary file, fsync, rename) and return the path."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"command": self.command, "env": self.env, "results": [self.stamp(r) for r in records]}
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps(payload, indent=2, default=str) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)
        return self.path


def pick_device(smoke: bool, command: str) -> torch.device:
    """The CPU for ``--smoke``, else the GPU; without a GPU, exit with a message that says what to do."""
    if smoke:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise SystemExit(f"{command}: no CUDA GPU here. This benchmark measures a GPU; run it with --smoke for the "
                         "CPU check of the code")
    return torch.device("cuda")


@contextlib.contextmanager
def smoke_threads(smoke: bool) -> Iterator[None]:
    """One CPU thread in smoke runs (tiny tensors: fastest, and spares a busy CI machine)."""
    threads = torch.get_num_threads()
    if smoke:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def sync(device: torch.device) -> None:
    """Wait for the GPU to finish its queued work (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds one call of ``fn`` takes, the GPU synchronised before and after."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def free_memory(device: torch.device) -> None:
    """Release cached GPU memory and reset the peak counters before a case."""
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def memory_stats(device: torch.device) -> dict:
    """Peak allocated and reserved GPU memory since the last reset, GiB (``None`` on the CPU)."""
    if device.type != "cuda":
        return {"peak_mem_gib": None, "peak_reserved_gib": None}
    return {"peak_mem_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2),
            "peak_reserved_gib": round(torch.cuda.max_memory_reserved(device) / 2**30, 2)}


def run_case(record: dict, fn: Callable[[], dict], device: torch.device, summary: Callable[[dict], str],
             command: str) -> dict:
    """Run one case: reset peak memory, call ``fn``, catch its failure, add peak memory and the case's seconds.

    Prints one summary line (``summary(record)`` when it worked, the error otherwise) and returns the record.
    """
    free_memory(device)
    start = time.perf_counter()
    try:
        record = {**record, **fn(), **memory_stats(device)}
    except Exception as err:  # noqa: BLE001 - one failing case must not lose the others
        log.exception("case %s failed", record.get("case"))
        record = {**record, "error": f"{type(err).__name__}: {str(err)[:1500]}"}
    record["case_s"] = round(time.perf_counter() - start, 1)
    free_memory(device)
    line = f"ERROR {record['error'][:300]}" if "error" in record else summary(record)
    print(f"[{command}] {record.get('case', '?')}: {line}", flush=True)
    return record


def steady_steps(history: pd.DataFrame, warmup: int) -> dict:
    """Throughput of a training run over its steps after ``warmup`` (from a ``TrainResult.history``).

    Returns:
        ``tokens_per_s`` (real tokens over seconds of the steady steps), ``tokens_per_s_median`` (median of
        the steps' own rates, as chapter runs are summarised), ``step_s`` (median step),
        ``step_times_ms`` (each), ``tokens_per_step`` (mean real tokens), ``padding_fraction`` (share of
        computed tokens that were padding; ``None`` without a ``computed_tokens`` column), ``first_step_s``,
        ``loss_first`` and ``loss_last`` (nats per labelled token; ``None`` without a ``loss`` column).
    """
    seconds = history["step_s"] if "step_s" in history else history["tokens"] / history["tokens_per_s"]
    steady = history.iloc[warmup:] if len(history) > warmup else history
    steady_s = seconds.loc[steady.index]
    padding = None
    if "computed_tokens" in steady:
        padding = round(1 - float(steady["tokens"].sum()) / float(steady["computed_tokens"].sum()), 4)
    loss = history["loss"].dropna() if "loss" in history else pd.Series(dtype=float)
    return {"tokens_per_s": round(float(steady["tokens"].sum() / steady_s.sum()), 1),
            "tokens_per_s_median": round(float((steady["tokens"] / steady_s).median()), 1),
            "step_s": round(float(steady_s.median()), 5), "step_times_ms": [round(1000 * s, 1) for s in steady_s],
            "tokens_per_step": round(float(steady["tokens"].mean()), 1), "padding_fraction": padding,
            "first_step_s": round(float(seconds.iloc[0]), 3),
            "loss_first": round(float(loss.iloc[0]), 4) if len(loss) else None,
            "loss_last": round(float(loss.iloc[-1]), 4) if len(loss) else None}


def peak_tflops(gpu: str) -> float | None:
    """Dense bf16 peak of the named GPU from :data:`PEAK_BF16_TFLOPS` (``None`` if unknown)."""
    for key in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):
        if key in gpu:
            return PEAK_BF16_TFLOPS[key]
    return None


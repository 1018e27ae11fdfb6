"""``python -m benchmarks notebooks``: execute every chapter in the full profile on the GPU and record what it cost.

Each ``notebooks/NN_*.ipynb`` runs with papermill (``BIOFT_PROFILE=full``, kernel in ``notebooks/``) with
random-weight models of the real shapes, since the GPU machine has no model hub: a local ESM-2 650M folder
written first (``random_esm2(esm2_config("650M"), task="mlm")`` plus the tokenizer) is passed as
``model_name`` to the ESM-2 chapters, and ``<checkpoint>:random`` (e.g. ``evo2_7b:random``) to the Evo 2 ones. Step counts are shortened
by the papermill parameters in :data:`SHORTENED`; a chapter's ``output_root`` and ``cache_dir`` point into
a folder of its own, so that its disk use can be measured.

Per notebook the record holds: ``started`` (UTC) and ``runtime_s``; ``peak_gpu_mem_gib`` (device memory in use over all GPUs,
sampled with NVML or ``nvidia-smi``: CUDA contexts and PyTorch's cache included); ``disk_written_gib`` (bytes
the notebook's own processes (papermill, its kernel and their children) sent to storage, Linux's per-process
``write_bytes``, so another job on the machine does not count; the compiler's cache and temporary files do);
``disk_written_machine_gib`` (sectors written to the root disk by everything, ``/proc/diskstats``, after
``sync``); ``output_peak_gib`` (the largest size
of the chapter's own folder); ``training`` (per training run found as ``history.jsonl`` under that folder:
steps and the median real tokens/s and step time after warm-up); the ``parameters`` given; and ``error``
(the last lines of papermill's report) if it failed. The executed notebooks are kept (``--executed-dir``).
``--smoke`` runs the same machinery on the CPU in the smoke profile with ``00_environment`` only.
"""
from __future__ import annotations

import argparse
import ast
import fnmatch
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import nbformat
import yaml

from benchmarks.harness import ResultsFile
from bioft_tutorial.profile import get_profile

COMMAND = "notebooks"
ROOT = Path(__file__).resolve().parents[1]
#: Papermill parameters per chapter that shorten the full profile ("{out}": the chapter's own folder).
SHORTENED: dict[str, dict] = {
    "03_gpu_training": {"max_steps": 100, "dms_max_steps": 30, "trainer_max_steps": 30, "eval_every": 50},
    "04_evo2_variant_scoring": {"max_variants": 200},
    "06_evo2_finetuning": {"max_variants": 120, "lora_steps": 16},
}
#: Signals that stopped a notebook (a SIGTERM from the caller's time limit): the record is written, then we exit.
SIGNALLED: list[int] = []
#: The notebooks ``--smoke`` runs (CPU, smoke profile).
SMOKE_NOTEBOOKS = ("00_environment",)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=f"python -m benchmarks {COMMAND}", description=__doc__.split("\n")[0])
    p.add_argument("--notebooks", default="*", help="comma-separated names, prefixes (03) or globs of notebooks/*.ipynb "
                                                    "stems, run in that order (default: all, in file-name order)")
    p.add_argument("--budget-s", type=float, default=3600.0, help="stop starting notebooks after this, seconds; "
                                                                  "a running one is stopped at the end of it")
    p.add_argument("--work-dir", default="_build/gpu-notebooks", help="models and the chapters' output folders")
    p.add_argument("--executed-dir", help="executed notebooks (default <work-dir>/executed)")
    p.add_argument("--keep-outputs", action="store_true", help="keep each chapter's output folder")
    p.add_argument("--out", help="results folder (default book/results/gpu; smoke: _build/benchmarks-smoke)")
    p.add_argument("--smoke", action="store_true", help="CPU, smoke profile, 00_environment only (for tests)")
    p.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                   help="a papermill parameter (VALUE read as YAML) for every chosen notebook that has NAME; "
                        "overrides the shortened steps")
    args = p.parse_args(argv)
    args.overrides = {}
    for item in args.param:
        name, sep, value = item.partition("=")
        if not sep or not name.isidentifier():
            p.error(f"--param {item!r}: write NAME=VALUE, e.g. --param compile_mode=reduce-overhead")
        args.overrides[name] = yaml.safe_load(value)
    return args


def parameter_defaults(path: Path) -> dict[str, str]:
    """The names in a notebook's ``parameters`` cell and the source text of each default value."""
    nb = nbformat.read(path, as_version=4)
    cell = next((c for c in nb.cells if "parameters" in c.metadata.get("tags", [])), None)
    if cell is None:
        return {}
    defaults = {}
    for node in ast.parse(cell.source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            names, values = node.targets[0], node.value
            pairs = zip(names.elts, values.elts) if isinstance(names, ast.Tuple) and isinstance(values, ast.Tuple) \
                else [(names, values)]  # `a, b = x, y` or `a = x`
            defaults |= {t.id: ast.get_source_segment(cell.source, v) for t, v in pairs if isinstance(t, ast.Name)}
    return defaults


def parameters_for(path: Path, esm_folder: str, out: Path) -> dict:
    """Papermill parameters of one notebook: the random-weight models, its own folder, shortened steps.

    ``model_name`` follows the full profile's default of the notebook: an Evo 2 checkpoint ``<name>`` becomes
    ``<name>:random``, an ESM-2 hub id the random-weight 650M folder.
    """
    defaults, params = parameter_defaults(path), {}
    expression = defaults.get("model_name", "")
    field = expression.split(".", 1)[1] if expression.startswith(("profile.", "P.")) else None
    model = str(getattr(get_profile("full"), field, "")) if field else expression
    if model.startswith("evo2"):
        params["model_name"] = f"{model}:random"
    elif "esm" in model:
        params["model_name"] = esm_folder
    for name in ("output_root", "output_dir"):
        if name in defaults:
            params[name] = str(out)
    if "cache_dir" in defaults:
        params["cache_dir"] = str(out / "cache")
    return params | SHORTENED.get(path.stem, {})


def write_esm_folder(folder: Path, smoke: bool) -> Path:
    """A local ESM-2 checkpoint with random weights (650M; the tiny model in smoke), written once."""
    if (folder / "model.safetensors").exists():
        return folder
    import torch

    from bioft_tutorial import models

    config = models.tiny_esm2_config() if smoke else models.esm2_config("650M")
    device = "cuda" if torch.cuda.is_available() and not smoke else "cpu"
    models.random_esm2(config, task="mlm", device=device).save_pretrained(str(folder))
    models.load_tokenizer().save_pretrained(str(folder))
    return folder


def visible_gpus(count: int) -> list[int]:
    """The GPUs this process may use: ``CUDA_VISIBLE_DEVICES`` (numbers, in PCI bus order, as NVML counts them
    when ``CUDA_DEVICE_ORDER=PCI_BUS_ID``), else all ``count``."""
    wanted = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    if not wanted:
        return list(range(count))
    return [int(x) for x in wanted.split(",") if x.strip().isdigit() and int(x) < count]


def gpu_memory_used() -> int | None:
    """Bytes of device memory in use over the visible GPUs (NVML, else ``nvidia-smi``); ``None`` without a GPU."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in visible_gpus(pynvml.nvmlDeviceGetCount())]
        return sum(pynvml.nvmlDeviceGetMemoryInfo(h).used for h in handles)
    except Exception:  # noqa: BLE001 - no NVML binding or no driver: try the command line
        pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10, check=True).stdout.split()
        return sum(int(out[i]) for i in visible_gpus(len(out))) * 2**20
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def disk_sectors_written() -> tuple[int, str]:
    """Sectors (512 bytes) written so far to the disk holding ``/`` (all physical disks if it cannot be
    told, e.g. on an overlay file system), and which disk(s) that is."""
    stats = {parts[2]: (int(parts[0]), int(parts[1]), int(parts[9]))
             for parts in (line.split() for line in Path("/proc/diskstats").read_text().splitlines())}
    dev = os.stat("/").st_dev
    for name, (major, minor, written) in stats.items():
        if (major, minor) == (os.major(dev), os.minor(dev)):
            return written, name
    disks = [n for n in stats if Path(f"/sys/block/{n}/device").exists()]
    return sum(stats[n][2] for n in disks), "+".join(disks) or "none"


def process_bytes_written(pid: int | str = "self") -> int:
    """Bytes a process sent to storage (``write_bytes`` of ``/proc/<pid>/io``): its own and, once reaped, its
    children's. 0 where it cannot be read (the process is gone, or not Linux)."""
    try:
        return int(next(line.split()[1] for line in Path(f"/proc/{pid}/io").read_text().splitlines()
                        if line.startswith("write_bytes:")))
    except (OSError, StopIteration, ValueError):
        return 0


def descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (children, grandchildren, ...), from ``/proc/*/stat``."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found, todo = found + kids, todo + kids
    return found


def folder_bytes(folder: Path) -> int:
    """Bytes of the files under ``folder`` (0 if it does not exist)."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:  # deleted while we looked (a checkpoint being replaced)
                pass
    return total


class Monitor(threading.Thread):
    """Samples GPU memory in use (every ``interval`` s), and the size of a folder and the bytes written by this
    process's descendants (every 4th sample); keeps peaks."""

    def __init__(self, folder: Path, interval: float = 0.5):
        super().__init__(daemon=True)
        self.folder, self.interval, self.stop = folder, interval, threading.Event()
        self.gpu_peak, self.folder_peak, self.gpu_before = None, 0, gpu_memory_used()
        self.written_before, self.child_written = process_bytes_written(), {}

    def bytes_written(self) -> int:
        """Bytes written since the start by this process and its children: reaped children count in ours
        (Linux adds them on ``wait``); a child that was never reaped counts by its last sample."""
        return max(process_bytes_written() - self.written_before, sum(self.child_written.values()))

    def run(self) -> None:
        k = 0
        while not self.stop.wait(self.interval):
            used = gpu_memory_used() if self.gpu_before is not None else None
            if used is not None:
                self.gpu_peak = max(self.gpu_peak or 0, used)
            if k % 4 == 0:
                self.folder_peak = max(self.folder_peak, folder_bytes(self.folder))
                for pid in descendants(os.getpid()):
                    self.child_written[pid] = max(self.child_written.get(pid, 0), process_bytes_written(pid))
            k += 1


def training_runs(folder: Path) -> list[dict]:
    """Per ``history.jsonl`` under ``folder``: the run's name, steps, and median real tokens/s and step time
    over the steps after warm-up (the first tenth of the steps, at least 3: compilation happens there)."""
    runs = []
    for path in sorted(folder.rglob("history.jsonl")):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        steady = rows[max(3, len(rows) // 10):] or rows
        speeds = sorted(r["tokens_per_s"] for r in steady if r.get("tokens_per_s"))
        times = sorted(r["tokens"] / r["tokens_per_s"] for r in steady if r.get("tokens_per_s"))
        runs.append({"run": path.parent.relative_to(folder).as_posix(), "steps": len(rows),
                     "warmup": len(rows) - len(steady), "tokens_per_s": speeds[len(speeds) // 2] if speeds else None,
                     "step_s": round(times[len(times) // 2], 4) if times else None})
    return runs


def execute(path: Path, params: dict, executed: Path, timeout: float, smoke: bool) -> str | None:
    """Run one notebook with papermill in a subprocess; ``None`` if it ran, else the last lines of the error."""
    env = {**os.environ, "BIOFT_PROFILE": "smoke" if smoke else "full", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-m", "papermill", str(path), str(executed), "--cwd", str(path.parent),
           "--no-progress-bar", "-y", json.dumps(params)]
    # its own process group, so that a stop (ours, or a SIGTERM to us) also ends the kernel papermill started
    job = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)

    def stop(signum=None, frame=None) -> None:
        os.killpg(job.pid, signal.SIGKILL)
        if signum is not None:  # measured and recorded as stopped; main() then exits
            SIGNALLED.append(signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        stdout, stderr = job.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop()
        job.communicate()
        return f"stopped after {timeout:.0f} s (the --budget-s of this run)"
    finally:
        signal.signal(signal.SIGTERM, previous)
    if SIGNALLED:
        return f"stopped by signal {SIGNALLED[0]} after the cells the executed notebook shows"
    if job.returncode == 0:
        return None
    text = re.sub(r"\x1b\[[0-9;]*m", "", stderr + stdout)  # no terminal colours
    return "\n".join(text.strip().splitlines()[-25:])


def run_one(path: Path, args: argparse.Namespace, esm: Path, executed_dir: Path, timeout: float) -> dict:
    """Execute one notebook and measure it (see the module docstring)."""
    out = Path(args.work_dir).resolve() / path.stem
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    params = parameters_for(path, str(esm), out)
    params |= {k: v for k, v in getattr(args, "overrides", {}).items() if k in parameter_defaults(path)}
    shown = {k: "<random-weight ESM-2 folder>" if v == str(esm) else
             (v.replace(str(out), "<output folder>") if isinstance(v, str) else v) for k, v in params.items()}
    os.sync()
    sectors, disk = disk_sectors_written()
    monitor = Monitor(out)
    monitor.start()
    started, start = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), time.perf_counter()
    error = execute(path, params, executed_dir / path.name, timeout, args.smoke)
    runtime = time.perf_counter() - start
    os.sync()
    monitor.stop.set()
    monitor.join()
    gib = lambda b: None if b is None else round(b / 2**30, 3)  # noqa: E731
    record = {"notebook": path.stem, "started": started, "runtime_s": round(runtime, 1), "parameters": shown,
              "peak_gpu_mem_gib": gib(monitor.gpu_peak), "gpu_mem_before_gib": gib(monitor.gpu_before),
              "disk_written_gib": gib(monitor.bytes_written()),
              "disk_written_machine_gib": gib((disk_sectors_written()[0] - sectors) * 512), "disk": disk,
              "output_peak_gib": gib(max(monitor.folder_peak, folder_bytes(out))), "training": training_runs(out),
              "executed": path.name, "smoke": args.smoke,
              "profile": "smoke" if args.smoke else "full"}
    if not args.keep_outputs:
        shutil.rmtree(out, ignore_errors=True)
    return record | ({"error": error} if error else {})


def select(patterns: str, smoke: bool) -> list[Path]:
    """The notebooks to run: those matching the comma-separated names, prefixes or globs, in that order."""
    stems = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    globs = list(SMOKE_NOTEBOOKS) if smoke and patterns == "*" else [g.strip() for g in patterns.split(",")]
    matches = [s for g in globs for s in stems if fnmatch.fnmatch(s, g) or s.startswith(g)]
    chosen = list(dict.fromkeys(matches))  # in the order asked for (the first ones first, if time runs out)
    if not chosen:
        raise SystemExit(f"{COMMAND}: no notebook matches {patterns!r}; notebooks: {', '.join(stems)}")
    return [ROOT / "notebooks" / f"{s}.ipynb" for s in chosen]


def main(argv: list[str] | None = None) -> list[dict]:
    """Write the model folder, run the notebooks within the budget, write the results file after each."""
    args = parse_args(list(argv or []))
    notebooks = select(args.notebooks, args.smoke)
    work = Path(args.work_dir).resolve()
    executed_dir = Path(args.executed_dir or work / "executed").resolve()
    executed_dir.mkdir(parents=True, exist_ok=True)
    results, records, start = ResultsFile(COMMAND, args.out, args.smoke), [], time.perf_counter()
    esm = work / ("esm2-tiny-random" if args.smoke else "esm2-650M-random")
    if any(parameters_for(path, str(esm), work).get("model_name") == str(esm) for path in notebooks):
        write_esm_folder(esm, args.smoke)  # only for the chapters that load ESM-2 (minutes of disk writes saved)
    for path in notebooks:
        left = args.budget_s - (time.perf_counter() - start)
        if left < 10:
            record = {"notebook": path.stem, "skipped": f"time budget of {args.budget_s:.0f} s spent"}
        else:
            record = run_one(path, args, esm, executed_dir, left)
        records.append(record)
        line = record.get("skipped") or (f"FAILED after {record['runtime_s']:.0f} s" if "error" in record else
                                         f"ran in {record['runtime_s']:.0f} s")
        print(f"[{COMMAND}] {path.stem}: {line}", flush=True)
        results.write(records)
        if SIGNALLED:
            raise SystemExit(f"{COMMAND}: stopped by signal {SIGNALLED[0]} while running {path.name} (recorded)")
    print(f"[{COMMAND}] wrote {results.path}", flush=True)
    return records

"""Where a profiled training step leaves the GPU idle: a summary of a ``torch.profiler`` Chrome trace.

``python -m benchmarks train --profile CASE`` writes it below the kernel tables. The tables say what the GPU
computes; this says when it computes nothing. Over the profiled steps it takes the union of the device's
kernel, copy and memset intervals, and reports the idle time between them: in total, binned by gap length
(many gaps of a few microseconds mean the GPU waits for kernel launches; a few long ones mean it waits for
the host, e.g. a synchronisation followed by the next batch's preparation), and the longest gaps, each
with the kernels around it and the host operation running when it opened.
"""
from __future__ import annotations

import json
from pathlib import Path

DEVICE_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")
BINS_US = (5, 20, 100, 1000, float("inf"))


def _load(trace: str | Path | dict) -> list[dict]:
    data = trace if isinstance(trace, dict) else json.loads(Path(trace).read_text())
    events = data["traceEvents"] if isinstance(data, dict) else data
    return [e for e in events if e.get("ph") == "X" and "dur" in e]


def _union(intervals: list[tuple[float, float, str]]) -> list[tuple[float, float, str, str]]:
    """Merge overlapping ``(start, end, name)``: ``(start, end, first name, last name)`` per busy stretch."""
    merged: list[list] = []
    for start, end, name in sorted(intervals):
        if merged and start <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1][1], merged[-1][3] = end, name
        else:
            merged.append([start, end, name, name])
    return [tuple(m) for m in merged]


def _host_op_at(ops: list[dict], t: float) -> str:
    """The innermost host operation (shortest interval) running at time ``t``, or ``"-"``."""
    around = [e for e in ops if e["ts"] <= t <= e["ts"] + e["dur"]]
    return min(around, key=lambda e: e["dur"])["name"][:70] if around else "-"


def idle_summary(trace: str | Path | dict, top: int = 12) -> dict:
    """GPU idle time over the profiled steps of a Chrome trace (a path, or the loaded JSON).

    Returns:
        ``{"steps", "window_ms", "busy_ms", "idle_ms", "bins": [(upper_us, count, total_ms)], "gaps":
        [(gap_us, kernel_before, kernel_after, host_op)]}``, longest gaps first; ``window_ms`` runs from the
        first to the last device activity inside the profiled steps.
    """
    events = _load(trace)
    steps = [e for e in events if str(e.get("name", "")).startswith("ProfilerStep#")]
    lo = min((e["ts"] for e in steps), default=float("-inf"))
    hi = max((e["ts"] + e["dur"] for e in steps), default=float("inf"))
    device = [(e["ts"], e["ts"] + e["dur"], str(e.get("name", ""))) for e in events
              if e.get("cat") in DEVICE_CATEGORIES and lo <= e["ts"] <= hi + 1e6]
    if not device:
        return {"steps": len(steps), "window_ms": 0.0, "busy_ms": 0.0, "idle_ms": 0.0, "bins": [], "gaps": []}
    busy = _union(device)
    host = [e for e in events if e.get("cat") in ("cpu_op", "cuda_runtime", "cuda_driver", "user_annotation")
            and not str(e.get("name", "")).startswith("ProfilerStep#")]
    gaps = [(b[0] - a[1], a[3], b[2], a[1]) for a, b in zip(busy, busy[1:])]
    bins, lower = [], 0.0
    for upper in BINS_US:
        inside = [g for g, *_ in gaps if lower <= g < upper]
        bins.append((upper, len(inside), sum(inside) / 1e3))
        lower = upper
    longest = sorted(gaps, reverse=True)[:top]
    return {"steps": len(steps), "window_ms": (busy[-1][1] - busy[0][0]) / 1e3,
            "busy_ms": sum(e - s for s, e, *_ in busy) / 1e3, "idle_ms": sum(g for g, *_ in gaps) / 1e3,
            "bins": bins, "gaps": [(g, before[:60], after[:60], _host_op_at(host, t + 1.0))
                                   for g, before, after, t in longest]}


def format_summary(summary: dict) -> str:
    """The summary as text for the profile file."""
    s = summary
    where = f"{s['steps']} profiled steps" if s["steps"] else "the profiled region"
    per_step = f"; {s['idle_ms'] / s['steps']:.1f} ms per step" if s["steps"] else ""
    head = (f"# GPU idle over {where}: window {s['window_ms']:.1f} ms, busy {s['busy_ms']:.1f} ms, "
            f"idle {s['idle_ms']:.1f} ms ({s['idle_ms'] / max(s['window_ms'], 1e-9):.1%}{per_step})")
    lines = [head, "# gaps by length:"]
    lower = 0
    for upper, count, total in s["bins"]:
        lines.append(f"#   {lower:>6} us to {upper:>6} us: {count:>6} gaps, {total:8.2f} ms")
        lower = upper
    lines.append("# longest gaps (us, kernel before, kernel after, host operation when it opened):")
    lines += [f"#   {g:9.1f}  {before}  ->  {after}  |  {host}" for g, before, after, host in s["gaps"]]
    return "\n".join(lines)

"""Tables and figures of the stored ``train`` and ``train-dist`` results (for the performance chapter).

Everything here reads JSON files written by :mod:`bioft_tutorial.bench.train_bench` and
:mod:`bioft_tutorial.bench.train_dist_bench` (schema: ``book/results/gpu/README.md``); nothing measures.
Smoke records (tiny model, CPU) are never shown. Every figure function returns a figure even without
data: a placeholder that says nothing was measured.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from bioft_tutorial.bench.results import find_results_dir, load_results

SIZES = ["8M", "35M", "150M", "650M", "3B", "15B"]
#: Paths in the order each adds a technique, with the label used in tables and figures.
PATH_LABELS = {"naive": "naive (fp32, pad to 1,024)", "bf16": "+ bf16 autocast, length buckets",
               "bf16-base": "+ frozen weights stored in bf16", "packed": "+ packing, varlen attention",
               "package": "+ compile, static shapes, fused AdamW"}
COLORS = {"naive": "#7f7f7f", "bf16": "#1f77b4", "bf16-base": "#17becf", "packed": "#2ca02c", "package": "#d62728"}


def load_measured(command: str = "train", results_dir: str | Path | None = None) -> pd.DataFrame:
    """GPU records of one command (``"train"`` or ``"train-dist"``), newest file last; smoke runs left out.

    Returns:
        One row per record (errors and skipped cases included: see their ``error``/``skipped`` columns),
        with the ``file`` it came from; empty when nothing is stored.
    """
    folder = find_results_dir(results_dir)
    if folder is None:
        return pd.DataFrame()
    records = load_results(f"{command}-2*.json", folder)  # train-<date>.json, not train-dist-/train-smoke-
    df = pd.DataFrame([r for r in records if not r.get("smoke") and r.get("gpu", "cpu") != "cpu"])
    return df.sort_values("date", kind="stable").reset_index(drop=True) if len(df) else df


def _measured(df: pd.DataFrame) -> pd.Series:
    """True for records that neither failed nor were skipped."""
    none = pd.Series(np.nan, index=df.index)
    return df.get("error", none).isna() & df.get("skipped", none).isna()


def runs_of(df: pd.DataFrame, case: str) -> pd.DataFrame:
    """Every successful record of one case across the stored files (to show the spread between runs)."""
    return df[_measured(df) & (df["case"] == case)] if len(df) else df


def latest(df: pd.DataFrame) -> pd.DataFrame:
    """The newest successful record of each case, on the GPU of the newest file (one GPU per page)."""
    if df.empty:
        return df
    ok = df[_measured(df)]
    if ok.empty:
        return ok
    ok = ok[ok["gpu"] == ok.iloc[-1]["gpu"]]
    return ok.drop_duplicates("case", keep="last").reset_index(drop=True)


def provenance(df: pd.DataFrame) -> pd.DataFrame:
    """One row per results file: GPU, library versions, date and what its cases did."""
    if df.empty:
        return df
    status = np.where(df.get("error", pd.Series(index=df.index)).notna(), "error",
                      np.where(df.get("skipped", pd.Series(index=df.index)).notna(), "skipped", "measured"))
    grouped = df.assign(status=status).groupby("file", sort=False)
    return pd.DataFrame({
        "gpu": grouped["gpu"].first(), "torch": grouped["torch"].first(),
        "transformers": grouped["transformers"].first(), "date": grouped["date"].first(),
        "measured": grouped["status"].apply(lambda s: int((s == "measured").sum())),
        "errors / skipped": grouped["status"].apply(lambda s: f"{(s == 'error').sum()} / {(s == 'skipped').sum()}"),
    })


def _pick(df: pd.DataFrame, model: str, path: str, method: str = "lora") -> pd.Series | None:
    """The newest record of the plain case (``650M-package``, ``650M-full-naive``; no variant tags)."""
    case = "-".join(p for p in (model, "" if method == "lora" else method, path) if p)
    rows = df[df["case"] == case] if len(df) else df
    return None if rows.empty else rows.iloc[-1]


def adapter_cost(df: pd.DataFrame, model: str = "650M") -> dict | None:
    """What LoRA's adapters cost per step: the package path with LoRA against the same step with no adapter.

    The ``head`` case trains only the classifier but still runs the backward pass through every layer
    (input gradients), so its step is the floor a LoRA step cannot beat. Both records come from the newest
    file that holds both (one run, one machine); step times are medians over the timed steps. Returns
    ``None`` if no file has both.
    """
    ok = df[_measured(df)] if len(df) else df
    if ok.empty:
        return None
    lora, head = f"{model}-package", f"{model}-head-package"
    files = [f for f, g in ok.groupby("file", sort=False) if {lora, head} <= set(g["case"])]
    if not files:
        return None
    run = ok[ok["file"] == files[-1]].set_index("case")
    a, b = run.loc[lora], run.loc[head]
    step_ms = lambda r: float(np.median(r["step_times_ms"])) if isinstance(r.get("step_times_ms"), list) \
        else 1000 * r["step_s"]  # noqa: E731 - the median step: one stalled step does not move it
    return {"file": files[-1], "gpu": a["gpu"], "lora_tokens_per_s": a["tokens_per_s"],
            "head_tokens_per_s": b["tokens_per_s"], "lora_step_ms": step_ms(a), "head_step_ms": step_ms(b),
            "adapter_share": 1 - step_ms(b) / step_ms(a)}


def family_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per ESM-2 size (LoRA): real tokens/s and peak memory of naive, bf16 and the package's path.

    The package column falls back to ``packed`` (no compile) where only that was measured (15B).
    """
    rows = []
    for size in SIZES:
        cells = {"model": size}
        for label, paths in (("naive", ["naive"]), ("bf16", ["bf16"]), ("package", ["package", "packed"])):
            r = next((x for x in (_pick(df, size, p) for p in paths) if x is not None), None)
            cells[f"{label} tokens/s"] = r["tokens_per_s"] if r is not None else np.nan
            cells[f"{label} peak GiB"] = r["peak_mem_gib"] if r is not None else np.nan
            if label == "package" and r is not None:
                cells["package path"] = r["path"] + (", checkpointing" if r.get("checkpointing") else "")
                cells["MFU"] = r.get("mfu")
        cells["speedup vs naive"] = cells["package tokens/s"] / cells["naive tokens/s"]
        rows.append(cells)
    table = pd.DataFrame(rows).set_index("model")
    return table.dropna(how="all", subset=[c for c in table.columns if "tokens/s" in c])


def ablation_table(df: pd.DataFrame, model: str = "650M") -> pd.DataFrame:
    """What each technique buys, from ONE run so that the factors compare like with like.

    ``df`` holds the records of all files (not only :func:`latest`); the run used is the newest file with the
    most of the ablation's paths (``t.attrs["file"]`` names it). Columns: tokens/s, step time, padding, peak
    memory, MFU, compile time, and the factor over the previous technique and over the naive recipe.
    """
    ok = df[_measured(df)] if len(df) else df
    if ok.empty or "path" not in ok:
        return pd.DataFrame()
    ok = ok[(ok["model"] == model) & (ok["method"] == "lora") & ok["path"].isin(list(PATH_LABELS))]
    if ok.empty:
        return pd.DataFrame()
    counts = ok.groupby("file", sort=False)["path"].nunique()
    run = ok[ok["file"] == counts[counts == counts.max()].index[-1]]
    rows = [r for r in (_pick(run, model, p) for p in PATH_LABELS) if r is not None]
    t = pd.DataFrame(rows)[["path", "tokens_per_s", "step_s", "pad_fraction", "peak_mem_gib", "mfu", "compile_s"]]
    t.insert(1, "technique", t["path"].map(PATH_LABELS))
    t["× previous"] = t["tokens_per_s"] / t["tokens_per_s"].shift(1)
    t["× naive"] = t["tokens_per_s"] / t["tokens_per_s"].iloc[0] if t["path"].iloc[0] == "naive" else np.nan
    t = t.set_index("path")
    t.attrs["file"] = run["file"].iloc[0]
    return t


def method_table(df: pd.DataFrame, model: str = "650M") -> pd.DataFrame:
    """LoRA against full fine-tuning, naive and package paths: tokens/s, memory, trainable parameters."""
    rows = []
    for method in ("lora", "full"):
        for path in ("naive", "package"):
            r = _pick(df, model, path, method)
            if r is not None:
                rows.append({"method": method, "path": path, "tokens/s": r["tokens_per_s"],
                             "peak GiB": r["peak_mem_gib"], "MFU": r.get("mfu"),
                             "trainable parameters": r.get("trainable_params")})
    return pd.DataFrame(rows)


def numerics_table(df: pd.DataFrame) -> pd.DataFrame:
    """Relative differences against fp32 padded Hugging Face, per variant (from the ``numerics`` case)."""
    rows = df[df["path"] == "numerics"] if len(df) else df
    if rows.empty:
        return pd.DataFrame()
    r = rows.iloc[-1]
    return pd.DataFrame({v: {"loss": r[f"loss_rel_diff_{v}"], "gradients": r[f"grad_rel_diff_{v}"]}
                         for v in ("packed_fp32", "padded_bf16", "packed_bf16")}).T


def scaling_table(dist: pd.DataFrame) -> pd.DataFrame:
    """Multi-GPU records: tokens/s per GPU against one GPU, efficiency, memory and loss-curve agreement."""
    if dist.empty:
        return dist
    ok = dist[_measured(dist)]
    cols = ["case", "strategy", "world_size", "interconnect", "single_gpu_tokens_per_s", "tokens_per_s",
            "total_tokens_per_s", "scaling_efficiency", "single_gpu_peak_mem_gib", "peak_mem_gib",
            "loss_curve_max_abs_diff"]
    return ok.drop_duplicates(["case", "world_size"], keep="last").reindex(columns=cols).set_index("case")


# --------------------------------------------------------------------------------------------- figures
def _placeholder(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"No GPU measurement stored yet\n({what})", ha="center", va="center", fontsize=11,
            transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_family(table: pd.DataFrame):
    """Grouped bars per model size: tokens/s (log scale) and peak memory of naive, bf16, package."""
    fig, (ax, ax_mem) = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
    if table.empty:
        _placeholder(ax, "train bench, family sizes")
        _placeholder(ax_mem, "peak memory")
        return fig
    x, width = np.arange(len(table)), 0.27
    for k, path in enumerate(("naive", "bf16", "package")):
        ax.bar(x + (k - 1) * width, table[f"{path} tokens/s"], width, label=path, color=COLORS[path])
        ax_mem.bar(x + (k - 1) * width, table[f"{path} peak GiB"], width, label=path, color=COLORS[path])
    ax.set(xticks=x, xticklabels=table.index, yscale="log", ylabel="real tokens/s (log)", xlabel="ESM-2, LoRA r=8")
    ax_mem.axhline(24, color="k", ls="--", lw=0.8)
    ax_mem.text(x[-1] + 0.4, 24, "24 GiB", va="bottom", ha="right", fontsize=8)
    ax_mem.set(xticks=x, xticklabels=table.index, ylabel="peak GPU memory (GiB)", xlabel="ESM-2, LoRA r=8")
    ax.legend(frameon=False, fontsize=8)
    return fig


def plot_ablation(table: pd.DataFrame, model: str = "650M"):
    """Horizontal bars: tokens/s after each technique is added, with the factor over the previous step."""
    fig, ax = plt.subplots(figsize=(8, 3.2), constrained_layout=True)
    if table.empty:
        _placeholder(ax, f"train bench, ESM-2 {model} paths")
        return fig
    y = np.arange(len(table))[::-1]
    ax.barh(y, table["tokens_per_s"], color=[COLORS[p] for p in table.index])
    for yi, (value, factor) in zip(y, zip(table["tokens_per_s"], table["× previous"])):
        ax.text(value, yi, f" {value:,.0f}" + (f"  (×{factor:.1f})" if np.isfinite(factor) else ""), va="center",
                fontsize=8)
    ax.set(yticks=y, yticklabels=table["technique"], xlabel=f"real tokens/s, ESM-2 {model} LoRA")
    ax.set_xlim(0, table["tokens_per_s"].max() * 1.35)
    return fig


def plot_scaling(table: pd.DataFrame, dist: pd.DataFrame):
    """Left: tokens/s per GPU, one GPU vs N GPUs, per case. Right: loss curves, one GPU vs N GPUs."""
    fig, (ax, ax_loss) = plt.subplots(1, 2, figsize=(10, 3.6), constrained_layout=True)
    if table.empty:
        _placeholder(ax, "train-dist bench (torchrun)")
        _placeholder(ax_loss, "loss curves")
        return fig
    x = np.arange(len(table))
    ax.bar(x - 0.2, table["single_gpu_tokens_per_s"], 0.4, label="1 GPU", color=COLORS["naive"])
    ax.bar(x + 0.2, table["tokens_per_s"], 0.4, label="per GPU of N", color=COLORS["package"])
    for xi, eff, n in zip(x, table["scaling_efficiency"], table["world_size"]):
        ax.text(xi + 0.2, 0, f"N={n}\n{eff:.0%}" if pd.notna(eff) else f"N={n}", ha="center", va="bottom",
                fontsize=8, color="white")
    ax.set(xticks=x, xticklabels=[f"{c}\n{s}" for c, s in zip(table.index, table["strategy"])],
           ylabel="real tokens/s per GPU")
    ax.legend(frameon=False, fontsize=8)
    for case, r in dist.drop_duplicates(["case", "world_size"], keep="last").set_index("case").iterrows():
        if isinstance(r.get("loss_curve"), list):
            steps = np.arange(1, len(r["loss_curve"]) + 1)
            line, = ax_loss.plot(steps, r["loss_curve_single"], "o-", label=f"{case}: 1 GPU")
            ax_loss.plot(steps, r["loss_curve"], "x--", color=line.get_color(), label=f"{case}: {r['world_size']} GPUs")
    ax_loss.set(xlabel="optimizer step (same global batches)", ylabel="loss (nats per token)")
    ax_loss.legend(frameon=False, fontsize=7)
    return fig

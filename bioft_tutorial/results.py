"""Read stored GPU measurements: the tables and figures the book's pages show from ``book/results/gpu/``.

The files are written by the benchmarks beside the package (``python -m benchmarks <command>``), one JSON
file per run: ``{"command": ..., "env": {...}, "results": [record, ...]}``, each record repeating the GPU,
library versions and date (schema in ``book/results/gpu/README.md``). Nothing here measures anything.

Only GPU records are shown: records of smoke runs (tiny model, CPU), failed and skipped cases are left out.
Ratios are taken only between records of one file (one run, one machine, one day).
"""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

RESULTS_DIR = Path("book") / "results" / "gpu"
#: The ablation of the ``train`` benchmark, in the order each setting adds one technique.
ABLATION = ("fp32-padded", "bf16-padded", "bf16-packed", "fast")
BASELINE = "hf-trainer"


def find_results_dir(results_dir: str | Path | None = None) -> Path | None:
    """``book/results/gpu`` looked up from the working directory upwards (notebooks run in ``notebooks/``),
    then beside the package (an editable install lives in the repository); ``None`` if there is none."""
    if results_dir is not None:
        return Path(results_dir)
    here = Path.cwd().resolve()
    for root in (here, *here.parents, Path(__file__).resolve().parents[1]):
        if (root / RESULTS_DIR).is_dir():
            return root / RESULTS_DIR
    return None


def measured(command: str, results_dir: str | Path | None = None) -> pd.DataFrame:
    """GPU records of one benchmark command (files ``<command>-<date>.json``), oldest first.

    Returns:
        One row per record, with the ``file`` it came from; smoke, CPU, failed and skipped records left
        out. Empty when nothing is stored.
    """
    folder = find_results_dir(results_dir)
    rows = []
    for path in sorted(folder.glob(f"{command}-2*.json")) if folder is not None and folder.is_dir() else []:
        for record in json.loads(path.read_text())["results"]:
            failed = "error" in record or "skipped" in record
            if not (failed or record.get("smoke") or record.get("gpu", "cpu") == "cpu"):
                rows.append({**record, "file": path.name})
    df = pd.DataFrame(rows)
    return df.sort_values("date", kind="stable").reset_index(drop=True) if len(df) else df


def provenance(df: pd.DataFrame) -> pd.DataFrame:
    """One row per results file: GPU, library versions, date and how many records it holds."""
    if df.empty:
        return df
    grouped = df.groupby("file", sort=False)
    return pd.DataFrame({"gpu": grouped["gpu"].first(), "torch": grouped["torch"].first(),
                         "transformers": grouped["transformers"].first(), "date": grouped["date"].first(),
                         "records": grouped.size()})


def _one_run(df: pd.DataFrame, cases: list[str]) -> pd.DataFrame:
    """The records of the newest file that holds the most of ``cases``, indexed by case."""
    if df.empty or "case" not in df:
        return pd.DataFrame()
    hits = df[df["case"].isin(cases)].groupby("file", sort=False)["case"].nunique()
    if hits.empty:
        return pd.DataFrame()
    run = df[df["file"] == hits[hits == hits.max()].index[-1]]
    return run.drop_duplicates("case", keep="last").set_index("case")


def ablation_table(train: pd.DataFrame, model: str = "650M") -> pd.DataFrame:
    """What each training setting buys, all from one run of the ``train`` benchmark.

    Rows: the Hugging Face Trainer baseline, then :data:`ABLATION` (``<model>-<setting>``) in order.
    Columns: the ``TrainConfig`` setting, the LoRA layer (``"fused"`` or ``"peft"``: PEFT's own, which records
    without the field used), real tokens/s, median step time, padding share, peak memory, MFU, compile time, and
    the factors over the row above and over the Trainer of the same run. ``table.attrs["file"]`` names the run.
    """
    names = [f"{model}-{s}" for s in (BASELINE, *ABLATION)]
    run = _one_run(train, names)
    if run.empty:
        return run
    table = run.reindex([n for n in names if n in run.index])
    columns = ["setting", "lora_layer", "tokens_per_s", "step_s", "padding_fraction", "peak_mem_gib", "mfu",
               "compile_s"]
    table = table.reindex(columns=columns)
    table["lora_layer"] = table["lora_layer"].astype(object).fillna("peft")  # before the field: PEFT's layer
    table["× previous"] = table["tokens_per_s"] / table["tokens_per_s"].shift(1)
    trainer = run["tokens_per_s"].get(f"{model}-{BASELINE}", np.nan)
    table["× Trainer"] = table["tokens_per_s"] / trainer
    table.index = [n.removeprefix(f"{model}-") for n in table.index]
    table.attrs["file"] = run["file"].iloc[0]
    return table


def methods_table(train: pd.DataFrame, model: str = "650M") -> pd.DataFrame:
    """Head only, LoRA and full fine-tuning on the fast path, from one run: speed, memory, what trains."""
    names = [f"{model}-fast", f"{model}-head-fast", f"{model}-full-fast"]
    run = _one_run(train, names)
    if run.empty:
        return run
    table = run.reindex([n for n in names if n in run.index])
    table = table.reindex(columns=["method", "tokens_per_s", "peak_mem_gib", "mfu", "trainable_params", "file"])
    return table.set_index("method")


def cuda_graphs_table(train: pd.DataFrame, model: str = "650M") -> pd.DataFrame:
    """The fast path with and without ``compile_mode="reduce-overhead"`` (CUDA graphs), and the Trainer
    baseline, from the newest run that measured them: mean and median real tokens/s, and the factors."""
    names = [f"{model}-{BASELINE}", f"{model}-fast", f"{model}-fast-cg"]
    run = _one_run(train, names)
    if run.empty or f"{model}-fast-cg" not in run.index:
        return pd.DataFrame()
    table = run.reindex([n for n in names if n in run.index]).reindex(
        columns=["setting", "tokens_per_s", "tokens_per_s_median", "peak_mem_gib", "compile_s"])
    table["× fast"] = table["tokens_per_s"] / run.loc[f"{model}-fast", "tokens_per_s"]
    table["× Trainer"] = table["tokens_per_s"] / run["tokens_per_s"].get(f"{model}-{BASELINE}", np.nan)
    table.index = [n.removeprefix(f"{model}-") for n in table.index]
    table.attrs["file"] = run["file"].iloc[0]
    return table


def adapter_cost(train: pd.DataFrame, model: str = "650M") -> dict | None:
    """What LoRA's adapters cost: the fast path's median step with LoRA against the same step without adapters.

    The ``floor`` case trains the head only but back-propagates through every layer, as LoRA does: the frozen
    model forward and backward, the floor a LoRA step cannot beat. ``adapter_share`` is for the ``fast`` case
    (the fused LoRA layer in records that name ``lora_layer``, PEFT's in older ones); ``peft_adapter_share`` for
    ``peft-fast`` (PEFT's own layer) where the same file has it. All from one file; ``None`` if no file has both
    ``fast`` and ``floor-fast``.
    """
    names = [f"{model}-fast", f"{model}-floor-fast", f"{model}-peft-fast"]
    run = _one_run(train, names)
    if not set(names[:2]) <= set(run.index):
        return None
    lora, head = run.loc[names[0]], run.loc[names[1]]
    layer = lora.get("lora_layer")
    cost = {"file": lora["file"], "gpu": lora["gpu"], "lora_step_s": lora["step_s"], "floor_step_s": head["step_s"],
            "lora_tokens_per_s": lora["tokens_per_s"], "floor_tokens_per_s": head["tokens_per_s"],
            "lora_layer": layer if isinstance(layer, str) else "peft",
            "adapter_share": 1 - head["step_s"] / lora["step_s"]}
    if names[2] in run.index:
        peft = run.loc[names[2]]
        cost |= {"peft_step_s": peft["step_s"], "peft_tokens_per_s": peft["tokens_per_s"],
                 "peft_adapter_share": 1 - head["step_s"] / peft["step_s"]}
    return cost


def twin_table(train: pd.DataFrame, variant: str, labels: tuple[str, str]) -> pd.DataFrame:
    """Cases with and without one setting, pairs from one run: ``<x>-<variant>-fast<y>`` beside ``<x>-fast<y>``.

    Rows: each pair found, named by the case without the variant less ``-fast`` (``650M``, ``650M-floor``,
    ``3B``, ``650M-cg`` for ``650M-fast-cg``); columns, with ``a, b = labels``: real tokens/s of each (mean), the
    ratio ``b / a`` of the means and of the medians, each case's loss at its last step (same weights, same
    batches) and peak memory. ``table.attrs["file"]`` names the run.
    """
    if train.empty or "case" not in train:
        return pd.DataFrame()
    twins = {c.replace(f"-{variant}-", "-", 1): c for c in train["case"].unique() if f"-{variant}-fast" in str(c)}
    run = _one_run(train, [*twins, *twins.values()])
    a, b = labels
    rows = {}
    for base, other in twins.items():
        if {base, other} <= set(run.index):
            x, y = run.loc[base], run.loc[other]
            rows[base.replace("-fast", "", 1)] = {
                f"{a} tokens/s": x["tokens_per_s"], f"{b} tokens/s": y["tokens_per_s"],
                f"{b} / {a}": y["tokens_per_s"] / x["tokens_per_s"],
                f"{b} / {a}, medians": y.get("tokens_per_s_median", np.nan) / x.get("tokens_per_s_median", np.nan),
                f"{a} last loss": x.get("loss_last", np.nan), f"{b} last loss": y.get("loss_last", np.nan),
                f"{a} peak GiB": x.get("peak_mem_gib", np.nan), f"{b} peak GiB": y.get("peak_mem_gib", np.nan)}
    if not rows:
        return pd.DataFrame()
    table = pd.DataFrame(rows).T
    table.attrs["file"] = run["file"].iloc[0]
    return table


def fp8_table(train: pd.DataFrame) -> pd.DataFrame:
    """FP8 frozen linears against bf16 on the fast path (:func:`twin_table`): tokens/s of each and the ratio."""
    table = twin_table(train, "fp8", ("bf16", "fp8"))
    return table.reindex(columns=["bf16 tokens/s", "fp8 tokens/s", "fp8 / bf16"]) if len(table) else table


def attention_table(train: pd.DataFrame) -> pd.DataFrame:
    """FlashAttention-4 against PyTorch's varlen FlashAttention-2 for packed rows (:func:`twin_table`)."""
    return twin_table(train, "fa4", ("varlen", "fa4"))


def family_table(train: pd.DataFrame) -> pd.DataFrame:
    """LoRA on the fast path per ESM-2 size, the ``<size>-fast`` case (newest record of each; FP8 and other
    token budgets are variants, not sizes): tokens/s, peak memory, MFU, settings and the LoRA layer that ran."""
    if train.empty:
        return train
    fast = train[(train["method"] == "lora") & (train["case"] == train["model"].astype(str) + "-fast")]
    columns = ["token_budget", "checkpointing", "lora_layer", "tokens_per_s", "peak_mem_gib", "mfu", "gpu", "file"]
    table = fast.drop_duplicates("model", keep="last").set_index("model").reindex(columns=columns)
    table["lora_layer"] = table["lora_layer"].astype(object).fillna("peft")  # before the field: PEFT's layer
    order = ["8M", "35M", "150M", "650M", "3B", "15B"]
    return table.reindex([m for m in order if m in table.index])


def scaling_table(dist: pd.DataFrame) -> pd.DataFrame:
    """Several GPUs: tokens/s per GPU against one GPU of the same job, efficiency, memory, loss curves."""
    if dist.empty:
        return dist
    columns = ["parallel", "world_size", "interconnect", "single_gpu_tokens_per_s", "tokens_per_s",
               "scaling_efficiency", "single_gpu_peak_mem_gib", "peak_mem_gib", "loss_curve_max_abs_diff"]
    return dist.drop_duplicates(["case", "world_size"], keep="last").set_index("case").reindex(columns=columns)


def _beside(df: pd.DataFrame) -> pd.DataFrame:
    """Add ``beside``: for each record, the notebooks of *other* files whose run overlapped its own in time.

    A record runs from its ``started`` time; older records, which lack it, ran one after another from the
    file's date (when the command started), so from that date plus the runtimes before them, which the model
    folder written first makes a few tens of seconds early. Overlaps shorter than a minute are not counted.
    """
    start = pd.to_datetime(df["date"], utc=True) + pd.to_timedelta(
        df.groupby("file")["runtime_s"].transform(lambda r: r.fillna(0).cumsum().shift(fill_value=0)), unit="s")
    if "started" in df:  # recorded from 2026-11-30T19Z on
        start = pd.to_datetime(df["started"], utc=True).fillna(start)
    end = start + pd.to_timedelta(df["runtime_s"].fillna(0), unit="s")
    margin = pd.Timedelta(seconds=60)
    df["beside"] = [sorted({df.at[j, "notebook"] for j in df.index if df.at[j, "file"] != df.at[i, "file"]
                            and min(end[i], end[j]) - max(start[i], start[j]) > margin}) for i in df.index]
    return df


def notebook_runs(results_dir: str | Path | None = None) -> pd.DataFrame:
    """The newest record of each notebook executed in the full profile on a GPU (``notebooks-<date>.json``).

    A run stopped by the benchmark's time limit is shown only while the notebook has no complete run.
    Columns: ``status`` (``"ran"``, ``"failed"`` or ``"stopped (time limit)"``), ``runtime_s``, ``peak_gpu_mem_gib``, ``disk_written_gib``,
    ``output_peak_gib``, ``parameters``, ``gpu``, ``date``, ``file``, ``training`` (one dict per training
    run of the notebook: its name, steps, steady real tokens/s and median step time) and ``beside`` (the
    notebooks of other files that ran at the same time, e.g. on another GPU of the host: :func:`_beside`).
    """
    folder = find_results_dir(results_dir)
    rows = []
    for path in sorted(folder.glob("notebooks-2*.json")) if folder is not None and folder.is_dir() else []:
        rows += [{**r, "file": path.name} for r in json.loads(path.read_text())["results"]
                 if not r.get("smoke") and r.get("gpu", "cpu") != "cpu"]
    if not rows:
        return pd.DataFrame()
    df = _beside(pd.DataFrame(rows)).sort_values("date", kind="stable")
    error = df.get("error", pd.Series(index=df.index, dtype=object))
    stopped = error.fillna("").astype(str).str.startswith("stopped by signal")  # the caller's time limit
    df["status"] = np.select([stopped, error.notna()], ["stopped (time limit)", "failed"], "ran")
    ran = df.groupby("notebook")["status"].transform(lambda s: (s == "ran").any())
    df = df[~(stopped & ran)]  # a run cut short by the time limit says nothing against a complete one
    return df.drop_duplicates("notebook", keep="last").set_index("notebook").sort_index()


def training_runs(notebooks: pd.DataFrame) -> pd.DataFrame:
    """One row per training run recorded in :func:`notebook_runs` (notebook, run, steps, speed)."""
    rows = [{"notebook": nb, **run} for nb, runs in notebooks.get("training", pd.Series(dtype=object)).items()
            if isinstance(runs, list) for run in runs]
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------ figures
def _placeholder(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"No GPU measurement stored yet\n({what})", ha="center", va="center",
            transform=ax.transAxes)
    ax.set(xticks=[], yticks=[])


def plot_ablation(table: pd.DataFrame, model: str = "650M"):
    """Horizontal bars: real tokens/s of each setting, with the factor over the bar above."""
    fig, ax = plt.subplots(figsize=(8, 3.2), constrained_layout=True)
    if table.empty:
        _placeholder(ax, f"train benchmark, ESM-2 {model}")
        return fig
    y = np.arange(len(table))[::-1]
    ax.barh(y, table["tokens_per_s"], color=["#7f7f7f" if i == BASELINE else "#1f77b4" for i in table.index])
    for yi, value, factor in zip(y, table["tokens_per_s"], table["× previous"]):
        ax.text(value, yi, f" {value:,.0f}" + (f"  (×{factor:.2f})" if np.isfinite(factor) else ""), va="center",
                fontsize=8)
    ax.set(yticks=y, yticklabels=table["setting"].fillna(pd.Series(table.index, index=table.index)),
           xlabel=f"real tokens/s, ESM-2 {model} LoRA", xlim=(0, 1.4 * table["tokens_per_s"].max()))
    return fig


def plot_scaling(table: pd.DataFrame, dist: pd.DataFrame):
    """Left: tokens/s per GPU, one GPU against N, per case. Right: their loss curves on the same batches."""
    fig, (ax, ax_loss) = plt.subplots(1, 2, figsize=(10, 3.6), constrained_layout=True)
    if table.empty:
        _placeholder(ax, "train-dist benchmark (torchrun)")
        _placeholder(ax_loss, "loss curves")
        return fig
    x = np.arange(len(table))
    ax.bar(x - 0.2, table["single_gpu_tokens_per_s"], 0.4, label="1 GPU", color="#7f7f7f")
    ax.bar(x + 0.2, table["tokens_per_s"], 0.4, label="per GPU of N", color="#1f77b4")
    ax.set(xticks=x, xticklabels=[f"{c}\nN={n}" for c, n in zip(table.index, table["world_size"])],
           ylabel="real tokens/s per GPU")
    ax.legend(frameon=False, fontsize=8)
    for case, r in dist.drop_duplicates(["case", "world_size"], keep="last").set_index("case").iterrows():
        steps = np.arange(1, len(r["loss_curve"]) + 1)
        line, = ax_loss.plot(steps, r["loss_curve_single"], "o-", label=f"{case}: 1 GPU")
        ax_loss.plot(steps, r["loss_curve"], "x--", color=line.get_color(), label=f"{case}: {r['world_size']} GPUs")
    ax_loss.set(xlabel="optimizer step (same global batches)", ylabel="loss (nats per token)", xticks=steps)
    ax_loss.legend(frameon=False, fontsize=7)
    return fig


def plot_fp8_numerics(runs: pd.DataFrame):
    """Loss per step of the newest ``fp8-numerics`` run: bf16, FP8, bf16 with PEFT's LoRA layer and the short
    fp32 run, from one file (records before the ``run`` field name their run by ``precision``).

    Returns:
        ``(figure, verdicts)``: ``verdicts`` maps each judged run (``"fp8"``, ``"bf16-peft"``) to its record (its
        ``checks``, ``tolerance``, ``early_ratio``, ``end_rel_diff``, ``loss_noise``, ...); ``None`` when no run
        is stored.
    """
    fig, ax = plt.subplots(figsize=(7.5, 3.4), constrained_layout=True)
    if runs.empty or "precision" not in runs:
        _placeholder(ax, "fp8-numerics benchmark")
        return fig, None
    run = runs[runs["file"] == runs["file"].iloc[-1]]
    names = run["run"].fillna(run["precision"]) if "run" in run else run["precision"]
    run = run.assign(name=names).drop_duplicates("name", keep="last").set_index("name")
    for name, style in (("bf16", "-"), ("fp8", "-"), ("bf16-peft", "--"), ("fp32", "o")):
        if name in run.index:
            curve = np.asarray(run.loc[name, "loss_curve"], dtype=float)
            label = "bf16, PEFT's LoRA layer" if name == "bf16-peft" else name
            ax.plot(np.arange(1, len(curve) + 1), curve, style, ms=3, lw=1, alpha=0.8, label=label)
    ax.set(xlabel="step", ylabel="training loss (nats per residue)", title=f"{run.index.size} runs, "
           f"same weights and batches; {run['gpu'].iloc[0]}, {run['date'].iloc[0][:10]}")
    ax.legend()
    return fig, {name: run.loc[name].to_dict() for name in ("fp8", "bf16-peft") if name in run.index}
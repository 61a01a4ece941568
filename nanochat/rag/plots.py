"""PNG plots for the evaluation report (matplotlib, headless Agg backend).

metric_bars: EM / F1 by condition (retrieval, no retrieval, oracle) plus citation metrics.
em_by_hops:  EM per hop count and condition (single- vs multi-hop questions).
training_curves: train / val loss from a fine-tune's metrics.csv.
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from nanochat.common import atomic_path, read_csv_columns  # noqa: E402


def save_figure(fig, path) -> Path:
    """The one way a figure reaches disk: PNG, tight bounding box, written atomically, figure closed."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _nz(v) -> float:
    return 0.0 if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def metric_bars(metrics: dict, path) -> Path:
    """Grouped bars: EM and F1 under each condition, then citation precision/recall and unsupported rate."""
    fig, ax = plt.subplots(figsize=(8, 4))
    groups = [("EM", ["em", "em_no_retrieval", "em_oracle"]), ("F1", ["f1", "f1_no_retrieval", "f1_oracle"])]
    colours = ["tab:blue", "tab:gray", "tab:green"]
    labels = ["with retrieval", "no retrieval", "oracle docs"]
    for gi, (_, keys) in enumerate(groups):
        for ci, key in enumerate(keys):
            ax.bar(gi + (ci - 1) * 0.25, _nz(metrics.get(key)), 0.25, color=colours[ci], label=labels[ci] if gi == 0 else None)
    extra = [("cit. P", "citation_precision"), ("cit. R", "citation_recall"), ("unsupported", "unsupported_rate")]
    for j, (_, key) in enumerate(extra):
        ax.bar(2 + j * 0.6, _nz(metrics.get(key)), 0.4, color="tab:orange")
    ax.set_xticks([0, 1] + [2 + j * 0.6 for j in range(len(extra))], [g for g, _ in groups] + [e for e, _ in extra])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score")
    ax.set_title(f"RAG evaluation (n={metrics.get('n')}, k={metrics.get('k')})")
    ax.legend(loc="upper right", fontsize=8)
    return save_figure(fig, path)


COLOURS = {"retrieval": "tab:blue", "no_retrieval": "tab:gray", "oracle": "tab:green", "refrag": "tab:purple",
           "rag": "tab:blue"}


def em_by_hops(metrics: dict, path, title: str = "EM by hop count") -> Path:
    """EM per hop count for each condition (metrics['em_by_hops'] = {hops: {condition: em}})."""
    by = metrics.get("em_by_hops", {})
    hops = sorted(by, key=int)
    conditions = list(dict.fromkeys(c for h in hops for c in by[h]))
    width = 0.8 / max(1, len(conditions))
    fig, ax = plt.subplots(figsize=(6, 4))
    for ci, cond in enumerate(conditions):
        ax.bar([i + (ci - (len(conditions) - 1) / 2) * width for i in range(len(hops))],
               [_nz(by[h].get(cond)) for h in hops], width, color=COLOURS.get(cond), label=cond.replace("_", " "))
    ax.set_xticks(range(len(hops)), [f"{h}-hop" for h in hops])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("exact match")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def training_curves(csv_path, path) -> Path:
    """Train loss per step and val loss where measured, from a metrics.csv written by MetricsLogger."""
    cols = read_csv_columns(csv_path)
    fig, ax = plt.subplots(figsize=(7, 4))
    steps = cols.get("step", [])
    ax.plot(steps, cols.get("loss", []), label="train loss", lw=1)
    val = [(s, v) for s, v in zip(steps, cols.get("val_loss", [])) if not math.isnan(v)]
    if val:
        ax.plot([s for s, _ in val], [v for _, v in val], "o-", label="val loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (assistant tokens)")
    ax.set_title(f"training curves: {Path(csv_path).parent.name}")
    ax.legend()
    return save_figure(fig, path)


def plot_reward_curve(csv_path, png_path) -> Path:
    """Mean reward of the sampled answers (reward phase), and held-out EM and reward of greedy answers on the
    same held-out questions, over training steps, one PNG."""
    import pandas as pd
    df = pd.read_csv(csv_path)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    rl = df[df["phase"] == "reward"].dropna(subset=["reward"])
    if len(rl):
        ax.plot(rl["step"], rl["reward"].rolling(5, min_periods=1).mean(), label="mean reward (rolling 5)")
    ev = df.dropna(subset=["heldout_em"])
    if len(ev):
        ax.plot(ev["step"], ev["heldout_em"], "o-", label="held-out EM")
    if "heldout_reward" in df:
        hr = df.dropna(subset=["heldout_reward"])
        ax.plot(hr["step"], hr["heldout_reward"], "s--", label="held-out reward (greedy)")
    ax.set_xlabel("step")
    ax.set_ylim(0, 1)
    ax.legend(loc="best")
    ax.set_title("REFRAG: reward and held-out EM")
    return save_figure(fig, png_path)

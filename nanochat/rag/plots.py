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
    _legend_outside(ax)
    return save_figure(fig, path)


COLOURS = {"retrieval": "tab:blue", "no_retrieval": "tab:gray", "oracle": "tab:green", "refrag": "tab:purple",
           "rag": "tab:cyan"}


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
    _legend_outside(ax)
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


# -----------------------------------------------------------------------------
# Trust figures (per run in eval/, every run side by side in the report). Legends sit outside the axes, to the
# right, so that they never cover a bar or a curve.

def _legend_outside(ax, **kw) -> None:
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, fontsize=8, frameon=False, **kw)


def failure_bars(runs: dict, path) -> Path:
    """Stacked bars of the failure classes (nanochat.rag.failures.CLASSES, in registry order): per run, one bar
    for all questions and one per hop count. runs: {label: metrics with a failure_classes block}."""
    from nanochat.rag.failures import CLASSES
    bars = []  # (x label, {class: share}, n)
    for label, m in runs.items():
        fc = m.get("failure_classes") or {}
        if not fc:
            continue
        n_by = {h: b.get("n") for h, b in (m.get("by_hops") or {}).items()}
        bars.append((f"{label}\nall (n={m.get('n')})", fc["all"]))
        for h, shares in (fc.get("by_hops") or {}).items():
            bars.append((f"{label}\n{h}-hop (n={n_by.get(h, '?')})", shares))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(bars) + 2.5), 4.2))
    bottom = [0.0] * len(bars)
    for cls, (colour, meaning) in CLASSES.items():
        vals = [_nz(shares.get(cls)) for _, shares in bars]
        ax.bar(range(len(bars)), vals, 0.65, bottom=bottom, color=colour, label=f"{cls.replace('_', ' ')}: {meaning}")
        for i, v in enumerate(vals):
            if v >= 0.06:
                ax.text(i, bottom[i] + v / 2, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white")
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_xticks(range(len(bars)), [b[0] for b in bars], fontsize=8)
    ax.set_ylim(0, 1.0)
    ax.set_ylabel("share of test questions")
    ax.set_title("Why answers fail: one class per question")
    _legend_outside(ax)
    return save_figure(fig, path)


def recall_curves(runs: dict, path) -> Path:
    """Retrieval recall@k against k (up to the table's k_max), one curve per run; refrag runs add their
    per-hop recall (documents shown after each hop) as points."""
    fig, ax = plt.subplots(figsize=(7.5, 4))
    for label, m in runs.items():
        curve = m.get("retrieval_recall_curve") or {}
        if curve:
            ks = sorted(curve, key=int)
            ax.plot([int(k) for k in ks], [_nz(curve[k]) for k in ks], "o-", ms=3, label=f"{label} (single hop)")
        hop = m.get("hop_recall") or {}
        hops = sorted(int(k.removeprefix("recall_hop")) for k in hop if k.startswith("recall_hop"))
        if hops:
            per_hop = int(m.get("top_k_per_hop") or 1)
            ax.plot([h * per_hop for h in hops], [_nz(hop[f"recall_hop{h}"]) for h in hops], "s--", ms=6,
                    label=f"{label} (after each hop)")
    ax.set_xlabel("documents retrieved (k)")
    ax.set_ylabel("recall of gold documents")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title("Retrieval recall@k")
    _legend_outside(ax)
    return save_figure(fig, path)


def citation_bars(runs: dict, path) -> Path:
    """Citation precision and recall per run, overall and by hop count, values written on the bars."""
    groups = []  # (label, precision, recall)
    for label, m in runs.items():
        groups.append((f"{label}\nall", m.get("citation_precision"), m.get("citation_recall")))
        for h, b in (m.get("by_hops") or {}).items():
            groups.append((f"{label}\n{h}-hop", b.get("citation_precision"), b.get("citation_recall")))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(groups) + 2.5), 4))
    for j, (name, colour) in enumerate((("precision", "tab:blue"), ("recall", "tab:orange"))):
        xs = [i + (j - 0.5) * 0.38 for i in range(len(groups))]
        vals = [g[1 + j] for g in groups]
        ax.bar(xs, [_nz(v) for v in vals], 0.38, color=colour, label=f"citation {name}")
        for x, v in zip(xs, vals):
            ax.text(x, _nz(v) + 0.01, "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}",
                    ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(groups)), [g[0] for g in groups], fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("share")
    ax.set_title("Citations: cited documents that support the answer (precision),\ngold documents shown that are cited (recall)")
    _legend_outside(ax)
    return save_figure(fig, path)


CONDITION_LABELS = {"retrieval": "with retrieval", "refrag": "with retrieval (REFRAG)", "rag": "RAG model",
                    "no_retrieval": "without retrieval", "oracle": "oracle documents"}


def em_conditions_by_hops(runs: dict, path) -> Path:
    """One panel per run: EM by hop count under each condition it measured (with retrieval, without, oracle)."""
    runs = {k: m for k, m in runs.items() if m.get("em_by_hops")}
    fig, axes = plt.subplots(1, max(1, len(runs)), figsize=(4.2 * max(1, len(runs)) + 2.0, 4), squeeze=False)
    handles = {}
    for ax, (label, m) in zip(axes[0], runs.items()):
        by = m["em_by_hops"]
        hops = sorted(by, key=int)
        conds = list(dict.fromkeys(c for h in hops for c in by[h]))
        width = 0.8 / max(1, len(conds))
        for ci, cond in enumerate(conds):
            xs = [i + (ci - (len(conds) - 1) / 2) * width for i in range(len(hops))]
            vals = [by[h].get(cond) for h in hops]
            bar = ax.bar(xs, [_nz(v) for v in vals], width, color=COLOURS.get(cond),
                         label=CONDITION_LABELS.get(cond, cond))
            handles.setdefault(CONDITION_LABELS.get(cond, cond), bar)
            for x, v in zip(xs, vals):
                ax.text(x, _nz(v) + 0.01, f"{_nz(v):.2f}", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(hops)), [f"{h}-hop" for h in hops])
        ax.set_ylim(0, 1.1)
        ax.set_title(label, fontsize=10)
    axes[0][0].set_ylabel("exact match")
    axes[0][-1].legend(handles.values(), handles.keys(), loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8,
                       frameon=False)
    fig.suptitle("EM by hop count: with retrieval, without it, with oracle documents")
    return save_figure(fig, path)


def trust_plots(metrics: dict, outdir, label: str = "this run") -> list[Path]:
    """An evaluation's own trust figures (failure classes, recall@k, citations) into outdir."""
    outdir = Path(outdir)
    runs = {label: metrics}
    out = [failure_bars(runs, outdir / "failure_classes.png"), citation_bars(runs, outdir / "citations.png")]
    if metrics.get("retrieval_recall_curve") or metrics.get("hop_recall"):
        out.append(recall_curves(runs, outdir / "recall_at_k.png"))
    return out

"""The cross-run report: every run's metrics.json in one table (each row names its KB) and one plot."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from nanochat.common import write_csv

logger = logging.getLogger(__name__)


REPORT_COLUMNS = ["em", "exact_match", "f1", "citation_precision", "citation_recall", "recall@k"]

def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        elif isinstance(v, (int, float, str, bool)) or v is None:
            out[key] = v
    return out

# The report's figures beside metrics.png: file name -> the nanochat.rag.plots function drawing every run's metrics.
FIGURES = {
    "em_by_hops.png": "em_conditions_by_hops",
    "failure_classes.png": "failure_bars",
    "recall_at_k.png": "recall_curves",
    "citations.png": "citation_bars",
}


def trust_figures(metrics_files: list, runs: list, outdir) -> list[Path]:
    """Every run's EM by hop count and condition, failure classes, recall@k curves and citations, one PNG each
    (FIGURES), runs side by side."""
    from nanochat.rag import plots
    by_run = {run: json.loads(Path(p).read_text(encoding="utf-8")) for run, p in zip(runs, metrics_files)}
    return [getattr(plots, fn)(by_run, Path(outdir) / name) for name, fn in FIGURES.items()]


def collect_metrics(metrics_files: list, runs: list, table_path, plot_path):
    """One row per run (flattened metrics.json, kb_id required) -> CSV, and a grouped bar chart of the scores."""
    import pandas as pd
    if len(metrics_files) != len(runs):
        raise ValueError(f"{len(metrics_files)} metrics files for {len(runs)} runs")
    rows = []
    for run, path in zip(runs, metrics_files):
        metrics = json.loads(Path(path).read_text(encoding="utf-8"))
        flat = _flatten(metrics)
        if not flat.get("kb_id"):
            raise ValueError(f"{path}: field 'kb_id' missing: every metrics file must name the knowledge base it used")
        rows.append({"run": run, **flat})
    write_csv(table_path, rows)
    df = pd.DataFrame(rows)
    _plot_scores(df, plot_path)
    logger.info("report: %d runs -> %s, %s", len(df), table_path, plot_path)
    return df

def _plot_scores(df, plot_path) -> None:
    import matplotlib.pyplot as plt
    from nanochat.rag.plots import save_figure
    numeric = [c for c in df.columns if c not in ("run", "kb_id") and df[c].dtype.kind in "if"
               and df[c].between(0, 1).all()]
    preferred = [c for c in numeric if c.split(".")[-1] in REPORT_COLUMNS] or numeric
    cols = preferred[:8]
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(cols) * max(1, len(df))), 4))
    width = 0.8 / max(1, len(df))
    for i, (_, row) in enumerate(df.iterrows()):
        ax.bar([j + i * width for j in range(len(cols))], [row[c] for c in cols], width, label=row["run"])
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cols))], cols, rotation=20, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("score")
    ax.set_title("held-out metrics per run")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)  # outside: hides no bar
    save_figure(fig, plot_path)

"""Benchmark results as a table and plots: per-method scores, PPE/PME, and F1 against trainable ratio."""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai_shpeft.utils import atomic_path, atomic_write_json

__all__ = ["efficiency_score", "summarize", "markdown_table", "write_report"]


def efficiency_score(score: float, ratio: float) -> float:
    """The FPT paper's efficiency scores: ``score * exp(-log10(ratio + 1))``.

    With ``ratio`` the trainable-parameter ratio this is PPE; with the memory ratio to full fine-tuning, PME.

    Args:
        score: the performance (AUC in the FPT paper).
        ratio: the cost ratio.

    Returns:
        the score.
    """
    return score * math.exp(-math.log10(ratio + 1.0))


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(
    results: Sequence[dict[str, Any]], learning_rates: dict[str, float] | None = None
) -> list[dict[str, Any]]:
    """One row per method (SH-PEFT: per budget), averaged over seeds, in run order.

    PME needs full fine-tuning's memory: rows get ``pme = None`` when ``full`` was not run.

    Args:
        results: the workers' records.
        learning_rates: the protocol's per-method rates, for records that do not carry their own.

    Returns:
        rows with the means and standard deviations of test F1, accuracy and AUC, the trainable count and ratio,
        the peak memory and its ratio to full fine-tuning, the training time, and PPE/PME (computed on AUC,
        as in the FPT paper).
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for record in results:
        groups.setdefault(record["label"], []).append(record)
    full_memory = None
    if "full" in groups:
        full_memory = statistics.fmean(r["peak_memory_mb"] for r in groups["full"])
    rows = []
    for label, records in groups.items():
        row: dict[str, Any] = {
            "label": label,
            "method": records[0]["method"],
            "kind": records[0]["kind"],
            "budget": records[0].get("budget"),
            "seeds": sorted(r["seed"] for r in records),
            "trainable": round(statistics.fmean(r["trainable"] for r in records)),
            "ratio": statistics.fmean(r["ratio"] for r in records),
            "peak_memory_mb": statistics.fmean(r["peak_memory_mb"] for r in records),
            "train_seconds": statistics.fmean(r["train_seconds"] for r in records),
            "learning_rate": records[0].get("learning_rate", (learning_rates or {}).get(records[0]["method"])),
        }
        for metric in ("test_f1", "test_accuracy", "test_auc"):
            row[metric], row[f"{metric}_std"] = _mean_std([r[metric] for r in records])
        row["memory_ratio"] = row["peak_memory_mb"] / full_memory if full_memory else None
        row["ppe"] = efficiency_score(row["test_auc"], row["ratio"])
        row["pme"] = efficiency_score(row["test_auc"], row["memory_ratio"]) if row["memory_ratio"] else None
        rows.append(row)
    return rows


def _pm(row: dict[str, Any], metric: str) -> str:
    std = row[f"{metric}_std"]
    return f"{100 * row[metric]:.1f}" + (f" ± {100 * std:.1f}" if len(row["seeds"]) > 1 else "")


def _rate(value: float | None) -> str:
    return f"{value:g}" if value is not None else "–"


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The summary rows as a Markdown table (scores in %, memory in MB)."""
    lines = [
        "| method | kind | lr | trainable | ratio | test macro-F1 | accuracy | AUC | peak memory (MB) | "
        "memory vs full | PPE | PME |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    best = max(r["test_f1"] for r in rows) if rows else None
    for row in rows:
        f1 = _pm(row, "test_f1")
        if row["test_f1"] == best:
            f1 = f"**{f1}**"
        memory_ratio = f"{100 * row['memory_ratio']:.0f}%" if row["memory_ratio"] else "–"
        pme = f"{100 * row['pme']:.1f}" if row["pme"] is not None else "–"
        lines.append(
            f"| {row['label']} | {row['kind']} | {_rate(row['learning_rate'])} | {row['trainable']:,} | "
            f"{100 * row['ratio']:.3f}% | {f1} | "
            f"{_pm(row, 'test_accuracy')} | {_pm(row, 'test_auc')} | {row['peak_memory_mb']:,.0f} | {memory_ratio} | "
            f"{100 * row['ppe']:.1f} | {pme} |"
        )
    return "\n".join(lines) + "\n"


def _save(figure: Any, path: Path) -> Path:
    """Lay out a figure, then save it with :func:`monai_shpeft.plots.save_figure` (atomic PNG, figure closed)."""
    from monai_shpeft.plots import save_figure

    figure.tight_layout()
    return save_figure(figure, path)


def _plot(rows: Sequence[dict[str, Any]], output_dir: Path, title: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    # F1 per method, sorted, with the seeds' standard deviation
    ordered = sorted(rows, key=lambda r: r["test_f1"])
    figure, axis = plt.subplots(figsize=(8, 0.35 * len(ordered) + 1.5))
    colors = {"reference": "#888888", "selective": "#1f77b4", "additive": "#2ca02c", "prompt": "#9467bd"}
    colors.update({"selective+additive": "#17becf", "side network": "#ff7f0e"})
    bars = [100 * r["test_f1"] for r in ordered]
    errors = [100 * r["test_f1_std"] for r in ordered]
    axis.barh(
        [r["label"] for r in ordered], bars, xerr=errors, color=[colors.get(r["kind"], "#333333") for r in ordered]
    )
    for position, value in enumerate(bars):
        axis.text(value + 0.5, position, f"{value:.1f}", va="center", fontsize=8)
    axis.set_xlabel("test macro-F1 (%)")
    axis.set_xlim(0, min(100, max(bars) + 12))
    axis.set_title(f"{title}\nmacro-F1 per method", fontsize=10)
    written.append(_save(figure, output_dir / "f1_per_method.png"))

    # the paper's Fig. 4: F1 against trainable ratio, SH-PEFT as a line over its budgets
    figure, axis = plt.subplots(figsize=(7, 4.5))
    shpeft = sorted((r for r in rows if r["method"] == "shpeft"), key=lambda r: r["ratio"])
    if shpeft:
        axis.plot(
            [100 * r["ratio"] for r in shpeft],
            [100 * r["test_f1"] for r in shpeft],
            "o-",
            color="#d62728",
            label="SH-PEFT (budgets)",
        )
        for row in shpeft:
            axis.annotate(
                row["label"],
                (100 * row["ratio"], 100 * row["test_f1"]),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
    for row in rows:
        if row["method"] == "shpeft":
            continue
        axis.scatter(100 * row["ratio"], 100 * row["test_f1"], color=colors.get(row["kind"], "#333333"))
        axis.annotate(
            row["label"],
            (100 * row["ratio"], 100 * row["test_f1"]),
            fontsize=7,
            xytext=(3, 3),
            textcoords="offset points",
        )
    axis.set_xscale("log")
    axis.set_xlabel("trainable parameters (% of the network, log scale)")
    axis.set_ylabel("test macro-F1 (%)")
    axis.set_title(f"{title}\nmacro-F1 against trainable ratio", fontsize=10)
    axis.grid(alpha=0.3)
    if shpeft:
        axis.legend(loc="lower right", fontsize=8)
    written.append(_save(figure, output_dir / "f1_vs_trainable_ratio.png"))
    return written


def write_report(
    results: Sequence[dict[str, Any]],
    output_dir: str | os.PathLike,
    context: dict[str, Any],
    title: str = "benchmark",
) -> dict[str, Path]:
    """Write ``results.json``, ``results.md`` and the two plots.

    Args:
        results: the workers' records.
        output_dir: destination folder.
        context: what produced them (command, protocol, dataset, backbone, host), saved with the results.
        title: title of the plots and the Markdown file.

    Returns:
        the written files by kind.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    rows = summarize(results, context.get("protocol", {}).get("learning_rates"))
    atomic_write_json(output_dir / "results.json", {**context, "summary": rows, "runs": list(results)})
    protocol = context.get("protocol", {})
    text = [f"# {title}", ""]
    if context.get("command"):
        text += ["Command:", "", "```", context["command"], "```", ""]
    if protocol.get("description"):
        text += [protocol["description"], ""]
    text += [markdown_table(rows), ""]
    text += [
        "Scores are on the held-out test split (macro-F1 is the SH-PEFT paper's metric, AUC the FPT paper's). "
        "`ratio` is trainable parameters over all parameters of the trained network (head included). PPE and PME "
        "are the FPT paper's `AUC * exp(-log10(r + 1))` with r the trainable ratio or the peak-memory ratio to full "
        "fine-tuning. Peak memory: " + str(context.get("memory_source", "see results.json")) + ". Training times are "
        "in results.json (`train_seconds`); compare them only within one quiet run on one machine.",
        "",
    ]
    markdown = output_dir / "results.md"
    with atomic_path(markdown) as tmp:
        tmp.write_text("\n".join(text), encoding="utf-8")
    plots = _plot(rows, output_dir, title) if rows else []
    return {"json": output_dir / "results.json", "markdown": markdown, **{p.stem: p for p in plots}}

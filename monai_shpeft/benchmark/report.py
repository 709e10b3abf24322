"""Benchmark results as tables and plots: per-method scores over seeds and folds, PPE/PME, F1 against trainable
ratio, and paired per-fold differences against a reference method (the linear probe)."""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai_shpeft.utils import atomic_path, atomic_write_json

__all__ = [
    "METRICS",
    "efficiency_score",
    "summarize",
    "markdown_table",
    "default_reference",
    "paired_differences",
    "paired_table",
    "write_report",
]

#: the test metrics every record carries, and their names in tables
METRICS = {"test_f1": "macro-F1", "test_accuracy": "accuracy", "test_auc": "AUC"}

#: the reference of the paired differences when none is given: the first of these that was run
_REFERENCES = ("linear_probe", "linear")


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
    """One row per method (SH-PEFT: per budget), averaged over seeds and folds, in run order.

    PME needs full fine-tuning's memory: rows get ``pme = None`` when ``full`` was not run.

    Args:
        results: the workers' records.
        learning_rates: the protocol's per-method rates, for records that do not carry their own.

    Returns:
        rows with the means and standard deviations (over every seed and fold) of test F1, accuracy and AUC, the
        number of runs, the seeds and folds, the trainable count and ratio, the peak memory and its ratio to full
        fine-tuning, the training time, PPE/PME (computed on AUC, as in the FPT paper), and how many runs kept the
        warmed head alone (``kept_warmup``; ``None`` when the records do not say).
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
            "n": len(records),
            "seeds": sorted({r["seed"] for r in records}),
            "folds": sorted({r["fold"] for r in records if r.get("fold") is not None}),
            "trainable": round(statistics.fmean(r["trainable"] for r in records)),
            "ratio": statistics.fmean(r["ratio"] for r in records),
            "peak_memory_mb": statistics.fmean(r["peak_memory_mb"] for r in records),
            "train_seconds": statistics.fmean(r["train_seconds"] for r in records),
            "learning_rate": records[0].get("learning_rate", (learning_rates or {}).get(records[0]["method"])),
        }
        for metric in METRICS:
            row[metric], row[f"{metric}_std"] = _mean_std([r[metric] for r in records])
        known = [r["kept_warmup"] for r in records if r.get("kept_warmup") is not None]
        row["kept_warmup"] = sum(bool(k) for k in known) if known else None
        row["memory_ratio"] = row["peak_memory_mb"] / full_memory if full_memory else None
        row["ppe"] = efficiency_score(row["test_auc"], row["ratio"])
        row["pme"] = efficiency_score(row["test_auc"], row["memory_ratio"]) if row["memory_ratio"] else None
        rows.append(row)
    return rows


def _pm(row: dict[str, Any], metric: str) -> str:
    std = row[f"{metric}_std"]
    return f"{100 * row[metric]:.1f}" + (f" ± {100 * std:.1f}" if row.get("n", len(row["seeds"])) > 1 else "")


def _rate(value: float | None) -> str:
    return f"{value:g}" if value is not None else "–"


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The summary rows as a Markdown table (scores in %, memory in MB; ``runs``: seeds x folds averaged)."""
    lines = [
        "| method | kind | lr | trainable | ratio | test macro-F1 | accuracy | AUC | peak memory (MB) | "
        "memory vs full | PPE | PME | runs | kept warm-up |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    best = max(r["test_f1"] for r in rows) if rows else None
    for row in rows:
        f1 = _pm(row, "test_f1")
        if row["test_f1"] == best:
            f1 = f"**{f1}**"
        memory_ratio = f"{100 * row['memory_ratio']:.0f}%" if row["memory_ratio"] else "–"
        pme = f"{100 * row['pme']:.1f}" if row["pme"] is not None else "–"
        runs = row.get("n", len(row["seeds"]))
        kept = f"{row['kept_warmup']}/{runs}" if row.get("kept_warmup") is not None else "–"
        lines.append(
            f"| {row['label']} | {row['kind']} | {_rate(row['learning_rate'])} | {row['trainable']:,} | "
            f"{100 * row['ratio']:.3f}% | {f1} | "
            f"{_pm(row, 'test_accuracy')} | {_pm(row, 'test_auc')} | {row['peak_memory_mb']:,.0f} | {memory_ratio} | "
            f"{100 * row['ppe']:.1f} | {pme} | {runs} | {kept} |"
        )
    return "\n".join(lines) + "\n"


def default_reference(results: Sequence[dict[str, Any]]) -> str | None:
    """The reference of the paired differences: ``linear_probe`` when it was run, else ``linear``, else ``None``."""
    labels = {r["label"] for r in results}
    return next((name for name in _REFERENCES if name in labels), None)


def paired_differences(
    results: Sequence[dict[str, Any]], reference: str | None = None
) -> tuple[str | None, list[dict[str, Any]]]:
    """Per method, the test scores minus the reference's on the same split (same seed and fold).

    Pairing by split removes what the splits share (an easy or a hard test fold moves every method alike), so a
    small but consistent gain shows even when it is below the spread over folds.

    Args:
        results: the workers' records.
        reference: label of the reference method; ``None``: :func:`default_reference`.

    Returns:
        ``(reference, rows)``: one row per other method, in run order, with the ``pairs`` (``seed``, ``fold`` and
        the difference of each metric), their count ``n``, and per metric of :data:`METRICS` the mean
        (``<metric>_diff``) and standard deviation (``<metric>_diff_std``) of the differences and the number of
        pairs where the method scores higher (``<metric>_wins``). Methods without a pair are left out; no rows
        without a reference.

    Raises:
        ValueError: when ``reference`` names no method of ``results``.
    """
    labels = list(dict.fromkeys(r["label"] for r in results))
    if reference is None:
        reference = default_reference(results)
        if reference is None:
            return None, []
    elif reference not in labels:
        raise ValueError(f"reference {reference!r} is not among the methods run: {', '.join(labels)}.")
    by_split: dict[str, dict[tuple[int, int | None], dict[str, Any]]] = {}
    for record in results:
        by_split.setdefault(record["label"], {})[(record["seed"], record.get("fold"))] = record
    base = by_split[reference]
    rows = []
    for label in labels:
        if label == reference:
            continue
        splits = [split for split in by_split[label] if split in base]
        if not splits:
            continue
        pairs = [
            {
                "seed": seed,
                "fold": fold,
                **{m: by_split[label][(seed, fold)][m] - base[(seed, fold)][m] for m in METRICS},
            }
            for seed, fold in sorted(splits, key=lambda split: (split[0], -1 if split[1] is None else split[1]))
        ]
        row: dict[str, Any] = {"label": label, "method": by_split[label][splits[0]]["method"], "reference": reference}
        row["n"] = len(pairs)
        for metric in METRICS:
            differences = [pair[metric] for pair in pairs]
            row[f"{metric}_diff"], row[f"{metric}_diff_std"] = _mean_std(differences)
            row[f"{metric}_wins"] = sum(d > 0 for d in differences)
        row["pairs"] = pairs
        rows.append(row)
    return reference, rows


def _signed(row: dict[str, Any], metric: str) -> str:
    text = f"{100 * row[f'{metric}_diff']:+.1f}"
    return text + (f" ± {100 * row[f'{metric}_diff_std']:.1f}" if row["n"] > 1 else "")


def paired_table(rows: Sequence[dict[str, Any]], reference: str) -> str:
    """The paired differences as a Markdown table (percentage points; wins out of the pairs)."""
    header = " | ".join(f"Δ {name} | wins" for name in METRICS.values())
    lines = [
        f"| method | pairs | {header} |",
        "| --- | ---: |" + " ---: | ---: |" * len(METRICS),
    ]
    for row in rows:
        cells = " | ".join(f"{_signed(row, m)} | {row[f'{m}_wins']}/{row['n']}" for m in METRICS)
        lines.append(f"| {row['label']} | {row['n']} | {cells} |")
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


def _spread(count: int, width: float = 0.3) -> list[float]:
    """``count`` offsets evenly over ``width`` around 0: equal differences of several splits stay apart."""
    if count < 2:
        return [0.0] * count
    return [width * (i / (count - 1) - 0.5) for i in range(count)]


def _plot_paired(rows: Sequence[dict[str, Any]], reference: str, output_dir: Path, title: str) -> Path:
    """One dot per paired split (seed, fold), one row per method, one panel per metric, a zero line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(
        1, len(METRICS), figsize=(4 * len(METRICS), 0.4 * len(rows) + 1.8), sharey=True, squeeze=False
    )
    positions = range(len(rows))
    for axis, (metric, name) in zip(axes[0], METRICS.items()):
        axis.axvline(0.0, color="#444444", linewidth=1)
        for position, row in zip(positions, rows):
            differences = [100 * pair[metric] for pair in row["pairs"]]
            heights = [position + offset for offset in _spread(len(differences))]
            axis.scatter(differences, heights, s=14, color="#1f77b4", alpha=0.8, zorder=3)
            axis.errorbar(
                100 * row[f"{metric}_diff"],
                position,
                xerr=100 * row[f"{metric}_diff_std"],
                fmt="D",
                color="#d62728",
                markersize=5,
                capsize=3,
                zorder=4,
            )
        axis.set_xlabel(f"Δ test {name} (points)")
        axis.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(list(positions), [row["label"] for row in rows])
    axes[0][0].invert_yaxis()
    figure.suptitle(
        f"{title}\npaired differences against {reference} per split (dots), mean ± std (diamonds)", fontsize=10
    )
    return _save(figure, output_dir / "paired_differences.png")


def precision_line(results: Sequence[Mapping[str, Any]]) -> str:
    """One sentence on the precision the runs trained in (each record's ``precision``, or not recorded)."""
    counts: dict[str, int] = {}
    for record in results:
        name = record.get("precision") or "not recorded"
        counts[name] = counts.get(name, 0) + 1
    parts = [f"{name} in {count} run{'s' if count != 1 else ''}" for name, count in sorted(counts.items())]
    return "Precision the runs trained in: " + "; ".join(parts) + "."


def write_report(
    results: Sequence[dict[str, Any]],
    output_dir: str | os.PathLike,
    context: dict[str, Any],
    title: str = "benchmark",
    reference: str | None = None,
) -> dict[str, Path]:
    """Write ``results.json``, ``results.md``, the two plots and, with a reference, the paired differences' plot.

    Args:
        results: the workers' records.
        output_dir: destination folder.
        context: what produced them (command, protocol, dataset, backbone, host), saved with the results.
        title: title of the plots and the Markdown file.
        reference: label of the method the paired differences are taken against (``None``:
            :func:`default_reference`).

    Returns:
        the written files by kind.

    Raises:
        ValueError: when ``reference`` names no method of ``results``.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    rows = summarize(results, context.get("protocol", {}).get("learning_rates"))
    reference, paired = paired_differences(results, reference)
    atomic_write_json(
        output_dir / "results.json",
        {**context, "summary": rows, "reference": reference, "paired_differences": paired, "runs": list(results)},
    )
    protocol = context.get("protocol", {})
    text = [f"# {title}", ""]
    if context.get("command"):
        text += ["Command:", "", "```", context["command"], "```", ""]
    if protocol.get("description"):
        text += [protocol["description"], ""]
    text += [precision_line(results), ""]
    text += [markdown_table(rows), ""]
    text += [
        "Means ± standard deviations over every run of a method (`runs`: seeds x folds). `kept warm-up`: runs whose "
        "best validation was the warmed head alone (epoch 0, before any fine-tuning step), so the test used it.",
        "",
    ]
    if paired and reference is not None:
        text += [f"## Paired differences against {reference}", "", paired_table(paired, reference), ""]
        text += [
            f"Each method's test score minus {reference}'s on the same split (seed and fold), in percentage points: "
            "mean ± standard deviation over the pairs, and the pairs where the method scores higher. Per split: "
            "`paired_differences.png`.",
            "",
        ]
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
    if paired and reference is not None:
        plots.append(_plot_paired(paired, reference, output_dir, title))
    return {"json": output_dir / "results.json", "markdown": markdown, **{p.stem: p for p in plots}}

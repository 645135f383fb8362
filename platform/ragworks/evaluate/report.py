"""The evaluation report: JSON for machines, Markdown and a PNG chart for people."""

from __future__ import annotations

import json
from pathlib import Path

from rich.table import Table


def metrics_table(metrics: dict[str, dict[str, float]], title: str = "retrieval") -> Table:
    names = list(next(iter(metrics.values())))
    table = Table(title=title)
    table.add_column("mode")
    for n in names:
        table.add_column(n, justify="right")
    for mode, values in metrics.items():
        table.add_row(mode, *(f"{values[n]:.4f}" for n in names))
    return table


def stage_rows(manifests: dict[str, dict]) -> list[dict]:
    """Each finished stage's time, the work its StageDef names (`work`) and its rate: where a job's hours go."""
    from ..stage import registry

    stages = registry()
    rows = []
    for name, m in manifests.items():
        if "seconds" not in m or name not in stages:
            continue
        row = {"stage": name, "seconds": m["seconds"]}
        stage = stages[name]
        out = stage.outputs.from_manifest(m)
        key, unit = stage.work or (None, None)
        count = out.counts.get(key)
        resumed = getattr(out, "resumed_from_rows", 0)
        if isinstance(count, int):
            count -= resumed  # a resumed stage's seconds are its own run's: so is its work
            row.update(work=count, unit=unit, per_s=round(count / max(m["seconds"], 1e-9), 3))
            if resumed:
                row["unit"] += f" (+{resumed:,} before a restart)"
        rows.append(row)
    return rows


def markdown(report: dict) -> str:
    metrics = report["metrics"]
    names = list(next(iter(metrics.values())))
    lines = [f"# Evaluation: {report['dataset_name']} ({report['split']})", "",
             f"{report['queries']} judged queries; corpus: {report['chunks']:,} chunks; "
             f"embedder: `{report['embedder']}`.", "",
             "| mode | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    lines += [f"| {mode} | " + " | ".join(f"{v[n]:.4f}" for n in names) + " |" for mode, v in metrics.items()]
    lines += ["", "![metrics](report.png)", ""]
    gen = report.get("generation")
    if gen:
        names = [n for n in next(iter(gen.values())) if n not in ("examples", "errors")]
        lines += [f"## Answers: {next(iter(gen.values()))['examples']} held-out RAG examples", "",
                  "| generator | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
        lines += [f"| {label} | " + " | ".join(f"{v[n]:.4f}" for n in names) + " |" for label, v in gen.items()]
        lines += ["", "citation_accuracy: cites the oracle chunk when it is in the context; abstention: says the context "
                  "lacks the answer when the oracle is missing; answer_f1: words shared with the reference answer.",
                  "", "![answers](answers.png)", ""]
    if report.get("stages"):
        total = sum(r["seconds"] for r in report["stages"])
        lines += [f"## Stages: {total / 60:.1f} minutes in all", "",
                  "| stage | minutes | work | per second |", "|---|---:|---:|---:|"]
        lines += [f"| {r['stage']} | {r['seconds'] / 60:.1f} | " + (f"{r['work']:,} {r['unit']} | {r['per_s']:.2f} |"
                                                                   if "work" in r else "| |") for r in report["stages"]]
    return "\n".join(lines) + "\n"


def chart(metrics: dict[str, dict[str, float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    modes, names = list(metrics), list(next(iter(metrics.values())))
    x = np.arange(len(names))
    width = 0.8 / len(modes)
    fig, ax = plt.subplots(figsize=(8.5, 4))
    for i, mode in enumerate(modes):
        bars = ax.bar(x + i * width - 0.4 + width / 2, [metrics[mode][n] for n in names], width, label=mode)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks(x, names)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)  # beside the axes: bars reach the top
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(report: dict, folder: Path) -> dict[str, str]:
    paths = {"json": folder / "report.json", "markdown": folder / "report.md", "chart": folder / "report.png"}
    paths["json"].write_text(json.dumps(report, indent=2))
    paths["markdown"].write_text(markdown(report))
    chart(report["metrics"], paths["chart"], f"{report['dataset_name']} ({report['split']})")
    if report.get("generation"):
        paths["answers_chart"] = folder / "answers.png"
        gen = {label: {n: v for n, v in m.items() if n not in ("examples", "errors")}
               for label, m in report["generation"].items()}
        chart(gen, paths["answers_chart"], "generator: held-out RAG examples")
    return {k: str(v) for k, v in paths.items()}

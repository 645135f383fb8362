"""The evaluation report: JSON for machines; Markdown, PNG charts and one self-contained HTML page for people.

report.html carries its charts inline (data: URIs) and loads nothing else, so it
opens from a laptop's disk, an object store or a CI artifact without a network.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from rich.table import Table

from ..progress import table as progress_table


COUNTS = ("examples", "errors")  # counts among the answers' metrics


def metrics_table(metrics: dict[str, dict[str, float]], title: str = "retrieval") -> Table:
    """Modes as rows, metrics as columns; with more metrics than fit 80 columns (the answers' seven), metrics as
    rows and modes as columns instead, so no header is cut. Counts print as integers."""
    counts = [n for n in COUNTS if len({str(values.get(n)) for values in metrics.values()}) == 1
              and n in next(iter(metrics.values()))]
    if counts:  # the same for every column: said once, in the title
        first = next(iter(metrics.values()))
        title += " (" + ", ".join(f"{n} {first[n]:,}" for n in counts) + ")"
        metrics = {k: {n: v for n, v in values.items() if n not in counts} for k, values in metrics.items()}
    names = list(next(iter(metrics.values())))
    cell = lambda v: f"{v:,}" if isinstance(v, int) else f"{v:.4f}"  # noqa: E731
    table = progress_table(title)
    if len(names) <= 4:
        table.add_column("mode")
        for n in names:
            table.add_column(n, justify="right")
        for mode, values in metrics.items():
            table.add_row(mode, *(cell(values[n]) for n in names))
        return table
    table.add_column("metric")
    for mode in metrics:
        table.add_column(mode, justify="right")
    for n in names:
        table.add_row(n, *(cell(values[n]) for values in metrics.values()))
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


def gate_rows(gate: dict) -> tuple[list[str], list[list], str]:
    """The ship gate's figures (queries, mode, base, tuned, gain) and its choice in one sentence."""
    rows = []
    for name, labels in gate["scores"].items():
        for mode in gate["gains"]:
            base, tuned = labels[f"{mode} (base)"]["ndcg@10"], labels[f"{mode} (tuned)"]["ndcg@10"]
            rows.append([name + (" (decides)" if name == gate["decided_on"] else ""), mode, f"{base:.4f}",
                         f"{tuned:.4f}", f"{tuned - base:+.4f}"])
    gains = ", ".join(f"{m} {g:+.4f}" for m, g in gate["gains"].items())
    why = ("forced by gate.serve" if gate["forced"] else
           f"tuned gains {gains} nDCG@10 on the {gate['decided_on']} queries; it needs more than "
           f"{gate['min_gain']:g} in every mode")
    return (["queries", "mode", "base nDCG@10", "tuned nDCG@10", "gain"], rows,
            f"Served: the {gate['winner']} index ({why}).")


def markdown(report: dict) -> str:
    metrics = report["metrics"]
    names = list(next(iter(metrics.values())))
    lines = [f"# Evaluation: {report['dataset_name']} ({report['split']})", "",
             f"{report['queries']} judged queries; corpus: {report['chunks']:,} chunks; "
             f"embedder: `{report['embedder']}`.", "",
             "| mode | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    lines += [f"| {mode} | " + " | ".join(f"{v[n]:.4f}" for n in names) + " |" for mode, v in metrics.items()]
    lines += ["", "![metrics](report.png)", ""]
    if report.get("gate"):
        head, rows, choice = gate_rows(report["gate"])
        lines += ["## Ship gate", "", choice, "", "| " + " | ".join(head) + " |", "|---|---|" + "---:|" * 3]
        lines += ["| " + " | ".join(r) + " |" for r in rows] + [""]
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


def query_samples(kept: str, dropped: str, per_group: int = 4) -> dict[str, list[dict]]:
    """The first synthetic queries (by chunk id) that were kept, and that each filter dropped: what a reader
    checks the filters against. Reads files until every group is full, never the whole set."""
    from ..incremental import read_columns

    groups: dict[str, list[dict]] = {}
    for name, folder in (("kept", kept), ("dropped", dropped)):
        try:
            files = list(read_columns(folder, ["id", "query", "dropped_by"]))
        except (FileNotFoundError, OSError):
            continue
        for _, t in sorted(files, key=lambda ft: str(ft[0])):
            for row in t.sort_by("id").to_pylist():
                group = "kept" if name == "kept" else f"dropped by {row['dropped_by']}"
                if len(groups.setdefault(group, [])) < per_group:
                    groups[group].append({"chunk": row["id"], "query": row["query"]})
    return groups


def _table(head: list[str], rows: list[list], numeric_from: int = 1) -> str:
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td{' class=n' if i >= numeric_from else ''}>{html.escape(str(v))}</td>"
                                    for i, v in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>"


def _metric_rows(metrics: dict[str, dict]) -> tuple[list[str], list[list]]:
    names = [n for n in next(iter(metrics.values())) if n not in ("examples", "errors")]
    return ["mode"] + names, [[mode] + [f"{v[n]:.4f}" for n in names] for mode, v in metrics.items()]


def _image(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def html_page(report: dict, charts: dict[str, Path]) -> str:
    """report.html: retrieval (base vs tuned), answers, every stage's time and rate, sample synthetic queries."""
    title = f"ragworks evaluation: {report['dataset_name']} ({report['split']})"
    parts = [f"<h1>{html.escape(title)}</h1>",
             f"<p>{report['queries']} judged queries; corpus: {report['chunks']:,} chunks; embedder: "
             f"<code>{html.escape(report['embedder'])}</code>.</p>",
             "<h2>Retrieval</h2>", _table(*_metric_rows(report["metrics"])), _image(charts["chart"], "retrieval chart")]
    if report.get("gate"):
        head, rows, choice = gate_rows(report["gate"])
        parts += ["<h2>Ship gate</h2>", f"<p>{html.escape(choice)}</p>", _table(head, rows, numeric_from=2)]
    if report.get("generation"):
        head, rows = _metric_rows(report["generation"])
        parts += ["<h2>Answers</h2>", _table(["generator"] + head[1:], rows),
                  "<p>citation_accuracy: cites the oracle chunk when it is in the context; abstention: says the "
                  "context lacks the answer when the oracle is missing; answer_f1: words shared with the reference.</p>",
                  _image(charts["answers_chart"], "answers chart")]
    if report.get("stages"):
        total = sum(r["seconds"] for r in report["stages"])
        parts += [f"<h2>Stages: {total / 60:.1f} minutes in all</h2>",
                  _table(["stage", "seconds", "work", "per second"],
                         [[r["stage"], f"{r['seconds']:.1f}", f"{r['work']:,} {r['unit']}" if "work" in r else "",
                           f"{r['per_s']:.2f}" if "work" in r else ""] for r in report["stages"]])]
    if report.get("query_samples"):
        parts.append("<h2>Synthetic queries: kept, and dropped with the filter that dropped them</h2>")
        for group, rows in report["query_samples"].items():
            parts += [f"<h3>{html.escape(group)}</h3>",
                      _table(["chunk", "query"], [[r["chunk"], r["query"]] for r in rows], numeric_from=2)]
    style = ("body{font:15px/1.45 system-ui,sans-serif;max-width:980px;margin:24px auto;padding:0 16px;color:#1d2330}"
             "table{border-collapse:collapse;margin:8px 0 16px}th,td{border:1px solid #d0d5de;padding:4px 10px;"
             "text-align:left}td.n{text-align:right;font-variant-numeric:tabular-nums}th{background:#eef1f6}"
             "img{max-width:100%}h1{font-size:22px}h2{font-size:18px;margin-top:28px}h3{font-size:15px}")
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n")


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
    paths["html"] = folder / "report.html"
    paths["html"].write_text(html_page(report, paths))
    return {k: str(v) for k, v in paths.items()}

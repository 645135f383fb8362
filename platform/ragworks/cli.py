"""`ragworks`: run job specs and evaluate retrieval from the command line."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from .config import SpecError, load_spec, parse_spec

app = typer.Typer(
    help="ragworks: raw corpus in, tuned, evaluated and served RAG stack out, on Ray.\n\n"
    "Start with:  ragworks run jobs/quickstart.yaml",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
)
console = Console()

STAGES_HELP = ("Stage to re-run even if its manifest matches (corpus, index, synthesize, filters, negatives, "
               "train_retriever, index_tuned, rag_examples, train_generator, evaluate, or all); repeatable.")


def _fail(err: Exception) -> None:
    console.print(f"[red]error:[/] {err}", highlight=False)
    raise typer.Exit(2)


def _run(spec, workdir, force, address) -> None:
    from .runner import run_job

    try:
        manifests = run_job(spec, workdir=workdir, force=force, address=address, console=console)
    except (SpecError, FileNotFoundError) as err:
        _fail(err)
    console.print(f"[green]done[/]: workdir {Path(workdir or spec.resolved_workdir()).resolve()} "
                  f"({', '.join(manifests)})")


@app.command()
def run(
    job: Path = typer.Argument(..., help="Job spec (YAML), e.g. jobs/quickstart.yaml", show_default=False),
    workdir: Optional[Path] = typer.Option(None, help="Where artifacts go (default: the spec's workdir, else runs/NAME)"),
    address: Optional[str] = typer.Option(None, help="Ray cluster address ('auto', ray://HOST:10001); default: embedded local Ray"),
    force: list[str] = typer.Option([], help=STAGES_HELP),
) -> None:
    """Run the stages a job spec enables, in order.

    Each stage writes its artifacts and a manifest.json under WORKDIR/STAGE; a
    re-run skips every stage whose config and inputs are unchanged. The spec is
    checked before any work starts: unknown keys, wrong types and missing files
    are reported with the field's name.
    """
    try:
        spec = load_spec(job)
    except SpecError as err:
        _fail(err)
    _run(spec, workdir, force, address)


@app.command("eval")
def eval_(
    dataset: Path = typer.Option(..., help="BEIR folder: corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv", show_default=False),
    split: str = typer.Option("test", help="Which qrels/SPLIT.tsv to score"),
    embedder: str = typer.Option("base", help="'base' (bundled all-MiniLM-L6-v2), a Hugging Face id or a local path"),
    max_tokens: Optional[int] = typer.Option(None, help="Chunk size in tokens (default: one chunk per document, as BEIR does)"),
    workdir: Optional[Path] = typer.Option(None, help="Where artifacts go (default: runs/eval-DATASET)"),
    address: Optional[str] = typer.Option(None, help="Ray cluster address; default: embedded local Ray"),
    force: list[str] = typer.Option([], help=STAGES_HELP),
) -> None:
    """Evaluate retrieval on a BEIR dataset: dense, full-text and hybrid.

    The corpus goes through the same corpus and index stages as any job, then
    nDCG@10, Recall@100 and MRR@10 are reported (report.json, report.md,
    report.png under WORKDIR/evaluate).
    """
    name = f"eval-{dataset.resolve().name}"
    data = {
        "name": name,
        "corpus": {"source": {"format": "beir", "path": str(dataset)}, "chunking": {"max_tokens": max_tokens}},
        "index": {"embedder": embedder},
        "evaluate": {"dataset": str(dataset), "split": split},
    }
    try:
        spec = parse_spec(data, source=f"--dataset {dataset}")
    except SpecError as err:
        _fail(err)
    _run(spec, workdir, force, address)


@app.command()
def serve(
    target: Path = typer.Argument(..., help="A job spec (its workdir is served) or a workdir", show_default=False),
    host: str = typer.Option("127.0.0.1", help="HTTP host; 0.0.0.0 exposes the API to the network"),
    port: int = typer.Option(8000, help="HTTP port"),
    generator: Optional[str] = typer.Option(None, help="Chat model: 'bundled:NAME', a Hugging Face id or a path "
                                            "[default: the job's trained generator (base + LoRA adapter), else the "
                                            "bundled SmolLM2]"),
    max_tokens: int = typer.Option(128, help="Answer length when a request names none"),
    api_key_env: str = typer.Option("RAGWORKS_API_KEY", help="Environment variable with the API key; unset: no auth"),
    address: Optional[str] = typer.Option(None, help="Ray cluster address; default: embedded local Ray"),
) -> None:
    """Serve a job's index on Ray Serve: search, embeddings and RAG chat.

    Endpoints: POST /v1/search, POST /v1/embeddings and POST /v1/chat/completions
    (OpenAI-compatible; the `openai` client works with base_url=http://HOST:PORT/v1),
    GET /healthz. The tuned index and the tuned generator are served when the job
    made them; a re-run that writes a new index goes live without a restart. For per-deployment replicas and
    autoscaling use `serve run serving/rag.yaml` instead.
    """
    import ray
    from ray import serve as ray_serve

    from .serve import build

    workdir = target
    if target.is_file():
        try:
            workdir = Path(load_spec(target).resolved_workdir())
        except SpecError as err:
            _fail(err)
    try:
        application = build({"workdir": str(workdir), "generator": generator, "max_tokens": max_tokens,
                             "api_key_env": api_key_env})
    except (FileNotFoundError, ValueError) as err:
        _fail(err)
    if address:
        ray.init(address=address)
    else:
        ray.init(dashboard_host="127.0.0.1")  # the dashboard stays on loopback
    ray_serve.start(http_options={"host": host, "port": port})
    console.print(f"serving {Path(workdir).resolve()} at http://{host}:{port} (Ctrl-C stops)")
    ray_serve.run(application, name="rag", route_prefix="/", blocking=True)


def main() -> None:
    app(prog_name="ragworks")


if __name__ == "__main__":
    sys.exit(main())

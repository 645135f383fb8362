"""`ragworks`: run job specs and evaluate retrieval from the command line."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from .config import SpecError, load_spec, parse_spec
from .stage import StageError, registry, run_order

app = typer.Typer(
    help="ragworks: raw corpus in, tuned, evaluated and served RAG stack out, on Ray.\n\n"
    "Start with:  ragworks run jobs/quickstart.yaml",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
)
console = Console(soft_wrap=True)  # a log line stays one line (a terminal wraps it itself)

STAGES_HELP = (f"Stage to re-run even if its manifest matches ({', '.join(run_order())}, or all), and every stage "
               "after it that reads it; repeatable.")
VERBOSE_HELP = ("Print Ray's own log lines too (by default: Ray Data's progress bars in a terminal, else one line per "
                "running dataset after 30 s, then each time its run time doubles; Ray's logs are always in its session folder)")
DEBUG_HELP = "On a failed stage, print its traceback here too (it is always written to WORKDIR/STAGE/error.log)"


def stages_help() -> str:
    """The stages a spec can enable, in the order they run: one line each, from the registry."""
    stages = registry()
    return "\n\n".join(f"[bold]{name}[/]: {stages[name].help}" for name in run_order())


SET_HELP = "Override a spec field, KEY=VALUE with a dotted key and a YAML value (synthesize.limit=16); repeatable"
FULL_HELP = ("Rebuild the stages that re-run from scratch instead of updating their last output with what changed "
             "(a corpus delta)")
ADDRESS_HELP = "Ray Jobs API of the cluster's head [default: $RAY_ADDRESS, else a cluster started on this machine]"


def _seconds(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:,.0f} s" if seconds >= 10 else f"{seconds:.1f} s"


def _fail(err: Exception) -> None:
    console.print(f"[red]error:[/] {err}", highlight=False)
    raise typer.Exit(2)


def _run(spec, workdir, force, address, debug: bool = False, job: Path | None = None, verbose: bool = False,
         full: bool = False) -> None:
    from .progress import configure
    from .runner import run_job

    configure(console, verbose)

    try:
        manifests = run_job(spec, workdir=workdir, force=force, address=address, console=console, full=full)
    except (SpecError, FileNotFoundError) as err:
        _fail(err)
    except StageError as err:
        if debug:
            import traceback

            console.print("".join(traceback.format_exception(err.__cause__ or err)), markup=False, highlight=False)
        console.print(f"[red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    took = ", ".join(f"{name} {_seconds(m.get('seconds'))}" for name, m in manifests.items())
    console.print(f"[green]done[/]: workdir {spec.workdir_location(workdir)} ({took})", highlight=False)
    if "index" in manifests:
        target = job if job is not None and workdir is None else spec.workdir_location(workdir)
        console.print(f"serve it: [bold]ragworks serve {target}[/], then open the playground at "
                      "http://127.0.0.1:8000/ (OpenAI base_url http://127.0.0.1:8000/v1)", highlight=False)


@app.command()
def run(
    job: Path = typer.Argument(..., help="Job spec (YAML), e.g. jobs/quickstart.yaml", show_default=False),
    workdir: Optional[str] = typer.Option(None, help="Where artifacts go: a folder, s3://BUCKET/PREFIX or "
                                          "gs://BUCKET/PREFIX (default: the spec's workdir, else runs/NAME)"),
    address: Optional[str] = typer.Option(None, help="Ray cluster address ('auto', ray://HOST:10001); default: embedded local Ray"),
    force: list[str] = typer.Option([], help=STAGES_HELP),
    full: bool = typer.Option(False, "--full", help=FULL_HELP),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP),
    verbose: bool = typer.Option(False, "--verbose", help=VERBOSE_HELP),
) -> None:
    try:
        spec = load_spec(job, set_)
    except SpecError as err:
        _fail(err)
    _run(spec, workdir, force, address, debug, job=job if not set_ else None, verbose=verbose, full=full)


run.__doc__ = f"""Run the stages a job spec enables, in order.

Each stage writes its artifacts and a manifest.json under WORKDIR/STAGE; a
re-run skips every stage whose config and inputs are unchanged, and says why
it re-runs one. When the corpus changed (files added, edited or removed) and
the corpus and index configs did not, the re-run is an update: only the
changed files are read, only the changed documents chunked and embedded,
and the LanceDB table is updated in place (`2 added, 1 changed, 1 deleted`
is printed first); --full rebuilds instead.

The spec is checked before any work starts: unknown keys, wrong types and
missing files are reported with the field's name. A stage that fails prints
one line (the stage, the reason, the fix when known) and the command exits 1.
On a cluster, use `ragworks submit`.

A spec has one section per stage it enables, run in this order:

{stages_help()}
"""


@app.command("eval")
def eval_(
    dataset: Path = typer.Option(..., help="BEIR folder: corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv", show_default=False),
    split: str = typer.Option("test", help="Which qrels/SPLIT.tsv to score"),
    embedder: str = typer.Option("base", help="'base' (bundled all-MiniLM-L6-v2), 'static' (a static model distilled "
                                              "from it, for large corpora), a Hugging Face id or a local path"),
    max_tokens: Optional[int] = typer.Option(None, help="Chunk size in tokens (default: one chunk per document, as BEIR does)"),
    fusion: str = typer.Option("linear", help="How hybrid search fuses dense and full-text: 'linear' (normalized scores, "
                                              "half each) or 'rrf' (reciprocal rank fusion)"),
    workdir: Optional[str] = typer.Option(None, help="Where artifacts go (default: runs/eval-DATASET)"),
    address: Optional[str] = typer.Option(None, help="Ray cluster address; default: embedded local Ray"),
    force: list[str] = typer.Option([], help=STAGES_HELP),
    debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP),
    verbose: bool = typer.Option(False, "--verbose", help=VERBOSE_HELP),
) -> None:
    """Evaluate retrieval on a BEIR dataset: dense, full-text and hybrid.

    The corpus goes through the same corpus and index stages as any job, then
    nDCG@10, Recall@100 and MRR@10 are reported (report.html, report.json,
    report.md, report.png under WORKDIR/evaluate).
    """
    name = f"eval-{dataset.resolve().name}"
    data = {
        "name": name,
        "corpus": {"source": {"format": "beir", "path": str(dataset)}, "chunking": {"max_tokens": max_tokens}},
        "index": {"embedder": embedder, "hybrid": {"fusion": fusion}},
        "evaluate": {"dataset": str(dataset), "split": split},
    }
    try:
        spec = parse_spec(data, source=f"--dataset {dataset}")
    except SpecError as err:
        _fail(err)
    _run(spec, workdir, force, address, debug, verbose=verbose)


@app.command()
def serve(
    target: str = typer.Argument(..., help="A job spec (its workdir is served) or a workdir (a path, s3:// or gs://)",
                                 show_default=False),
    host: str = typer.Option("127.0.0.1", help="HTTP host; 0.0.0.0 exposes the API to the network"),
    port: int = typer.Option(8000, help="HTTP port"),
    generator: Optional[str] = typer.Option(None, help="Chat model: 'bundled:NAME', a Hugging Face id or a path "
                                            "(default: the job's trained generator, base + LoRA adapter, else the "
                                            "bundled SmolLM2); with --engine openai, the model the endpoint serves"),
    engine: str = typer.Option("transformers", metavar="[transformers|openai|vllm]",
                               help="What generates: a model in this app (transformers), or any OpenAI-compatible "
                                    "server (openai: vLLM, TGI, llama.cpp; needs --base-url)"),
    base_url: Optional[str] = typer.Option(None, help="--engine openai: the endpoint, e.g. http://127.0.0.1:8001/v1"),
    engine_api_key_env: str = typer.Option("OPENAI_API_KEY", help="--engine openai: environment variable with the "
                                           "key sent to the endpoint (not the key of this API)"),
    max_tokens: int = typer.Option(128, help="Answer length when a request names none"),
    api_key_env: str = typer.Option("RAGWORKS_API_KEY", help="Environment variable with this API's key; unset: no auth"),
    address: Optional[str] = typer.Option(None, help="Ray cluster address; default: embedded local Ray"),
    rerank: Optional[str] = typer.Option(None, help="A cross-encoder re-ranking each search's top hits: a Hugging "
                                         "Face id, a path, or 'reranker' (the job's train_reranker model)"),
    rerank_top_k: int = typer.Option(20, help="--rerank: hits re-scored per search"),
    drain_s: float = typer.Option(30.0, help="On SIGTERM or Ctrl-C: new requests get 503 while those in flight "
                                  "finish, for at most this long"),
    request_timeout_s: float = typer.Option(300.0, help="A request's deadline: past it Serve answers 408 and its "
                                            "generation stops at the next decoding step, as for a dropped client"),
    access_log: bool = typer.Option(True, help="One access line per request (--no-access-log: none; warnings "
                                    "and errors are always logged)"),
) -> None:
    """Serve a job's index on Ray Serve: search, embeddings and RAG chat.

    Endpoints: POST /v1/search, POST /v1/embeddings and POST /v1/chat/completions
    (OpenAI-compatible; the `openai` client works with base_url=http://HOST:PORT/v1),
    GET /healthz. The index the job's ship gate chose (base or tuned) and the tuned generator are
    served; a re-run that writes a new index goes live without a restart. For per-deployment replicas and
    autoscaling use `serve run serving/rag.yaml` instead.

    To answer through a model server you already run (retrieval, the prompt layout, citations and auth stay here):

      ragworks serve jobs/quickstart.yaml --engine openai --base-url http://127.0.0.1:8001/v1 --generator MODEL
    """
    import ray
    from ray import serve as ray_serve

    from .engines import EngineUnavailable
    from .serve import build, start as start_serve
    from .serve.deployments import served_index
    from .serve.drain import create_flag, drain
    from .storage import Folder

    workdir = target
    if Path(target).is_file():
        try:
            workdir = load_spec(Path(target)).resolved_workdir()
        except SpecError as err:
            _fail(err)
    if engine == "openai" and not base_url:
        _fail(ValueError("--engine openai needs --base-url, e.g. http://127.0.0.1:8001/v1"))
    endpoint = {"base_url": base_url, "api_key_env": engine_api_key_env} if engine == "openai" else {}
    try:
        application = build({"workdir": str(workdir), "generator": generator, "max_tokens": max_tokens,
                             "api_key_env": api_key_env, "engine": {"kind": engine, **endpoint},
                             "access_log": access_log,
                             **({"rerank": {"model": rerank, "top_k": rerank_top_k}} if rerank else {})})
    except (FileNotFoundError, ValueError, EngineUnavailable) as err:
        _fail(err)
    if address:
        ray.init(address=address)
    else:
        from .ray_internals import quiet_token_notice

        quiet_token_notice()
        ray.init(address="local", dashboard_host="127.0.0.1")  # its own Ray; the dashboard stays on loopback
    start_serve(host, port, request_timeout_s)
    flag = create_flag()
    index, why = served_index(Folder(str(workdir)))
    console.print(f"index: {index} ({why})")
    ray_serve.run(application, name="rag", route_prefix="/", blocking=False)
    console.print(f"serving {workdir} at http://{host}:{port}: playground http://{host}:{port}/, OpenAI base_url "
                  f"http://{host}:{port}/v1 (Ctrl-C or SIGTERM stops, after the requests in flight)")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass
    finished, waited = drain(flag, timeout_s=drain_s)
    ray_serve.shutdown()
    ray.kill(flag)
    console.print(f"stopped: {'every request in flight finished' if finished else f'gave up waiting after {drain_s:.0f} s'}"
                  f" ({waited:.1f} s)")
    if not finished:
        raise typer.Exit(1)


@app.command()
def submit(
    job: Path = typer.Argument(..., help="Job spec (YAML) inside the project folder, e.g. jobs/quickstart.yaml",
                               show_default=False),
    address: Optional[str] = typer.Option(None, help=ADDRESS_HELP + ", e.g. http://HEAD:8265"),
    workdir: Optional[str] = typer.Option(None, help="Where artifacts go; every node must see it: a shared mount, "
                                          "s3:// or gs:// [default: the spec's workdir, as an absolute path here]"),
    project: Optional[Path] = typer.Option(None, help="Folder uploaded as the job's working directory "
                                           "[default: the current directory]"),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    force: list[str] = typer.Option([], help=STAGES_HELP),
    full: bool = typer.Option(False, "--full", help=FULL_HELP),
    follow_: bool = typer.Option(False, "--follow", help="Stream the job's log until it ends; exit 1 if it fails"),
) -> None:
    """Run a job spec on a Ray cluster through the Jobs API.

    The spec is validated here first. The project folder (less runs/ and .git/) and
    this ragworks package travel with the job, and the cluster runs the same
    `ragworks run` as a laptop, with the same manifests, skips and resumes.
    Inputs inside the project travel with it; paths outside it must exist on the
    cluster. Then: `ragworks logs --follow ID`, `ragworks status ID`, `ragworks stop ID`.

    Try it on this machine:  cluster/local.sh up && ragworks submit jobs/quickstart.yaml --follow
    """
    from .submission import submit as submit_job

    try:
        job_id = submit_job(job, address=address, workdir=workdir, overrides=set_, project=project, force=force,
                            console=console, full=full)
    except (SpecError, ConnectionError) as err:
        _fail(err)
    if follow_:
        _follow(job_id, address)


def _follow(job_id: str, address: Optional[str]) -> None:
    from .submission import follow

    try:
        final = follow(job_id, address)
    except ConnectionError as err:
        _fail(err)
    console.print(f"job {job_id}: {final}")
    if final != "SUCCEEDED":
        raise typer.Exit(1)


@app.command()
def logs(
    job_id: str = typer.Argument(..., help="Submission id printed by `ragworks submit`", show_default=False),
    follow_: bool = typer.Option(False, "--follow", "-f", help="Keep streaming until the job ends; exit 1 if it fails"),
    address: Optional[str] = typer.Option(None, help=ADDRESS_HELP),
) -> None:
    """Print a submitted job's driver log (every stage's progress and tables)."""
    if follow_:
        _follow(job_id, address)
        return
    from .submission import client

    try:
        sys.stdout.write(client(address).get_job_logs(job_id))
    except ConnectionError as err:
        _fail(err)


@app.command()
def status(
    job_id: Optional[str] = typer.Argument(None, help="Submission id; none: list the cluster's jobs"),
    address: Optional[str] = typer.Option(None, help=ADDRESS_HELP),
) -> None:
    """A submitted job's status and, when this machine sees its workdir, each stage's manifest."""
    from rich.table import Table

    from .submission import client, status_rows

    try:
        if job_id is None:
            table = Table("job", "status", "ragworks job", "started")
            for info in client(address).list_jobs():
                table.add_row(info.submission_id or info.job_id or "", str(info.status.value),
                              (info.metadata or {}).get("ragworks_job", ""), str(info.start_time or ""))
            console.print(table)
            return
        fields, rows = status_rows(job_id, address)
    except ConnectionError as err:
        _fail(err)
    for k, v in fields.items():
        console.print(f"[bold]{k}[/]: {v}", highlight=False)
    if rows:
        table = Table("stage", "time", "finished", "counts")
        for row in rows:
            table.add_row(*row)
        console.print(table)
    if fields["status"] == "FAILED":
        raise typer.Exit(1)


@app.command()
def stop(
    job_id: str = typer.Argument(..., help="Submission id", show_default=False),
    address: Optional[str] = typer.Option(None, help=ADDRESS_HELP),
) -> None:
    """Stop a submitted job; a later submit of the same spec and workdir resumes where it stopped."""
    from .submission import client

    try:
        stopped = client(address).stop_job(job_id)
    except ConnectionError as err:
        _fail(err)
    console.print(f"job {job_id}: " + ("stop requested" if stopped else "already finished"))


def main() -> None:
    app(prog_name="ragworks")


if __name__ == "__main__":
    sys.exit(main())

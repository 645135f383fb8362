"""A job spec run on a Ray cluster through Ray's Jobs API: submit, status, logs, stop.

The cluster runs the same `ragworks run` a laptop does. The submitting machine
validates the spec first (a typo fails here, not an hour later on the cluster),
then uploads the project folder as the job's working directory and this ragworks
package as a py_module, so the cluster runs exactly the code and specs on disk here.
"""

from __future__ import annotations

import asyncio
import shlex
import sys
import uuid
from pathlib import Path

from .config import SpecError, load_spec, path_fields
from .storage import Folder

EXCLUDES = ["runs/", ".git/", "**/__pycache__/", "*.egg-info/", ".pytest_cache/", ".venv/"]
NO_CLUSTER = ("no Ray Jobs API at {address}: start a cluster (`cluster/local.sh up` on this machine) or pass "
              "--address http://HEAD:8265 (or set RAY_ADDRESS)")


def use_token_if_any() -> None:
    """Send Ray's token when this machine has one: a head started where a token exists requires it
    (Ray's default since token authentication); `ray job` finds it the same way."""
    from .ray_internals import token_setup

    setup = token_setup()
    if setup is not None:  # None: a Ray without token authentication
        setup(warn_if_disabled=False)


def client(address: str | None):
    from ray.job_submission import JobSubmissionClient

    use_token_if_any()
    try:
        return JobSubmissionClient(address)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise ConnectionError(NO_CLUSTER.format(address=address or "the default address") + f" ({err})") from None


def _field(spec, dotted: str):
    node = spec
    for part in dotted.split("."):
        node = getattr(node, part, None) if node is not None else None
    return node


def path_overrides(spec, project: Path) -> tuple[list[str], list[str]]:
    """`--set` overrides that name each input path as the cluster's driver will see it.

    A path inside the project travels with the upload (relative: the driver's working
    directory is the uploaded copy); one outside it stays absolute and must be on
    storage every node sees. Returns (overrides, paths that must already be on the cluster).
    """
    overrides, outside = [], []
    for dotted in path_fields():
        value = _field(spec, dotted)
        if value is None:
            continue
        path = Path(value).resolve()
        try:
            overrides.append(f"{dotted}={path.relative_to(project)}")
        except ValueError:
            overrides.append(f"{dotted}={path}")
            outside.append(f"{dotted}: {path}")
    return overrides, outside


def submit(job: Path, *, address: str | None, workdir: str | None, overrides: list[str], project: Path | None,
           force: list[str], console, full: bool = False) -> str:
    """Submit `ragworks run JOB` to the cluster; returns the submission id."""
    import ragworks

    spec = load_spec(job, overrides)  # everything checked here, before any upload
    project = (project or Path.cwd()).resolve()
    try:
        spec_path = job.resolve().relative_to(project)
    except ValueError:
        raise SpecError(f"{job}: the job spec must sit inside the project folder that is uploaded ({project}); "
                        "run from the project's root or pass --project") from None
    wd = spec.workdir_location(workdir)  # the cluster writes there; this machine need not reach it
    paths, outside = path_overrides(spec, project)
    args = ["python", "-m", "ragworks.cli", "run", str(spec_path), "--workdir", wd, "--address", "auto"]
    args += [f"--set={o}" for o in [*overrides, *paths]] + [f"--force={f}" for f in force] + (["--full"] if full else [])
    runtime_env = {"working_dir": str(project), "py_modules": [str(Path(ragworks.__file__).parent)],
                   "excludes": EXCLUDES}
    submission_id = f"ragworks-{spec.name}-{uuid.uuid4().hex[:8]}"
    # `exec`: the shell Ray starts becomes the driver, so a stop always signals the driver itself. Without
    # it, a stop that lands as the shell forks (a job stopped while it starts) kills only the shell and
    # leaves the driver running, holding the cluster, under a job marked STOPPED (2 of 18 tries here).
    client(address).submit_job(entrypoint="exec " + shlex.join(args), runtime_env=runtime_env,
                               submission_id=submission_id, entrypoint_num_cpus=0,
                               metadata={"ragworks_job": spec.name, "workdir": wd, "spec": str(spec_path)})
    console.print(f"submitted [bold]{submission_id}[/] ({spec.name}); workdir {wd} (every node must see it)")
    for line in outside:
        console.print(f"  outside the project, so read in place on the cluster: {line}")
    return submission_id


def reachable(workdir: str) -> Folder | None:
    """The job's workdir when this machine sees it (not a shared mount it lacks, nor a bucket it has no
    credentials for)."""
    try:
        folder = Folder(workdir)
        return folder if folder.exists() else None
    except OSError:
        return None


def follow(job_id: str, address: str | None, out=sys.stdout) -> str:
    """Streams the job's driver log until it ends; returns its final status."""
    c = client(address)

    async def tail() -> None:
        async for lines in c.tail_job_logs(job_id):
            out.write(lines)
            out.flush()

    asyncio.run(tail())
    return str(c.get_job_status(job_id).value)


def status_rows(job_id: str, address: str | None) -> tuple[dict, list[tuple]]:
    """(the job's info, one row per finished stage from the workdir's manifests when this machine sees it)."""
    from .manifest import PROGRESS, read_manifest
    from .stage import registry, run_order

    info = client(address).get_job_info(job_id)
    fields = {"job": job_id, "status": str(info.status.value), "message": info.message or "",
              "entrypoint": info.entrypoint, **(info.metadata or {})}
    rows = []
    workdir = (info.metadata or {}).get("workdir")
    folder = reachable(workdir) if workdir else None
    if folder is not None:
        stages = registry()
        for stage in run_order():
            m = read_manifest(folder / stage)
            if m is not None:
                counts = stages[stage].outputs.from_manifest(m).counts
                counts = ", ".join(f"{k} {v:,}" for k, v in counts.items() if isinstance(v, int))
                rows.append((stage, f"{m['seconds']:.1f}s", m["finished"], counts))
            elif (folder / stage / PROGRESS).exists():
                rows.append((stage, "running", "", ""))
    return fields, rows

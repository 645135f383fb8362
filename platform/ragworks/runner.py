"""Runs a job: the spec's enabled stages in order, each skipped when its manifest still matches."""

from __future__ import annotations

import json
import time
import traceback
import uuid
from pathlib import Path

from pyarrow.fs import FileSelector
from rich.console import Console

from . import __version__
from .config import JobBase, SpecError
from .manifest import MANIFEST, PROGRESS, now, portable, read_manifest, stable_hash, write_manifest
from .progress import STAGE
from .runtime import init_ray
from .stage import VERSION_PREFIX, Outputs, StageContext, StageDef, StageError, registry, run_order



def _upstream_fingerprint(manifest: dict) -> dict:
    # `run_id` too: a forced re-run upstream must re-run what reads it.
    return {"key": manifest["key"], "run_id": manifest.get("run_id", manifest.get("finished"))}


def run_job(
    spec: JobBase,
    *,
    workdir: str | Path | None = None,
    force: tuple[str, ...] | list[str] = (),
    address: str | None = None,
    console: Console | None = None,
    full: bool = False,
) -> dict[str, dict]:
    """Run every stage the spec enables; return each stage's manifest. An incremental stage whose config is
    unchanged updates its last output with what changed upstream (a corpus delta), unless `full`.

    A stage that fails raises `StageError` naming it, with its traceback written to WORKDIR/STAGE/error.log.
    """
    console = console or Console()
    workdir = spec.resolved_workdir(workdir)
    stages = registry()
    order = run_order()
    enabled = [s for s in order if getattr(spec, s, None) is not None]
    if not enabled:
        raise SpecError("the job spec enables no stage (add a corpus, index or evaluate section)")
    unknown = set(force) - set(order) - {"all"}
    if unknown:
        raise SpecError(f"--force: unknown stage(s) {sorted(unknown)}; stages: {', '.join(order)}, all")
    forced = set(order) if "all" in force else set(force)

    workdir.mkdir()
    init_ray(spec.ray, address)
    check_engines(spec, enabled, workdir)
    manifests: dict[str, dict] = {}
    for name in enabled:
        stage = stages[name]
        cfg = getattr(spec, name)
        needs = stage.inputs(enabled, cfg)
        for need in needs:
            if need not in manifests:
                found = read_manifest(workdir / need)
                if found is None:
                    raise SpecError(f"stage '{name}' needs '{need}', which is neither in the spec nor finished in {workdir}")
                manifests[need] = found
        inputs = {n: _upstream_fingerprint(manifests[n]) for n in needs}
        external = stage.external_inputs(cfg)
        config = cfg.model_dump(mode="json")
        key = stable_hash(portable({"config": config, "inputs": inputs, "external": external}, Path.cwd()))
        recipe = stable_hash(portable(config, Path.cwd()))  # the config alone, wherever the project runs from
        stage_dir = workdir / name
        old = read_manifest(stage_dir)
        if old is not None and old.get("key") == key and name not in forced:
            console.print(f"[bold]{name}[/]: up to date, skipped (manifest {stage_dir / 'manifest.json'})")
            manifests[name] = old
            continue
        marker = stage_dir / PROGRESS
        resume = stage.resumable and name not in forced and marker.exists() and json.loads(marker.read_text()).get("key") == key
        same = old is not None and (old["recipe"] == recipe if "recipe" in old else old.get("config") == config)
        update = stage.incremental and not full and name not in forced and same
        follows = following(old, inputs, external, manifests) if same and name not in forced and not full else None
        keeps = update or (stage.served and name not in forced)  # a server goes on reading the last output meanwhile
        if not resume and not keeps:  # stale or half-done output: start the stage clean
            stage_dir.remove()
        stage_dir.mkdir()
        if not keeps:  # an update keeps the last manifest until its own replaces it
            (stage_dir / MANIFEST).unlink()
        marker.write_text(json.dumps({"key": key, "started": now()}))
        console.rule(f"[bold]{name}" + (" (resuming)" if resume else ""))
        STAGE["name"] = name
        if old is not None and name not in forced:
            verb = "updating" if update else "re-running"
            console.print(f"{verb}: {why_rerun(old, config, inputs, external)}", highlight=False)
        started, t0 = now(), time.perf_counter()
        ctx = StageContext(workdir=workdir, stage_dir=stage_dir, inputs={n: manifests[n] for n in needs},
                           job=dict(manifests), console=console, key=key, previous=old if update else None,
                           follows=follows)
        outputs = _run_stage(stage, cfg, ctx)
        seconds = round(time.perf_counter() - t0, 3)
        run_id = uuid.uuid4().hex
        if getattr(outputs, "delta", None) is not None:  # a corpus update starts a chain of stages that follow it
            follows = run_id
        manifest = {
            "stage": name,
            "key": key,
            "recipe": recipe,
            "follows": follows,
            "run_id": run_id,
            "ragworks": __version__,
            "config": config,
            "inputs": inputs,
            "external": external,
            "started": started,
            "finished": now(),
            "seconds": seconds,
            "outputs": outputs.model_dump(mode="json"),
        }
        write_manifest(stage_dir, manifest)
        marker.unlink()
        remove_other_versions(ctx)
        manifests[name] = manifest
        if console.is_terminal:  # in a log, the next stage's rule says it, and the last line gives every time
            console.print(f"[bold]{name}[/]: done in {seconds:.1f}s")
    return manifests


def following(old: dict | None, inputs: dict, external: dict, manifests: dict) -> str | None:
    """The corpus update this re-run only follows, if it does: its config and outside inputs are the last run's,
    and every input that changed since is a stage that ran following that same update (the corpus stage that
    made it, or one downstream). A stage that only follows an update may keep work of its last run (a model
    trained before a small change); any other change makes it run whole."""
    if old is None or (old.get("external") or {}) != external:
        return None
    changed = [n for n in inputs if (old.get("inputs") or {}).get(n) != inputs[n]]
    chains = {manifests[n].get("follows") for n in changed}
    return chains.pop() if len(chains) == 1 and None not in chains else None


def remove_other_versions(ctx: StageContext) -> None:
    """Every run folder of the stage but this run's: the manifest just written names only this one."""
    for entry in ctx.stage_dir.fs.get_file_info(FileSelector(ctx.stage_dir.path)):
        name = entry.path.rstrip("/").rsplit("/", 1)[-1]
        if name.startswith(VERSION_PREFIX) and name != ctx.version_dir.name:
            (ctx.stage_dir / name).remove()


def check_engines(spec: JobBase, enabled: list[str], workdir) -> None:
    """An engine that cannot run on this cluster (vLLM not installed, no GPU) fails the job before its first
    stage, not after the hours of corpus and index work before the stage that needs it. Stages finished
    earlier are not checked: a re-run on a CPU machine may go on from a GPU machine's generations."""
    from .engines import check_engine

    for name in enabled:
        engine = getattr(getattr(spec, name), "engine", None)
        if engine is not None and read_manifest(workdir / name) is None:
            check_engine(engine, f"{name}.engine.kind")


def _run_stage(stage: StageDef, cfg, ctx: StageContext) -> Outputs:
    """The stage's outputs; any failure becomes a StageError naming the stage, its traceback in error.log."""
    try:
        outputs = stage.run_function()(cfg, ctx)
        if not isinstance(outputs, stage.outputs):
            raise TypeError(f"returned {type(outputs).__name__}, not its outputs model {stage.outputs.__name__}")
        return outputs
    except SpecError:
        raise
    except Exception as err:  # noqa: BLE001 - reported in one line, the traceback kept in the log
        log = ctx.stage_dir / "error.log"
        log.write_text("".join(traceback.format_exception(err)))
        if isinstance(err, StageError):
            err.stage, err.log = stage.name, str(log)
            raise
        raise StageError(reason(err), stage=stage.name, log=str(log)) from err


def reason(err: BaseException) -> str:
    """One line for an unexpected error: the innermost cause (Ray wraps a task's error in its own)."""
    while True:
        inner = getattr(err, "cause", None) or err.__cause__
        if not isinstance(inner, BaseException) or inner is err:
            break
        err = inner
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    text = lines[0] if lines else ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def why_rerun(old: dict, config: dict, inputs: dict, external: dict) -> str:
    """What changed since the manifest on disk was written: config fields, upstream stages, outside inputs."""
    changes = [f"{k}: {a!r} -> {b!r}" for k, a, b in _diff(old.get("config") or {}, config)]
    changes += [f"upstream '{n}' re-ran" for n in sorted(set(inputs) | set(old.get("inputs") or {}))
                if (old.get("inputs") or {}).get(n) != inputs.get(n)]
    changes += [f"input {k} changed" for k, _, _ in _diff(old.get("external") or {}, external)]
    if not changes:
        return "its key changed (written by another ragworks version)"
    return ", ".join(changes[:6]) + (f" and {len(changes) - 6} more" if len(changes) > 6 else "")


def _diff(old, new, prefix: str = ""):
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new)):
            yield from _diff(old.get(k, "<unset>"), new.get(k, "<unset>"), f"{prefix}{k}.")
    elif old != new:
        yield prefix.rstrip("."), old, new

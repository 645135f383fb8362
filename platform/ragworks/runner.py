"""Runs a job: the spec's enabled stages in order, each skipped when its manifest still matches."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rich.console import Console

from . import __version__
from .config import JobSpec, SpecError
from .manifest import MANIFEST, now, portable, read_manifest, stable_hash, write_manifest
from .runtime import init_ray
from .storage import Folder


@dataclass
class StageContext:
    """What a stage sees besides its own config: where to write, what upstream produced."""

    spec: JobSpec
    workdir: Folder  # local, shared mount or object store: hand Ray Data, LanceDB and Ray Train str(folder)
    stage_dir: Folder
    inputs: dict[str, dict]
    console: Console = field(default_factory=Console)
    started: float = field(default_factory=time.perf_counter)

    def input_dir(self, stage: str) -> Folder:
        return self.workdir / stage


@dataclass(frozen=True)
class StageDef:
    name: str
    needs: tuple[str, ...]
    run: Callable[[Any, StageContext], dict]
    external: Callable[[JobSpec], dict] = lambda spec: {}
    resumable: bool = False  # keeps a half-done output folder with the same key and carries on
    optional: Callable[[Any], tuple[str, ...]] = lambda cfg: ()  # read when the config uses them and the spec has them

    def inputs(self, enabled: list[str], cfg) -> tuple[str, ...]:
        return self.needs + tuple(s for s in self.optional(cfg) if s in enabled)


def _stages() -> dict[str, StageDef]:
    # Imported here so `ragworks --help` does not pay for torch and Ray Data.
    from functools import partial

    from . import corpus, evaluate, index, synth, train

    return {
        "corpus": StageDef("corpus", (), corpus.run, corpus.external_inputs),
        "index": StageDef("index", ("corpus",), index.run, index.external_inputs),
        "synthesize": StageDef("synthesize", ("corpus", "index"), synth.run_synthesize, synth.external_inputs,
                               resumable=True),
        "filters": StageDef("filters", ("synthesize", "index"), synth.run_filters),
        "negatives": StageDef("negatives", ("filters", "index"), synth.run_negatives),
        "train_retriever": StageDef("train_retriever", ("negatives",), train.run_retriever, train.external_inputs),
        "index_tuned": StageDef("index_tuned", ("corpus", "train_retriever"), partial(index.run, tuned=True)),
        "rag_examples": StageDef("rag_examples", ("corpus", "index"), synth.run_synthesize,
                                 partial(synth.external_inputs, section="rag_examples"), resumable=True,
                                 optional=lambda cfg: ("filters",) if cfg.rag.claims else ()),
        "train_generator": StageDef("train_generator", ("rag_examples",), train.run_generator),
        "evaluate": StageDef("evaluate", ("index",), evaluate.run, evaluate.external_inputs,
                             optional=lambda cfg: ("index_tuned", "train_generator")),
    }


STAGE_ORDER = ("corpus", "index", "synthesize", "filters", "negatives", "train_retriever", "index_tuned",
               "rag_examples", "train_generator", "evaluate")
PROGRESS = "_in_progress.json"


def _upstream_fingerprint(manifest: dict) -> dict:
    # `run_id` too: a forced re-run upstream must re-run what reads it.
    return {"key": manifest["key"], "run_id": manifest.get("run_id", manifest.get("finished"))}


def run_job(
    spec: JobSpec,
    *,
    workdir: str | Path | None = None,
    force: tuple[str, ...] | list[str] = (),
    address: str | None = None,
    console: Console | None = None,
) -> dict[str, dict]:
    """Run every stage the spec enables; return each stage's manifest."""
    console = console or Console()
    workdir = spec.resolved_workdir(workdir)
    enabled = [s for s in STAGE_ORDER if getattr(spec, s) is not None]
    if not enabled:
        raise SpecError("the job spec enables no stage (add a corpus, index or evaluate section)")
    unknown = set(force) - set(STAGE_ORDER) - {"all"}
    if unknown:
        raise SpecError(f"--force: unknown stage(s) {sorted(unknown)}; stages: {', '.join(STAGE_ORDER)}, all")
    forced = set(STAGE_ORDER) if "all" in force else set(force)

    stages = _stages()
    workdir.mkdir()
    init_ray(spec.ray, address)
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
        external = stage.external(spec)
        key = stable_hash(portable({"config": cfg.model_dump(mode="json"), "inputs": inputs, "external": external},
                                   Path.cwd()))
        stage_dir = workdir / name
        old = read_manifest(stage_dir)
        if old is not None and old.get("key") == key and name not in forced:
            console.print(f"[bold]{name}[/]: up to date, skipped (manifest {stage_dir / 'manifest.json'})")
            manifests[name] = old
            continue
        marker = stage_dir / PROGRESS
        resume = stage.resumable and name not in forced and marker.exists() and json.loads(marker.read_text()).get("key") == key
        if not resume:  # stale or half-done output: start the stage clean
            stage_dir.remove()
        stage_dir.mkdir()
        (stage_dir / MANIFEST).unlink()
        marker.write_text(json.dumps({"key": key, "started": now()}))
        console.rule(f"[bold]{name}" + (" (resuming)" if resume else ""))
        started, t0 = now(), time.perf_counter()
        ctx = StageContext(spec=spec, workdir=workdir, stage_dir=stage_dir, inputs=manifests, console=console)
        result = stage.run(cfg, ctx)
        seconds = round(time.perf_counter() - t0, 3)
        manifest = {
            "stage": name,
            "key": key,
            "run_id": uuid.uuid4().hex,
            "ragworks": __version__,
            "config": cfg.model_dump(mode="json"),
            "inputs": inputs,
            "external": external,
            "started": started,
            "finished": now(),
            "seconds": seconds,
            **result,
        }
        write_manifest(stage_dir, manifest)
        marker.unlink()
        manifests[name] = manifest
        console.print(f"[bold]{name}[/]: done in {seconds:.1f}s")
    return manifests



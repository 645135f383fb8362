"""What a stage is, declared once: the registry every other list of stages is derived from.

A stage is a function from its typed config and the typed outputs of the stages
it reads to typed outputs of its own, written under WORKDIR/NAME with a manifest.
Each stage package declares its `StageDef`s in its `__init__` (light: the run
function is a "module:function" path imported when the stage runs, so
`ragworks --help` never pays for torch or Ray Data). The runner's order, the
CLI's help, the spec's dependency checks, the report's work column and
`ragworks status` all read this registry; `register` adds a stage of one's own.

Imported by stages; imports none of them (the built-in packages are loaded the
first time the registry is read).
"""

from __future__ import annotations

import graphlib
import importlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict
from rich.console import Console

BUILTIN_PACKAGES = ("ragworks.corpus", "ragworks.index", "ragworks.synth", "ragworks.train", "ragworks.evaluate")


class StageError(RuntimeError):
    """A stage that cannot go on, said in one line: the reason, the fix when known, where the traceback is.

    Stages raise it for bad input they can name ("fewer pairs than one batch"); the runner wraps anything
    else a stage raises in one, with the stage's name and the log it wrote.
    """

    def __init__(self, reason: str, fix: str | None = None, *, stage: str | None = None, log: str | None = None):
        super().__init__(reason)
        self.reason, self.fix, self.stage, self.log = reason, fix, stage, log

    def __str__(self) -> str:
        line = f"stage '{self.stage}' failed: {self.reason}" if self.stage else self.reason
        if self.fix:
            line += f"; {self.fix}"
        return line + (f" (traceback: {self.log})" if self.log else "")


class Outputs(BaseModel):
    """What a stage hands the stages after it: its artifacts' locations and the facts it measured.

    Stored whole as the manifest's `outputs`; `counts` are what `ragworks status` and the report show.
    """

    model_config = ConfigDict(extra="forbid")

    counts: dict[str, Any] = {}

    @classmethod
    def from_manifest(cls, manifest: dict) -> "Outputs":
        data = dict(manifest.get("outputs") or {})
        if "counts" not in data:  # written before typed outputs: facts sat beside `outputs`, settings in `config`
            data = cls.legacy(manifest, {**{k: v for k, v in manifest.items() if k != "outputs"}, **data})
        return cls.model_validate({k: v for k, v in data.items() if k in cls.model_fields})

    @classmethod
    def legacy(cls, manifest: dict, data: dict) -> dict:
        """An old manifest's fields: a field it lacks is looked up in the stage's config."""
        config = manifest.get("config") or {}
        return {**{k: config[k] for k in cls.model_fields if k not in data and k in config}, **data}


def _resolve(target: str | Callable | None) -> Callable | None:
    if target is None or callable(target):
        return target
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class StageDef:
    """Everything about one stage. `needs` must be finished before it runs; `optional` stages are read
    when the spec has them and `reads(cfg)` (default: all of them) says this config uses them."""

    name: str
    config: type[BaseModel]
    run: str | Callable[[Any, "StageContext"], Outputs]  # "module:function", imported when the stage runs
    outputs: type[Outputs] = Outputs
    needs: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    reads: Callable[[Any], tuple[str, ...]] | None = None
    external: str | Callable[[Any], dict] | None = None  # cfg -> fingerprints of inputs outside the workdir
    resumable: bool = False  # keeps a half-done output folder with the same key and carries on
    # updates its last output in place when only its inputs changed (same config): the runner keeps the folder
    # and the last manifest (a server reading it goes on reading it) and hands the manifest over as
    # `ctx.previous`; the stage decides whether it can apply a delta or must rebuild
    incremental: bool = False
    # a server reads its output while it runs again (a LanceDB table): a rebuild too (a new config, `--full`;
    # not `--force STAGE`) keeps the folder and the last manifest, and writes a new table version beside the one
    # served, which the new manifest then names
    served: bool = False
    work: tuple[str, str] | None = None  # (key in outputs.counts, unit): the report's work column
    last: bool = False  # reports on the others (evaluate): runs after every stage it does not feed
    help: str = ""  # one line for `ragworks run --help`, and the section's description in the job spec
    # Rules between sections, declared by the stage that needs them (config.py runs every stage's):
    prepare: str | Callable[[dict], dict] | None = None  # the raw spec -> the spec, with sections this one implies
    check: str | Callable[[Any, Any], list[str]] | None = None  # (spec, its folder) -> problems; resolves paths
    paths: tuple[str, ...] = ()  # input paths in the section (dotted): `ragworks submit` re-points each
    # what others look for in a finished workdir by what it is, not by the folder it sits in (`product`)
    provides: tuple[str, ...] = ()

    def inputs(self, enabled: list[str], cfg) -> tuple[str, ...]:
        wanted = self.optional if self.reads is None else self.reads(cfg)
        return self.needs + tuple(s for s in self.optional if s in wanted and s in enabled)

    def run_function(self) -> Callable[[Any, "StageContext"], Outputs]:
        return _resolve(self.run)

    def external_inputs(self, cfg) -> dict:
        fn = _resolve(self.external)
        return fn(cfg) if fn else {}

    def prepared(self, data: dict) -> dict:
        fn = _resolve(self.prepare)
        return fn(data) if fn else data

    def checked(self, spec, spec_dir) -> list[str]:
        fn = _resolve(self.check)
        return fn(spec, spec_dir) if fn else []


@dataclass
class StageContext:
    """What a stage sees besides its own config: where to write, and the outputs of the stages it reads."""

    workdir: Any  # storage.Folder: local, shared mount or object store; hand Ray Data, LanceDB and Ray Train str()
    stage_dir: Any
    inputs: dict[str, dict]  # manifests of the stages this one reads (its needs and optional inputs)
    job: dict[str, dict] = field(default_factory=dict)  # every manifest of the job so far, for reports
    console: Console = field(default_factory=Console)
    started: float = field(default_factory=time.perf_counter)
    key: str = ""  # this run's stage key
    previous: dict | None = None  # an incremental stage's last manifest, when this run may update it
    follows: str | None = None  # the corpus update (its run id) this run only follows (runner.following)

    @property
    def version_dir(self):
        """A folder of this run's own (by its key) inside the stage folder: an incremental stage writes there,
        so the last run's outputs stay whole until this run's manifest replaces them; the runner removes the
        other runs' folders (`VERSION_PREFIX`) after it writes the manifest."""
        return self.stage_dir / f"{VERSION_PREFIX}{self.key}"

    def start_clean(self) -> None:
        """An incremental stage that must rebuild after all: the last run's outputs go, its manifest first."""
        from .manifest import MANIFEST, PROGRESS

        (self.stage_dir / MANIFEST).unlink()
        marker = self.stage_dir / PROGRESS
        text = marker.read_text() if marker.exists() else None
        self.stage_dir.remove()
        self.stage_dir.mkdir()
        if text is not None:
            marker.write_text(text)
        self.previous = None

    def output(self, stage: str) -> Outputs:
        """The typed outputs of a stage this one reads."""
        if stage not in self.inputs:
            raise KeyError(f"'{stage}' is not an input of this stage (inputs: {', '.join(self.inputs) or 'none'}); "
                           "declare it in the StageDef's needs or optional")
        return registry()[stage].outputs.from_manifest(self.inputs[stage])

    def has(self, stage: str) -> bool:
        return stage in self.inputs


VERSION_PREFIX = "v-"
_REGISTRY: dict[str, StageDef] = {}
_loaded = False


def registry() -> dict[str, StageDef]:
    """Every stage by name, the built-in ones first, in the order their packages declare them."""
    global _loaded
    if not _loaded:
        _loaded = True
        for package in BUILTIN_PACKAGES:
            for stage in importlib.import_module(package).STAGES:
                _REGISTRY[stage.name] = stage
        for stage in _REGISTRY.values():
            _check(stage)
    return _REGISTRY


def _check(stage: StageDef) -> None:
    unknown = set(stage.needs + stage.optional) - set(_REGISTRY)
    if unknown:
        raise ValueError(f"stage '{stage.name}' reads unregistered stages: {sorted(unknown)}")


def register(stage: StageDef) -> StageDef:
    """Add a stage; its section in a job spec is `stage.name`, validated by `stage.config`."""
    stages = registry()
    if stage.name in stages:
        raise ValueError(f"a stage named '{stage.name}' is registered already")
    _check(stage)
    stages[stage.name] = stage
    try:
        run_order()
    except graphlib.CycleError as err:
        del stages[stage.name]
        raise ValueError(f"stage '{stage.name}' would make a cycle: {err.args[1]}") from None
    return stage


def unregister(name: str) -> None:
    registry().pop(name, None)


def run_order() -> list[str]:
    """A topological order of every stage's needs and optional inputs (`graphlib`). Of the stages ready to
    run, the one that reads the latest finished stage goes first (then registration order), so a chain is
    followed to its end: corpus, index, synthesize, filters, negatives, train_retriever, index_tuned, ..."""
    stages = registry()
    position = {name: i for i, name in enumerate(stages)}
    graph = {name: set(s.needs + s.optional) for name, s in stages.items()}
    for name, s in stages.items():
        if s.last:  # after everything it does not feed
            feeds = downstream(name)
            graph[name] |= {n for n in stages if n != name and n not in feeds and not stages[n].last}
    sorter = graphlib.TopologicalSorter(graph)
    sorter.prepare()
    ready: list[str] = []
    finished: dict[str, int] = {}
    while sorter.is_active():
        ready += sorter.get_ready()
        ready.sort(key=lambda n: (-max((finished[d] for d in graph[n]), default=-1), position[n]))
        finished[ready[0]] = len(finished)
        sorter.done(ready.pop(0))
    return list(finished)


def downstream(name: str) -> set[str]:
    """The stages that read `name`, directly or not."""
    stages, found, todo = registry(), set(), [name]
    while todo:
        current = todo.pop()
        for other, s in stages.items():
            if current in s.needs + s.optional and other not in found:
                found.add(other)
                todo.append(other)
    return found


def outputs_at(stage_dir) -> Outputs:
    """The typed outputs of a finished stage's folder (its manifest names the stage)."""
    from .manifest import read_manifest

    manifest = read_manifest(stage_dir)
    if manifest is None:
        raise FileNotFoundError(f"{stage_dir}: no finished stage (no manifest.json)")
    return registry()[manifest["stage"]].outputs.from_manifest(manifest)


def product(workdir, name: str) -> tuple[Any, Outputs] | None:
    """(folder, typed outputs) of the finished stage of `workdir` that provides `name` (`StageDef.provides`:
    "index", "tuned_index", "ship_choice", "adapter", "reranker"), or None when none has finished: how serve and
    the CLI find a job's products without naming the stages' folders."""
    from .storage import Folder

    makers = [s for s in registry().values() if name in s.provides]
    if not makers:
        known = sorted({p for s in registry().values() for p in s.provides})
        raise KeyError(f"no registered stage provides {name!r}; known products: {', '.join(known)}")
    for stage in makers:
        folder = Folder(workdir) / stage.name
        try:
            return folder, outputs_at(folder)
        except FileNotFoundError:  # that stage has not finished in this workdir
            continue
    return None


def graph_text() -> str:
    """The stage graph as `python -m ragworks.stage` prints it: each stage in run order, what it reads and
    what it hands on."""
    stages = registry()
    lines = []
    for name in run_order():
        s = stages[name]
        reads = ", ".join([*s.needs, *(f"{o}?" for o in s.optional)]) or "-"
        hands = ", ".join(f for f in s.outputs.model_fields if f != "counts") or "counts"
        lines.append(f"{name:<16} reads {reads:<44} -> {s.outputs.__name__}({hands})")
        if s.help:
            lines.append(f"{'':<16} {s.help}")
    return "\n".join(lines + ["(? : read when the spec has that stage)"])


if __name__ == "__main__":
    print(graph_text())

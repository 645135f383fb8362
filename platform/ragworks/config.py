"""The job spec: one pydantic section per registered stage, each the stage package's own model.

Every field has a default that runs on one laptop, so a spec names only what
differs. Unknown keys are errors (a typo must not silently fall back to a
default), and every error names the field it is about.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from .sections import RayConfig, Section
from .storage import Folder, is_uri


class JobBase(Section):
    """What every job spec has besides its stages' sections, and the rules between sections, which each stage
    declares itself (`StageDef.prepare`, `StageDef.check`)."""

    name: str = "job"
    workdir: str | None = Field(None, description="default: runs/NAME; a local or shared-mount path, s3:// or gs://")
    ray: RayConfig = Field(default_factory=RayConfig)

    def workdir_location(self, override: str | Path | None = None) -> str:
        """The workdir as a URI or an absolute path, checked without touching the storage."""
        return workdir_location(override or self.workdir or f"runs/{self.name}")

    def resolved_workdir(self, override: str | Path | None = None) -> Folder:
        location = self.workdir_location(override)
        try:
            return Folder(location)
        except OSError as err:  # a bucket pyarrow cannot reach, or no credentials for it
            raise SpecError(f"workdir {location}: {err}") from None

    @model_validator(mode="before")
    @classmethod
    def _implied_sections(cls, data: Any) -> Any:
        """Sections a stage fills in from others (`index.embedder: trained` implies `index_tuned`)."""
        from .stage import registry

        if isinstance(data, dict):
            for stage in registry().values():
                data = stage.prepared(data)
        return data


def job_spec() -> type[JobBase]:
    """The job spec's model: `JobBase` and one optional section per registered stage, in run order (one place
    names a stage: its `StageDef`)."""
    from pydantic import create_model

    from .stage import registry, run_order

    stages = registry()
    key = tuple((name, id(stages[name].config)) for name in run_order())
    if key not in _SPECS:
        _SPECS[key] = create_model("JobSpec", __base__=JobBase, __doc__=JobBase.__doc__, **{
            name: (stages[name].config | None, Field(None, description=stages[name].help or None))
            for name in run_order()})
    return _SPECS[key]


_SPECS: dict[tuple, type[JobBase]] = {}


def __getattr__(name: str):
    """`from ragworks.config import JobSpec`: the model of the stages registered now."""
    if name == "JobSpec":
        return job_spec()
    raise AttributeError(name)


class SpecError(ValueError):
    """A job spec that cannot run; the message names the file and the field."""


def workdir_location(value: str | Path) -> str:
    """A local folder for one node; for many, a shared mount or an object store every node reaches."""
    value = str(value)
    if is_uri(value):
        return value.rstrip("/")
    if "://" in value and not value.startswith("file://"):
        raise SpecError(f"workdir {value}: unsupported scheme; use a local or shared-mount path, file://, "
                        "s3:// or gs://")
    return str(Path(value.removeprefix("file://")).expanduser().resolve())


# ---------------------------------------------------------------- loading
def _loc(loc: tuple) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def _suggest(model: type[BaseModel], loc: tuple) -> str:
    """For an unknown key, the closest known key of the section it sits in (for a union of sections, such as
    the engines', the keys any of them knows)."""
    classes: list = [model]
    for part in loc[:-1]:
        field = next((c.model_fields[part] for c in classes if part in getattr(c, "model_fields", {})), None)
        if field is None:
            return ""
        ann = field.annotation
        classes = [c for a in getattr(ann, "__args__", (ann,)) for c in getattr(a, "__args__", (a,))
                   if isinstance(c, type) and issubclass(c, BaseModel)]
        if not classes:
            return ""
    known = list(dict.fromkeys(k for c in classes for k in c.model_fields))
    close = difflib.get_close_matches(str(loc[-1]), known, n=1)
    return f" (did you mean '{close[0]}'?)" if close else f" (known keys: {', '.join(known)})"


def format_validation_error(err: ValidationError, source: str, model: type[BaseModel] | None = None) -> str:
    lines = [f"{source}: invalid job spec"]
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not str(p).startswith("function-"))
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key" + _suggest(model or job_spec(), loc)
        elif "input" in e and e["type"] not in ("missing",):
            msg += f" (got {e['input']!r})"
        lines.append(f"  {_loc(loc)}: {msg}")
    return "\n".join(lines)


def path_fields() -> list[str]:
    """The input paths a spec may name (`StageDef.paths`): `ragworks submit` re-points each for the cluster."""
    from .stage import registry

    return [f"{name}.{path}" for name, stage in registry().items() for path in stage.paths]


def check_paths(spec: JobBase, spec_dir: Path, source: str) -> JobBase:
    """Every stage's own checks across sections (its input files must exist before any work starts: paths
    become absolute), and every section a stage reads."""
    from .stage import registry

    problems = []
    for name, stage in registry().items():
        if getattr(spec, name, None) is not None:
            problems += [f"  {line}" for line in stage.checked(spec, spec_dir)]
            for need in stage.needs:
                if getattr(spec, need, None) is None:
                    problems.append(f"  {name}: needs {'an' if need[0] in 'aeiou' else 'a'} {need} section "
                                    f"(it reads the {need} stage's output)")
    if problems:
        raise SpecError("\n".join([f"{source}: invalid job spec", *problems]))
    return spec


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...], source: str) -> dict[str, Any]:
    """`section.field=value` pairs (values read as YAML) set on a copy of the spec, torchtune-style."""
    import copy

    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise SpecError(f"{source}: override {item!r} is not KEY=VALUE (e.g. synthesize.limit=16)")
        *parents, leaf = key.strip().split(".")
        node = data
        for i, part in enumerate(parents):
            child = node.setdefault(part, {})
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise SpecError(f"{source}: override {key}: {'.'.join(parents[:i + 1])} is not a section")
            node = child
        try:
            node[leaf] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as err:
            raise SpecError(f"{source}: override {key}: value is not valid YAML: {err}") from None
    return data


def parse_spec(data: dict[str, Any], source: str = "<spec>", spec_dir: Path | None = None,
               overrides: list[str] | tuple[str, ...] = ()) -> JobBase:
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a job spec is a mapping of sections, got {type(data).__name__}")
    if overrides:
        data = apply_overrides(data, overrides, source)
    model = job_spec()
    try:
        spec = model.model_validate(data)
    except ValidationError as err:
        raise SpecError(format_validation_error(err, source, model)) from None
    return check_paths(spec, spec_dir or Path.cwd(), source)


def load_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> JobBase:
    path = Path(path)
    if not path.exists():
        raise SpecError(f"{path}: no such job spec")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise SpecError(f"{path}: not valid YAML: {err}") from None
    return parse_spec(data, str(path), path.parent, overrides)

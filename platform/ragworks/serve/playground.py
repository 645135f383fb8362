"""The playground at `GET /`: one static page shipped with the package, read once."""

from __future__ import annotations

from functools import lru_cache
from importlib.resources import files

from fastapi.responses import HTMLResponse


@lru_cache(maxsize=1)
def _html() -> str:
    return files(__package__).joinpath("playground.html").read_text(encoding="utf-8")


def page() -> HTMLResponse:
    return HTMLResponse(_html())

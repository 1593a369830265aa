"""The files of ``ribsr serve``'s page and of ``ribsr compare``'s reports, shipped as package data.

``compare.js`` and ``compare.css`` are the before/after viewer (a slider, wheel and drag zoom down to single
pixels) that both use: the page loads them from the server, a report inlines them.
"""

from __future__ import annotations

from importlib import resources

# The files the server hands out under /static/, and their content types.
STATIC_FILES = {
    "compare.js": "text/javascript; charset=utf-8",
    "compare.css": "text/css; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "index.html": "text/html; charset=utf-8",
}


def asset_bytes(name: str) -> bytes:
    """The content of the shipped web file ``name`` (one of :data:`STATIC_FILES`)."""
    if name not in STATIC_FILES:
        raise ValueError(f"no web file named {name!r}; the files are {', '.join(sorted(STATIC_FILES))}")
    return resources.files(__name__).joinpath(name).read_bytes()


def asset_text(name: str) -> str:
    """:func:`asset_bytes` as text (UTF-8)."""
    return asset_bytes(name).decode("utf-8")

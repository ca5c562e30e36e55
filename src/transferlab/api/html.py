"""Small HTML pieces for the `_repr_html_` of the API's objects (Jupyter shows them)."""

from __future__ import annotations

import base64
import html as _html
import io
from collections.abc import Iterable, Sequence
from typing import Any

THUMBNAIL_PX = 96  # longer side of a prediction's thumbnail in a notebook


def table(rows: Iterable[Sequence[Any]], header: Sequence[str] | None = None, raw: bool = False) -> str:
    """An HTML table; cells are escaped unless `raw` (cells that are HTML already)."""
    cell = (lambda v: str(v)) if raw else (lambda v: _html.escape(str(v)))
    head = ("<thead><tr>" + "".join(f"<th>{_html.escape(h)}</th>" for h in header) + "</tr></thead>"
            if header else "")
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table>{head}<tbody>{body}</tbody></table>"


def title(text: str) -> str:
    """A bold caption line."""
    return f"<p><b>{_html.escape(text)}</b></p>"


def thumbnail(image: Any, px: int = THUMBNAIL_PX) -> str:
    """An <img> with the image as a small base64 JPEG (a PIL image); "" when there is none."""
    if image is None:
        return ""
    small = image.copy()
    small.thumbnail((px, px))
    buffer = io.BytesIO()
    small.convert("RGB").save(buffer, format="JPEG", quality=85)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img src="data:image/jpeg;base64,{data}" alt="" style="max-width:{px}px"/>'


def percent(value: float | None) -> str:
    """0.8734 -> "87.3%"; None -> "-"."""
    return "-" if value is None else f"{100 * value:.1f}%"


def escape(text: str) -> str:
    """Text made safe inside HTML."""
    return _html.escape(text)

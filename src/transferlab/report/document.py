"""A tiny document model rendered twice: to Markdown (figures linked) and to self-contained HTML.

Building the report once as a list of blocks keeps `REPORT.md` and `report.html` identical in
content; the HTML embeds every PNG as base64 so that the single file can be mailed or archived.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Heading:
    """A section title; level 1 is the document title."""

    text: str
    level: int = 2


@dataclass(frozen=True)
class Paragraph:
    """Plain text; `code` in backticks and [links](url) are rendered in both formats."""

    text: str


@dataclass(frozen=True)
class Bullets:
    """An unordered list of short texts (same inline markup as `Paragraph`)."""

    items: Sequence[str]


@dataclass(frozen=True)
class Table:
    """A table of already formatted cells."""

    headers: Sequence[str]
    rows: Sequence[Sequence[str]]
    caption: str = ""


@dataclass(frozen=True)
class Figure:
    """A PNG file written next to the report; Markdown links it, HTML embeds it."""

    path: Path
    caption: str


@dataclass(frozen=True)
class Code:
    """Preformatted text (configs, environment), collapsible in HTML when `summary` is set."""

    text: str
    language: str = ""
    summary: str = ""


Block = Heading | Paragraph | Bullets | Table | Figure | Code


@dataclass
class Document:
    """An ordered list of blocks with a title."""

    title: str
    blocks: list[Block] = field(default_factory=list)

    def add(self, *blocks: Block) -> None:
        """Append blocks in order."""
        self.blocks.extend(blocks)


# --------------------------------------------------------------------------------------------
# Markdown


def _md_cell(text: str) -> str:
    """Escape the characters that would break a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def to_markdown(doc: Document, base_dir: Path) -> str:
    """Render as GitHub-flavoured Markdown; figure links are relative to `base_dir`."""
    out = [f"# {doc.title}", ""]
    for block in doc.blocks:
        if isinstance(block, Heading):
            out += ["#" * max(1, block.level) + " " + block.text, ""]
        elif isinstance(block, Paragraph):
            out += [block.text, ""]
        elif isinstance(block, Bullets):
            out += [f"- {item}" for item in block.items] + [""]
        elif isinstance(block, Table):
            if block.caption:
                out += [f"*{block.caption}*", ""]
            out.append("| " + " | ".join(_md_cell(h) for h in block.headers) + " |")
            out.append("|" + "|".join("---" for _ in block.headers) + "|")
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
            out.append("")
        elif isinstance(block, Figure):
            rel = Path(block.path).resolve().relative_to(Path(base_dir).resolve()).as_posix()
            out += [f"![{block.caption}]({rel})", "", f"*{block.caption}*", ""]
        elif isinstance(block, Code):
            if block.summary:
                out += [f"**{block.summary}**", ""]
            out += [f"```{block.language}", block.text.rstrip("\n"), "```", ""]
    return "\n".join(out).rstrip() + "\n"


# --------------------------------------------------------------------------------------------
# HTML

_INLINE = re.compile(r"`([^`]+)`|\[([^\]]+)\]\(([^)\s]+)\)")

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1100px;
       margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
caption { caption-side: top; text-align: left; font-style: italic; padding-bottom: 0.3em; }
figure { margin: 1em 0 2em; } figure img { max-width: 100%; height: auto; }
figcaption { font-style: italic; font-size: 0.9em; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
code { background: #f3f3f3; padding: 0 0.2em; }
"""


def _inline_html(text: str) -> str:
    """Escape text, then turn `code` and [text](url) into HTML."""
    parts, last = [], 0
    for match in _INLINE.finditer(text):
        parts.append(html.escape(text[last : match.start()]))
        if match.group(1) is not None:
            parts.append(f"<code>{html.escape(match.group(1))}</code>")
        else:
            parts.append(
                f'<a href="{html.escape(match.group(3), quote=True)}">'
                f"{html.escape(match.group(2))}</a>"
            )
        last = match.end()
    parts.append(html.escape(text[last:]))
    return "".join(parts)


def _png_data_uri(path: Path) -> str:
    """A PNG file as a data: URI."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def to_html(doc: Document) -> str:
    """Render as one self-contained HTML5 page (inline CSS, figures embedded as base64 PNG)."""
    out = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(doc.title)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        f"<h1>{html.escape(doc.title)}</h1>",
    ]
    for block in doc.blocks:
        if isinstance(block, Heading):
            level = min(max(block.level, 1), 6)
            out.append(f"<h{level}>{html.escape(block.text)}</h{level}>")
        elif isinstance(block, Paragraph):
            out.append(f"<p>{_inline_html(block.text)}</p>")
        elif isinstance(block, Bullets):
            out.append("<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in block.items) + "</ul>")
        elif isinstance(block, Table):
            out.append("<table>")
            if block.caption:
                out.append(f"<caption>{_inline_html(block.caption)}</caption>")
            out.append("<thead><tr>" + "".join(f"<th>{html.escape(str(h))}</th>"
                                               for h in block.headers) + "</tr></thead>")
            out.append("<tbody>")
            for row in block.rows:
                out.append("<tr>" + "".join(f"<td>{_inline_html(str(c))}</td>" for c in row) + "</tr>")
            out.append("</tbody></table>")
        elif isinstance(block, Figure):
            out.append(
                f'<figure><img src="{_png_data_uri(block.path)}" alt="{html.escape(block.caption, quote=True)}">'
                f"<figcaption>{_inline_html(block.caption)}</figcaption></figure>"
            )
        elif isinstance(block, Code):
            pre = f"<pre><code>{html.escape(block.text)}</code></pre>"
            if block.summary:
                pre = f"<details><summary>{html.escape(block.summary)}</summary>{pre}</details>"
            out.append(pre)
    out += ["</body>", "</html>", ""]
    return "\n".join(out)

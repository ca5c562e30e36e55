"""The audit's files: audit.json (everything), audit.csv (one row per finding), audit.html (a page
of thumbnails a person can scan: duplicate groups side by side, suspected labels with the class
the model believes). Every file is written atomically; the user's images are never touched.

The CSV is also what `--exclude` reads: its `path` column names the files to drop (delete the
rows you want to keep before passing it).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from transferlab.audit.findings import KIND_TEXT, KINDS, AuditResult, Finding
from transferlab.io import atomic_write_text

AUDIT_JSON, AUDIT_CSV, AUDIT_HTML = "audit.json", "audit.csv", "audit.html"
CSV_COLUMNS = ("path", "split", "row", "label", "kind", "score", "group", "suggested", "other", "detail")
THUMB_PX = 96
MAX_SHOWN = 60  # thumbnails per kind on the page (the CSV has them all)


def _clean(value: Any) -> Any:
    """JSON-safe: NaN and infinities become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def audit_payload(result: AuditResult) -> dict[str, Any]:
    """The audit.json payload."""
    return _clean({
        "dataset": result.dataset, "classes": result.classes, "split_sizes": result.split_sizes,
        "class_counts": result.class_counts, "settings": result.settings, "timings_s": result.timings_s,
        "counts": {kind: result.count(kind) for kind in KINDS},
        "groups": result.groups, "findings": [f.record() for f in result.findings],
    })


def _csv_text(findings: Iterable[Finding]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for f in findings:
        row = f.record()
        row["score"] = f"{f.score:.4g}"
        writer.writerow({k: "" if row[k] is None else row[k] for k in CSV_COLUMNS})
    return buf.getvalue()


def _thumb(image: np.ndarray) -> str:
    """A PNG data URI of one stored image, at most THUMB_PX on its longer side."""
    from PIL import Image

    im = Image.fromarray(np.asarray(image))
    im.thumbnail((THUMB_PX, THUMB_PX))
    if max(im.size) < THUMB_PX // 2:  # CIFAR's 32 px: enlarge with hard edges so it can be seen
        scale = THUMB_PX // max(im.size)
        im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _card(f: Finding, image: np.ndarray, extra: str = "") -> str:
    e = html.escape
    return (f'<figure><img src="{_thumb(image)}" alt="{e(f.path)}"><figcaption><b>{e(f.label)}</b> '
            f"{e(f.split)}{extra}<br><small>{e(f.path)}</small></figcaption></figure>")


def _html(result: AuditResult, images: dict[str, np.ndarray], files_index: dict[str, tuple[str, int]]) -> str:
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>Audit of {e(result.dataset)}</title>",
             "<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:80em}"
             "figure{display:inline-block;margin:4px;width:120px;vertical-align:top;font-size:12px;overflow-wrap:anywhere}"
             "figure img{width:96px;height:96px;object-fit:contain;background:#eee;image-rendering:pixelated}"
             ".group{border:1px solid #ccc;padding:4px;margin:6px 0}.bad{color:#b00}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}"
             "</style></head><body>",
             f"<h1>Audit of {e(result.dataset)}</h1>",
             "<p>" + ", ".join(f"{e(s)}: {n:,}" for s, n in result.split_sizes.items())
             + f" images, {len(result.classes)} classes; described with {e(str(result.settings.get('model')))}. "
             "The user's files are never changed: pass <code>audit.csv</code> (rows you want dropped) to "
             "<code>--exclude</code>.</p>",
             "<h2>Summary</h2><table><tr><th>kind</th><th>images</th><th>meaning</th></tr>"]
    for kind in KINDS:
        parts.append(f"<tr><td>{kind}</td><td>{result.count(kind):,}</td>"
                     f"<td style='text-align:left'>{e(KIND_TEXT[kind])}</td></tr>")
    parts.append("</table><h2>Class balance</h2><table><tr><th>class</th>"
                 + "".join(f"<th>{e(s)}</th>" for s in result.class_counts) + "</tr>")
    for c, name in enumerate(result.classes):
        parts.append(f"<tr><td style='text-align:left'>{e(name)}</td>"
                     + "".join(f"<td>{counts[c]:,}</td>" for counts in result.class_counts.values()) + "</tr>")
    parts.append("</table>")

    def image_of(path: str) -> np.ndarray:
        split, row = files_index[path]
        return images[split][row]

    if result.groups:
        parts.append(f"<h2>Duplicate groups ({len(result.groups):,})</h2>")
        for g in result.groups[:MAX_SHOWN]:
            cls = " bad" if len(g["splits"]) > 1 or len(g["labels"]) > 1 else ""
            head = ("leakage across " + " and ".join(g["splits"]) if len(g["splits"]) > 1 else "within "
                    + g["splits"][0]) + (" (exact)" if g["exact"] else " (near)")
            if len(g["labels"]) > 1:
                head += ", conflicting labels " + ", ".join(g["labels"])
            parts.append(f"<div class='group{cls}'><div>group {g['group']}: {e(head)}</div>")
            for m in g["members"]:
                f = Finding(m["path"], m["split"], files_index[m["path"]][1], m["label"], "", 0.0)
                parts.append(_card(f, image_of(m["path"])))
            parts.append("</div>")
    for kind in ("label_issue", "outlier", "blank", "tiny", "extreme_aspect"):
        found = result.of_kind(kind)
        if not found:
            continue
        parts.append(f"<h2>{kind.replace('_', ' ')} ({len(found):,}): {e(KIND_TEXT[kind])}</h2><div>")
        for f in found[:MAX_SHOWN]:
            extra = f" &rarr; <span class='bad'>{e(f.suggested)}</span>" if f.suggested else ""
            extra += f"<br>{e(f.detail)}" if f.detail else ""
            parts.append(_card(f, image_of(f.path), extra))
        parts.append("</div>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_audit(result: AuditResult, out_dir: str | Path, images: dict[str, np.ndarray],
                files_index: dict[str, tuple[str, int]]) -> dict[str, Path]:
    """Write audit.json, audit.csv and audit.html into `out_dir`; returns their paths.

    Args:
        result: what `audit_dataset` found.
        out_dir: the folder (created; an existing file there is an error).
        images: per split, the stored images (thumbnails are made from them).
        files_index: path -> (split, row) of every image named in the findings.
    """
    from transferlab.errors import TransferlabError

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise TransferlabError(f"the audit output {out} is a file; give a folder path (--out DIR)")
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / AUDIT_JSON, "csv": out / AUDIT_CSV, "html": out / AUDIT_HTML}
    atomic_write_text(paths["json"], json.dumps(audit_payload(result), indent=1))
    atomic_write_text(paths["csv"], _csv_text(result.findings))
    atomic_write_text(paths["html"], _html(result, images, files_index))
    return paths

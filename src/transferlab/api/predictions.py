"""What `predict` returns from Python: one `Prediction` per image, in a list that shows itself.

The numbers come from `transferlab.predict.predict_images`, the function `transferlab predict`
runs, so the command line and the API cannot disagree; this module only gives them the
shape a Python user reaches for (`label`, `score`, `top` as name/probability pairs).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from transferlab.api import html


@dataclasses.dataclass(frozen=True)
class Prediction:
    """The top classes of one image, best first.

    Attributes:
        source: the image's path, or `image[i]` for the i-th image given in memory.
        label: the top-1 class name, or "unknown" when `score` is below the `min_confidence`
            the prediction was asked with.
        score: the top-1 probability (calibrated: softmax of the logits over the run's
            temperature).
        top: the k best classes as (name, probability) pairs, best first.
        indices: their class indices, in the same order.
        true: the image's true class when known (a run's test mistakes), else None.
    """

    source: str
    top: list[tuple[str, float]]
    indices: list[int]
    true: str | None = None
    image: Any = dataclasses.field(default=None, repr=False, compare=False)  # PIL image for thumbnails
    answer: str | None = None  # "unknown" below min_confidence; None: the top-1 class

    @property
    def label(self) -> str:
        """The answer: the top-1 class name, or "unknown" below the asked confidence."""
        return self.answer or self.top[0][0]

    @property
    def score(self) -> float:
        """The top-1 class's probability."""
        return self.top[0][1]

    def to_dict(self) -> dict[str, Any]:
        """`{"image": SOURCE, "top": [{"index", "name", "prob"}, ...]}` (`transferlab predict --json`)."""
        out: dict[str, Any] = {"image": self.source, "top": [
            {"index": i, "name": name, "prob": prob}
            for i, (name, prob) in zip(self.indices, self.top, strict=True)]}
        out["answer"] = self.label
        if self.true is not None:
            out["true"] = self.true
        return out

    def thumbnail(self) -> Any:
        """The image as a PIL image (read from `source` when it is a file), or None."""
        if self.image is not None:
            return self.image
        path = Path(self.source)
        if path.is_file():
            from PIL import Image

            try:
                with Image.open(path) as im:
                    im.draft("RGB", (2 * html.THUMBNAIL_PX, 2 * html.THUMBNAIL_PX))
                    return im.convert("RGB")
            except OSError:
                return None
        return None


class Predictions(list[Prediction]):
    """A list of `Prediction`s (one per image, in input order) that Jupyter shows as a table
    with a thumbnail of each image."""

    def labels(self) -> list[str]:
        """The top-1 class name of every image."""
        return [p.label for p in self]

    def _repr_html_(self) -> str:
        known = any(p.true is not None for p in self)
        header = ["image", "source", *(["true"] if known else []), "label", "score", "top"]
        rows = []
        for p in self:
            others = ", ".join(f"{name} {html.percent(prob)}" for name, prob in p.top[1:])
            cells = [html.thumbnail(p.thumbnail()), html.escape(p.source),
                     *([html.escape(p.true or "")] if known else []),
                     f"<b>{html.escape(p.label)}</b>", html.percent(p.score), html.escape(others)]
            rows.append(cells)
        return html.title(f"{len(self)} predictions") + html.table(rows, header, raw=True)

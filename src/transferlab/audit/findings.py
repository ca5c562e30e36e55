"""The audit's findings: one record per flagged image and reason, and how they are grouped."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# Kinds, in the order the report shows them.
KINDS = ("leakage", "duplicate", "label_conflict", "label_issue", "outlier", "blank", "tiny",
         "extreme_aspect")
KIND_TEXT = {
    "leakage": "the same photo in two splits: the copy outside train inflates the test score",
    "duplicate": "the same photo twice in one split",
    "label_conflict": "copies of one photo filed under different classes",
    "label_issue": "the pretrained features say another class",
    "outlier": "far from every other image in feature space",
    "blank": "near-constant pixels",
    "tiny": f"source image smaller than {16} px on a side",
    "extreme_aspect": "extreme aspect ratio",
}


@dataclass
class Finding:
    """One flagged image and why.

    Attributes:
        path: the image's path in the source (or `<split>[<row>]` when the source names none).
        split: train, val or test.
        row: its row in the split.
        label: its class name.
        kind: one of KINDS.
        score: strength of the finding (similarity for copies, 1 - probability of the given label
            for label issues, robust z-score for outliers, pixel std for blank images, ...).
        group: duplicate group id (copies share it), else None.
        suggested: the class the model believes (label issues), else None.
        other: the copy kept (duplicates, leakage), else None.
    """

    path: str
    split: str
    row: int
    label: str
    kind: str
    score: float
    group: int | None = None
    suggested: str | None = None
    other: str | None = None
    detail: str = ""

    def record(self) -> dict[str, Any]:
        """A JSON/CSV-ready dict."""
        return asdict(self)


@dataclass
class AuditResult:
    """Everything the audit found, with the settings that produced it."""

    dataset: str
    classes: list[str]
    split_sizes: dict[str, int]
    class_counts: dict[str, list[int]]  # per split, images per class in class order
    findings: list[Finding] = field(default_factory=list)
    groups: list[dict[str, Any]] = field(default_factory=list)  # duplicate groups with members
    settings: dict[str, Any] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)

    def count(self, kind: str) -> int:
        """Findings of one kind."""
        return sum(f.kind == kind for f in self.findings)

    def of_kind(self, kind: str) -> list[Finding]:
        """Findings of one kind, strongest first (as written)."""
        return [f for f in self.findings if f.kind == kind]

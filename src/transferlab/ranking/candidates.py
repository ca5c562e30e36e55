"""Which backbones a ranking scores, and where each one's pretrained weights come from.

Offline (`--weights-dir DIR`) a candidate's weights are the one `.safetensors` file in DIR whose
metadata `architecture` the model accepts (the same search `create_model(weights_dir=...)` and
`transferlab train --weights-dir` do). Online (`--pretrained`) they come from the model's timm hub
source. A candidate without weights is skipped with the reason; an unknown model name is an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from transferlab.errors import TransferlabError
from transferlab.models import find_weights, get_model_entry, list_models


@dataclass(frozen=True)
class Candidate:
    """One backbone to score.

    Attributes:
        model: registry name or `timm:<name>`.
        weights: the weights file (offline), or None for the timm hub (online).
        source: where the weights come from, for tables and messages.
    """

    model: str
    weights: Path | None
    source: str


@dataclass(frozen=True)
class Skipped:
    """A requested candidate that is not scored, and why."""

    model: str
    reason: str


def default_models() -> list[str]:
    """Every registry model that has pretrained weights (the from-scratch ones have none)."""
    return [name for name in list_models() if get_model_entry(name).pretrained_source is not None]


def resolve_candidates(models: Sequence[str] | None, weights_dir: str | Path | None,
                       pretrained: bool) -> tuple[list[Candidate], list[Skipped]]:
    """Find the weights of every requested model.

    Args:
        models: names (registry or timm:<name>); None or empty = `default_models()`.
        weights_dir: folder searched first for a matching weights file.
        pretrained: fall back to (or only use) the timm hub.

    Returns:
        (candidates with weights, skipped models with the reason).

    Raises:
        TransferlabError: an unknown model name, a duplicate, or neither a weights folder nor
            --pretrained.
    """
    if weights_dir is None and not pretrained:
        raise TransferlabError("rank needs pretrained weights: pass --weights-dir DIR (offline "
                               "weights files, e.g. ../shared/weights) or --pretrained (timm hub)")
    names = list(models) if models else default_models()
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise TransferlabError(f"--models lists {', '.join(duplicates)} twice; name each model once")
    entries = {name: get_model_entry(name) for name in names}  # unknown names raise here
    candidates: list[Candidate] = []
    skipped: list[Skipped] = []
    for name, entry in entries.items():
        reasons = []
        if weights_dir is not None:
            try:
                path = find_weights(weights_dir, entry.accepts(), name)
                candidates.append(Candidate(name, path, f"{Path(weights_dir).name}/{path.name}"))
                continue
            except TransferlabError as err:
                reasons.append(str(err))
        if pretrained:
            if entry.pretrained_source is not None:
                candidates.append(Candidate(name, None, entry.pretrained_source))
                continue
            reasons.append(f"{name} has no pretrained weights on the timm hub (it is trained from scratch)")
        skipped.append(Skipped(name, "; ".join(reasons)))
    return candidates, skipped

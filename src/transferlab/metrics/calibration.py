"""How far to trust a confidence: expected calibration error, reliability bins, temperature
scaling, and the accuracy a confidence threshold buys at what coverage.

Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017) divides
the logits by one scalar T fitted on held-out data by minimising the negative log-likelihood. It
never changes the top-1 class (the order of the logits is kept) and is the method that paper found
best among the simple ones. The fit here is exact and deterministic: the NLL is convex in 1/T, so
its derivative is bisected; no optimiser, no random start.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# T is kept within these bounds: a validation split the model gets entirely right drives the
# unconstrained fit to T -> 0 (ever sharper), which no held-out data would support.
TEMPERATURE_RANGE = (0.05, 20.0)
ECE_BINS = 15  # equal-width confidence bins, as in Guo et al.
COVERAGE_THRESHOLDS = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Class probabilities (float64) of logits (N, k) divided by `temperature`."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _nll_slope(logits: np.ndarray, labels: np.ndarray, inverse_t: float) -> float:
    """d NLL / d(1/T): mean over images of E_p[z] - z_label (increasing in 1/T: the NLL is convex)."""
    p = softmax(logits * inverse_t)
    return float(((p * logits).sum(axis=1) - logits[np.arange(len(labels)), labels]).mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray, iterations: int = 60) -> float:
    """The temperature T that minimises the NLL of softmax(logits / T) on these labels.

    Args:
        logits: (N, k) held-out logits (the validation split, never the test split).
        labels: (N,) their true classes.
        iterations: bisection steps on 1/T (60 halve the bracket to far below float precision).

    Returns:
        T within TEMPERATURE_RANGE; 1.0 when there is nothing to fit (no images).
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if logits.ndim != 2 or len(logits) == 0 or len(logits) != len(labels):
        return 1.0
    lo, hi = 1.0 / TEMPERATURE_RANGE[1], 1.0 / TEMPERATURE_RANGE[0]
    if _nll_slope(logits, labels, lo) >= 0:  # the NLL rises from the flattest end already
        return TEMPERATURE_RANGE[1]
    if _nll_slope(logits, labels, hi) <= 0:  # still falling at the sharpest allowed
        return TEMPERATURE_RANGE[0]
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        if _nll_slope(logits, labels, mid) > 0:
            hi = mid
        else:
            lo = mid
    return float(1.0 / (0.5 * (lo + hi)))


@dataclass(frozen=True)
class ReliabilityBin:
    """Images whose top-1 confidence fell in [low, high)."""

    low: float
    high: float
    count: int
    confidence: float  # mean top-1 probability (NaN when empty)
    accuracy: float  # share answered right (NaN when empty)


def reliability_bins(probabilities: np.ndarray, labels: np.ndarray,
                     bins: int = ECE_BINS) -> list[ReliabilityBin]:
    """Equal-width bins of top-1 confidence with each bin's mean confidence and accuracy."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == np.asarray(labels)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # The last bin is closed so that a confidence of exactly 1.0 is counted.
    index = np.minimum(np.searchsorted(edges, confidence, side="right") - 1, bins - 1)
    out = []
    for b in range(bins):
        member = index == b
        n = int(member.sum())
        out.append(ReliabilityBin(float(edges[b]), float(edges[b + 1]), n,
                                  float(confidence[member].mean()) if n else float("nan"),
                                  float(correct[member].mean()) if n else float("nan")))
    return out


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray,
                               bins: int = ECE_BINS) -> float:
    """ECE: the count-weighted mean gap between confidence and accuracy over the bins (0 is perfect)."""
    table = reliability_bins(probabilities, labels, bins)
    total = sum(b.count for b in table)
    if total == 0:
        return float("nan")
    return float(sum(b.count * abs(b.accuracy - b.confidence) for b in table if b.count) / total)


@dataclass(frozen=True)
class CoverageRow:
    """What answering only at top-1 confidence >= `threshold` (else `unknown`) gives."""

    threshold: float
    coverage: float  # share of images answered
    accuracy: float  # accuracy on the answered images (NaN when none is answered)
    answered: int


def coverage_table(probabilities: np.ndarray, labels: np.ndarray,
                   thresholds: Sequence[float] = COVERAGE_THRESHOLDS) -> list[CoverageRow]:
    """The accuracy/coverage trade-off of `predict --min-confidence P` for each P in `thresholds`.

    An image is answered when its top-1 probability is at least P, exactly as `predict` decides.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == np.asarray(labels)
    rows = []
    for p in thresholds:
        answered = confidence >= p
        n = int(answered.sum())
        rows.append(CoverageRow(float(p), n / max(len(confidence), 1),
                                float(correct[answered].mean()) if n else float("nan"), n))
    return rows

"""How far the run's confidence can be trusted: ECE, reliability bins and the accuracy/coverage
table, before and after the temperature the run fitted on its validation split.

The arithmetic lives in `transferlab.metrics.calibration` (training fits the temperature with
it); this module gathers it for one set of test predictions, in the shape the files and the
report show.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from transferlab.metrics import (
    CoverageRow,
    ReliabilityBin,
    coverage_table,
    expected_calibration_error,
    reliability_bins,
    softmax,
)


def _num(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


@dataclass(frozen=True)
class Calibration:
    """Calibration of test predictions with raw probabilities and with the run's temperature.

    The `calibrated_*` fields are None when the run fitted no temperature (an older run).
    """

    temperature: float | None
    ece: float
    bins: list[ReliabilityBin]
    coverage: list[CoverageRow]
    calibrated_ece: float | None = None
    calibrated_bins: list[ReliabilityBin] | None = None
    calibrated_coverage: list[CoverageRow] | None = None

    @property
    def chosen_coverage(self) -> list[CoverageRow]:
        """The coverage rows `predict` follows: calibrated when the run has a temperature."""
        return self.calibrated_coverage if self.calibrated_coverage is not None else self.coverage

    def to_dict(self) -> dict:
        """JSON-ready: NaN (an empty bin, no image answered) becomes None."""
        def rows(items: list | None) -> list[dict] | None:
            if items is None:
                return None
            return [{k: (_num(v) if isinstance(v, float) else v) for k, v in asdict(r).items()}
                    for r in items]

        return {
            "temperature": self.temperature,
            "ece": _num(self.ece),
            "ece_calibrated": None if self.calibrated_ece is None else _num(self.calibrated_ece),
            "reliability": rows(self.bins),
            "reliability_calibrated": rows(self.calibrated_bins),
            "coverage": rows(self.coverage),
            "coverage_calibrated": rows(self.calibrated_coverage),
        }


def calibrate(logits: np.ndarray, labels: np.ndarray, temperature: float | None) -> Calibration:
    """ECE, reliability bins and coverage of `logits` at T = 1 and at `temperature`."""
    raw = softmax(logits)
    out = {"temperature": temperature, "ece": expected_calibration_error(raw, labels),
           "bins": reliability_bins(raw, labels), "coverage": coverage_table(raw, labels)}
    if temperature is not None:
        scaled = softmax(logits, temperature)
        out |= {"calibrated_ece": expected_calibration_error(scaled, labels),
                "calibrated_bins": reliability_bins(scaled, labels),
                "calibrated_coverage": coverage_table(scaled, labels)}
    return Calibration(**out)

"""Evaluate a finished run: its numbers from the saved predictions (or best.pt), and on request
the error gallery with heatmaps from best.pt."""

from __future__ import annotations

from pathlib import Path

from transferlab.errors import TransferlabError
from transferlab.evaluation.metrics import (
    PREDICTIONS_FILE,
    Evaluation,
    evaluate_predictions,
    load_predictions,
    predict_from_checkpoint,
    run_temperature,
)


def evaluate_run(run_dir: Path, device: str | None = None, num_pairs: int = 20,
                 gallery: bool = False, heatmaps: bool = True) -> Evaluation:
    """Evaluate a run directory from its saved test predictions, else from its best checkpoint.

    Args:
        run_dir: the run directory.
        device: where to run best.pt (predictions, heatmaps); default cuda if available.
        num_pairs: most-confused pairs to keep.
        gallery: also choose the error gallery and load its images (needs best.pt and the
            run's dataset).
        heatmaps: draw class-activation heatmaps over the gallery (needs captum).

    The calibration uses the temperature the run fitted on its validation split.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise TransferlabError(f"run directory {run_dir} does not exist; check the path")
    if (run_dir / PREDICTIONS_FILE).is_file():
        labels, logits, classes = load_predictions(run_dir)
        source = PREDICTIONS_FILE
    else:
        labels, logits, classes = predict_from_checkpoint(run_dir, device=device)
        source = "best.pt"
    result = evaluate_predictions(labels, logits, classes, num_pairs=num_pairs, source=source,
                                  temperature=run_temperature(run_dir))
    if gallery:
        from transferlab.evaluation.gallery import gallery_for_run

        result.gallery = gallery_for_run(run_dir, result.labels, result.logits, classes,
                                         result.confused_pairs, result.calibration.temperature,
                                         device=device, heatmaps=heatmaps)
    return result

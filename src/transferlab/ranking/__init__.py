"""Rank pretrained backbones for a dataset from frozen features (LogME, linear probe, timing).

`transferlab rank` is the CLI; `compare --from-rank` fine-tunes the best-ranked ones.
"""

from transferlab.ranking.candidates import Candidate, Skipped, default_models, resolve_candidates
from transferlab.ranking.logme import log_evidence, logme
from transferlab.ranking.probe import ProbeResult, linear_probe
from transferlab.ranking.rank import RankOptions, format_table, rank_models, subset_fractions
from transferlab.results.ranking import RANK_FILE, load_rank

__all__ = [
    "RANK_FILE",
    "Candidate",
    "ProbeResult",
    "RankOptions",
    "Skipped",
    "default_models",
    "format_table",
    "linear_probe",
    "load_rank",
    "log_evidence",
    "logme",
    "rank_models",
    "resolve_candidates",
    "subset_fractions",
]

"""Training: the engine (train_one_epoch, evaluate, fit), cached features, checkpoints, DDP, runs.

Library entry points::

    from transferlab.config import load_config
    from transferlab.training import train_run, resume_run, is_finished

    run_dir = train_run(load_config("configs/study_inception_v3.yaml"))
"""

from transferlab.training.engine import Batches, EarlyStopping, evaluate, fit, train_one_epoch
from transferlab.training.run import is_finished, resume_run, train_run

__all__ = ["Batches", "EarlyStopping", "evaluate", "fit", "is_finished", "resume_run",
           "train_one_epoch", "train_run"]

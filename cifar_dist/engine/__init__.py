"""The training engine: one run of a config, from start (or a resume) to result.json.

    from cifar_dist.engine import train
    status = train(cfg, resume="auto")   # 0 done, 3 stopped by a signal, 4 non-finite loss

The engine never imports the command line (`cifar_dist.cli`); it raises `InputError` subclasses.
"""

from cifar_dist.engine.evaluate import evaluate, should_stop_early
from cifar_dist.engine.loop import train, train_one_epoch
from cifar_dist.engine.session import StepParts
from cifar_dist.engine.train_state import TrainState

__all__ = [
    "StepParts",
    "TrainState",
    "evaluate",
    "should_stop_early",
    "train",
    "train_one_epoch",
]

"""Training: optimiser, sharded step, orbax checkpoints, the phase loop."""

from reftrain.train.checkpoint import Checkpoints
from reftrain.train.loop import PhaseRun, TrainingError, train_phase
from reftrain.train.optim import make_optimizer
from reftrain.train.state import abstract_state, init_state, state_shardings
from reftrain.train.step import make_train_step

__all__ = [
    "Checkpoints",
    "PhaseRun",
    "TrainingError",
    "abstract_state",
    "init_state",
    "make_optimizer",
    "make_train_step",
    "state_shardings",
    "train_phase",
]

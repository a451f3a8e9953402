"""Training, generic over the loss: configs, data, methods, the trainer and its checkpoints.

    from memjax.train import load_train_config, run
    cfg = load_train_config("configs/train_tiny.yaml", ["steps=20"])
    state = run(cfg, progress=True)

or `memjax train CONFIG.yaml|CONFIG.gin [key=value ...]`.
"""

from memjax.train.checkpoint import (CheckpointError, Checkpointer, CheckpointWarning,
                                     load_state, load_trainable)
from memjax.train.config import MethodConfig, TrainConfig, TrimKVConfig, load_train_config
from memjax.train.data import ByteTokenizer, TrainData
from memjax.train.methods import METHODS, LossFn, Method, get_method
from memjax.train.partition import merge, partition
from memjax.train.run import build_model, run, setup
from memjax.train.trainer import (NonFiniteLossError, TrainState, init_state, make_optimizer,
                                  make_train_step, train)

__all__ = [
    "METHODS", "ByteTokenizer", "CheckpointError", "CheckpointWarning", "Checkpointer",
    "LossFn", "Method", "MethodConfig",
    "NonFiniteLossError", "TrainConfig", "TrainData", "TrainState", "TrimKVConfig",
    "build_model", "get_method", "init_state", "load_state", "load_train_config",
    "load_trainable",
    "make_optimizer", "make_train_step", "merge", "partition", "run", "setup", "train",
]

"""Turn a TRIM-KV training run into a gate file that `memjax.load(..., gates=FILE)` reads."""

from __future__ import annotations

import importlib.metadata
import pathlib

from memjax.config import config_to_dict
from memjax.io import load_checkpoint
from memjax.retention.store import save_gates
from memjax.train.checkpoint import load_trainable
from memjax.train.config import load_train_config
from memjax.train.run import TINY_MODEL, tiny_model_config


def export_gates(run_dir: str | pathlib.Path, out: str | pathlib.Path,
                 step: int | None = None) -> pathlib.Path:
  """Write the gates of `run_dir`'s checkpoint `step` (default: newest) to `out` (.npz).

  `run_dir` is a training run's output_dir: its config.yaml says which model the gates
  belong to and where the checkpoints are; the config, step and losses travel in the
  file's metadata.

  Raises:
    FileNotFoundError: no config.yaml or no checkpoint in the run.
    ValueError: the run did not train retention gates.
  """
  run_dir = pathlib.Path(run_dir)
  config_file = run_dir / "config.yaml"
  if not config_file.is_file():
    raise FileNotFoundError(f"{str(config_file)!r} not found: is {str(run_dir)!r} the "
                            "output_dir of a `memjax train` run?")
  cfg = load_train_config(str(config_file))
  checkpoints = cfg.checkpoint_dir or run_dir / "checkpoints"
  trainable, step = load_trainable(checkpoints, step)
  gates = trainable.get("layers", {}).get("gate")
  if gates is None:
    raise ValueError(f"the run in {str(run_dir)!r} trained {sorted(trainable)} but no "
                     "retention gates (method trim_kv)")
  if cfg.model == TINY_MODEL:
    model_cfg = tiny_model_config(cfg)
  else:
    model_cfg, _, _ = load_checkpoint(cfg.model)
  meta = {"model": cfg.model, "step": int(step), "train_config": config_to_dict(cfg),
          "memjax_version": importlib.metadata.version("memjax")}
  return save_gates(out, gates, model_cfg, meta)

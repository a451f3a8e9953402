"""Trained retention gates on disk: one small .npz per (model, training run).

A gate file holds the four stacked arrays of `gate.init_gate_params` (w1 [L, D, Hg],
b1 [L, Hg], w2 [L, Hg, Hkv], bias [L, Hkv], float32) and a JSON string "meta" that says
which model they belong to, the shapes, the training step and the training config.

Gates that ship with memjax are named per model, e.g. `load_gates("trimkv", cfg,
model="smollm2-135m")`; any other argument is a path to a file written by `save_gates`
(`memjax export-gates RUN_DIR` writes one from a training run's last checkpoint).
"""

from __future__ import annotations

import json
import pathlib
import zipfile
from typing import Any

import numpy as np

from memjax.models.config import ModelConfig
from memjax.retention.gate import GateParams

GATE_KEYS = ("w1", "b1", "w2", "bias")
SHIPPED_DIR = pathlib.Path(__file__).parent / "gates"
# (model name, gates name) -> file in SHIPPED_DIR
SHIPPED = {("smollm2-135m", "trimkv"): "smollm2-135m-trimkv.npz"}


class GateFileError(ValueError):
  """A gate file is missing, unreadable, or does not fit the model; the message names it."""


def save_gates(path: str | pathlib.Path, gate_params: GateParams, cfg: ModelConfig,
               meta: dict[str, Any]) -> pathlib.Path:
  """Write gates for the model `cfg` to `path` (.npz), with `meta` (JSON-able) beside them."""
  arrays = {k: np.asarray(gate_params[k], np.float32) for k in GATE_KEYS}
  _check_shapes(arrays, cfg, str(path))
  meta = dict(meta, n_layers=cfg.n_layers, d_model=cfg.d_model, n_kv_heads=cfg.n_kv_heads,
              hidden=int(arrays["w1"].shape[-1]))
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with path.open("wb") as f:
    np.savez(f, meta=np.array(json.dumps(meta, sort_keys=True)), **arrays)
  return path


def gate_path(name_or_path: str | pathlib.Path, model: str | None = None) -> pathlib.Path:
  """The file of shipped gates `name_or_path` for `model`, or `name_or_path` as a path.

  Raises:
    GateFileError: neither a shipped name for this model nor an existing file.
  """
  shipped = SHIPPED.get((model, str(name_or_path)))
  if shipped is not None:
    return SHIPPED_DIR / shipped
  path = pathlib.Path(name_or_path)
  if path.is_file():
    return path
  names = sorted(g for m, g in SHIPPED if m == model)
  raise GateFileError(
      f"gates {str(name_or_path)!r} are neither shipped for model {model!r} (shipped: "
      f"{names or 'none'}) nor an existing file; export a training run's gates with "
      f"`memjax export-gates RUN_DIR --out FILE.npz`")


def load_gates(name_or_path: str | pathlib.Path, cfg: ModelConfig,
               model: str | None = None) -> tuple[GateParams, dict[str, Any]]:
  """(float32 gate params as numpy arrays, meta) for the model `cfg`.

  Args:
    name_or_path: a shipped gates name for `model` (e.g. "trimkv") or an .npz path.
    cfg: the model the gates must fit (layers, width, KV heads).
    model: the model's registry name, to find shipped gates.

  Raises:
    GateFileError: missing, truncated or corrupt file, missing arrays, non-finite values,
      or shapes that do not fit `cfg`.
  """
  path = gate_path(name_or_path, model)
  try:
    with np.load(path, allow_pickle=False) as npz:
      missing = [k for k in (*GATE_KEYS, "meta") if k not in npz.files]
      if missing:
        raise GateFileError(f"gate file {str(path)!r} lacks {missing}; it was not written by "
                            "memjax.retention.store.save_gates")
      arrays = {k: np.asarray(npz[k], np.float32) for k in GATE_KEYS}
      meta = json.loads(str(npz["meta"]))
  except (OSError, EOFError, zipfile.BadZipFile, ValueError, KeyError) as err:
    if isinstance(err, GateFileError):
      raise
    raise GateFileError(f"gate file {str(path)!r} is truncated or corrupt ({err}); "
                        "export it again with `memjax export-gates`") from err
  _check_shapes(arrays, cfg, str(path))
  bad = [k for k, a in arrays.items() if not np.all(np.isfinite(a))]
  if bad:
    raise GateFileError(f"gate file {str(path)!r} has non-finite values in {bad}")
  return arrays, meta


def _check_shapes(arrays: dict[str, np.ndarray], cfg: ModelConfig, where: str) -> None:
  """Raise GateFileError unless the arrays are gates of a model shaped like `cfg`."""
  hidden = arrays["w1"].shape[-1] if arrays["w1"].ndim == 3 else -1
  want = {"w1": (cfg.n_layers, cfg.d_model, hidden), "b1": (cfg.n_layers, hidden),
          "w2": (cfg.n_layers, hidden, cfg.n_kv_heads), "bias": (cfg.n_layers, cfg.n_kv_heads)}
  wrong = {k: list(arrays[k].shape) for k in GATE_KEYS if arrays[k].shape != want[k]}
  if wrong:
    raise GateFileError(
        f"gates in {where} do not fit a model with {cfg.n_layers} layers, width {cfg.d_model} "
        f"and {cfg.n_kv_heads} KV heads: shapes {wrong}; were they trained for another model?")

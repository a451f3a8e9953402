"""The parameter pytree every loader fills: allocation and checked stores.

Names and shapes come from the family's parameter table (`memjax.models.table`); for the
Llama family:
```
params = {
  "embed": [V, D],
  "layers": {                       # stacked over layers, leading axis L
    "attn_norm": [L, D],
    "wq": [L, D, Hq*Dh], "wk": [L, D, Hkv*Dh], "wv": [L, D, Hkv*Dh], "wo": [L, Hq*Dh, D],
    "mlp_norm": [L, D],
    "w_gate": [L, D, F], "w_up": [L, D, F], "w_down": [L, F, D],
  },
  "final_norm": [D],
  "lm_head": [D, V],                # only when cfg.tie_embeddings is False
}
```
Other families add rows (q/k/v biases "bq" [L, Hq*Dh] ..., head norms "q_norm" [L, Dh],
Gemma's "attn_post_norm" / "mlp_post_norm" [L, D]). Matrices are applied as `x @ w`; q/k
output columns are laid out as [heads, Dh] in the Hugging Face "rotate_half" RoPE
convention.
"""

from __future__ import annotations

import numpy as np

from memjax.io.errors import ModelFileError
from memjax.models.config import ModelConfig
from memjax.models.families import param_shapes, param_table
from memjax.models.table import Tensor

__all__ = ["allocate_params", "checkpoint_names", "fill_params", "param_shapes", "store"]


def allocate_params(cfg: ModelConfig) -> dict:
  """Uninitialised host arrays of dtype `cfg.dtype` for every parameter (see `param_shapes`)."""
  dtype = np.dtype(cfg.jnp_dtype)
  shapes = param_shapes(cfg)
  params = {key: np.empty(shape, dtype) for key, shape in shapes.items() if key != "layers"}
  params["layers"] = {key: np.empty(shape, dtype) for key, shape in shapes["layers"].items()}
  return params


def store(params: dict, tensor: Tensor, value: np.ndarray, *, layer: int | None, source: str,
          file: object) -> None:
  """Copies `value` (float, numpy order, already in memjax's layout) into the parameter
  `tensor` (of layer `layer` for a per-layer one).

  Converts to the destination dtype; raises ModelFileError naming `file` and the tensor `source`
  when the shape does not match the config.
  """
  key = tensor.path.split("/", 1)[1] if tensor.per_layer else tensor.path
  dest = params["layers"][key][layer] if tensor.per_layer else params[key]
  if value.shape != dest.shape:
    raise ModelFileError(
        f"{file}: tensor {source!r} has shape {tuple(value.shape)}, but the config implies "
        f"{tuple(dest.shape)} for {key!r}")
  dest[...] = value


def checkpoint_names(cfg: ModelConfig, tensors: tuple[Tensor, ...], fmt: str) -> dict:
  """Checkpoint name -> (table row, layer or None) of every tensor a checkpoint in format
  `fmt` ("hf" or "gguf") of this config holds."""
  names = {}
  for t in tensors:
    pattern = getattr(t, fmt)
    if pattern is None:
      continue
    for layer in (range(cfg.n_layers) if t.per_layer else [None]):
      names[pattern.format(i=layer)] = (t, layer)
  return names


def fill_params(cfg: ModelConfig, fmt: str, names: list[str], read, where) -> dict:
  """The params of `cfg` from a checkpoint holding the tensors `names`.

  Args:
    fmt: "hf" or "gguf": which names of the family table (`memjax.models.table`) to match.
    names: every tensor name the checkpoint holds.
    read: (name, table row) -> float array in numpy order, converted to memjax's values
      (but not yet transposed: rows with `transpose` are transposed here).
    where: name -> the file to name in errors.

  Raises:
    ModelFileError: a tensor the family table does not know, or one it needs that is
      missing (both named), or a shape that does not match the config.
  """
  expected = checkpoint_names(cfg, param_table(cfg), fmt)
  unknown = [name for name in names if name not in expected]
  if unknown:
    raise ModelFileError(
        f"{where(unknown[0])}: unknown tensor(s) {', '.join(unknown[:5])}"
        + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        + f": the {cfg.family!r} parameter table (memjax.models.families) has no such tensor")
  missing = sorted(expected.keys() - set(names))
  if missing:
    raise ModelFileError(f"{where(None)}: missing tensor(s) {', '.join(missing[:5])}"
                         + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
  params = allocate_params(cfg)
  for name, (tensor, layer) in expected.items():
    value = read(name, tensor)
    store(params, tensor, value.T if tensor.transpose else value, layer=layer, source=name,
          file=where(name))
  return params

"""The parameter pytree every loader fills: names, shapes and allocation.

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
Matrices are applied as `x @ w`; q/k output columns are laid out as [heads, Dh] in the Hugging
Face "rotate_half" RoPE convention.
"""

from __future__ import annotations

import numpy as np

from memjax.io.errors import ModelFileError
from memjax.models.config import ModelConfig

LAYER_KEYS = ("attn_norm", "wq", "wk", "wv", "wo", "mlp_norm", "w_gate", "w_up", "w_down")


def param_shapes(cfg: ModelConfig) -> dict:
  """Shapes of every parameter, as a pytree of tuples with the same structure as the params."""
  D, F, V, L = cfg.d_model, cfg.d_ff, cfg.vocab_size, cfg.n_layers
  q_width, kv_width = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
  layer_shapes = {
      "attn_norm": (D,), "wq": (D, q_width), "wk": (D, kv_width), "wv": (D, kv_width),
      "wo": (q_width, D), "mlp_norm": (D,), "w_gate": (D, F), "w_up": (D, F), "w_down": (F, D),
  }
  shapes = {
      "embed": (V, D),
      "layers": {key: (L, *shape) for key, shape in layer_shapes.items()},
      "final_norm": (D,),
  }
  if not cfg.tie_embeddings:
    shapes["lm_head"] = (D, V)
  return shapes


def allocate_params(cfg: ModelConfig) -> dict:
  """Uninitialised host arrays of dtype `cfg.dtype` for every parameter (see `param_shapes`)."""
  dtype = np.dtype(cfg.jnp_dtype)
  shapes = param_shapes(cfg)
  params = {key: np.empty(shape, dtype) for key, shape in shapes.items() if key != "layers"}
  params["layers"] = {key: np.empty(shape, dtype) for key, shape in shapes["layers"].items()}
  return params


def store(params: dict, key: str, value: np.ndarray, *, layer: int | None, source: str,
          file: object) -> None:
  """Copies `value` (float, numpy order) into `params[key]` (or `params["layers"][key][layer]`).

  Converts to the destination dtype; raises ModelFileError naming `file` and the tensor `source`
  when the shape does not match the config.
  """
  dest = params[key] if layer is None else params["layers"][key][layer]
  if value.shape != dest.shape:
    raise ModelFileError(
        f"{file}: tensor {source!r} has shape {tuple(value.shape)}, but the config implies "
        f"{tuple(dest.shape)} for {key!r}")
  dest[...] = value

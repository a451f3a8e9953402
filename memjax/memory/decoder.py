"""Memory layers inside the decoder, placed by `ModelConfig.memory`.

Blocks listed in `memory.layers` carry a memory; the others are plain. Their params:

  params["layers"]            the usual stack [L, ...] (attention, norms, MLP) of every block
  params["memory"]["layers"]  one entry per memory block, stacked [M, ...] in `layers` order
  params["memory"]["values"]  the value table [n_keys², V] when `share_values`

Memory blocks are a layer kind of the decoder's plan (`LayerSpec.memory`): `llama.run_layers`
scans each run of consecutive plain blocks and hands the memory blocks, one by one, to
`memory_block`, so compile time grows with the number of memory blocks (a few), not with
depth. Importing this module registers it in `llama.MEMORY_LAYERS`, which is how
`llama.init_params` and `llama.forward` reach it without importing memjax.memory. A memory
block is:

  pkm / memory_plus, "replace_mlp":  x += attn(x);  x += mem(norm(x))
  pkm / memory_plus, "parallel":     x += attn(x);  x += mlp(x) + mem(norm(x))
  titans "mal":                      x += ntm(norm_m(x));  then a plain block
  titans "mag":                      x += attn(x) ⊙ sigmoid(ntm(norm_m(x)));  x += mlp(x)

norm is the block's MLP norm; norm_m the memory's own RMSNorm weight "norm" [D]. (With
"replace_mlp", that block's MLP weights stay in the stack unused, so the stack keeps one
shape for every layer.)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from memjax.memory import pkm_layer, titans
from memjax.memory.pkm_layer import Bag, Lookup
from memjax.models import llama
from memjax.models.config import LayerSpec, ModelConfig

Params = dict[str, Any]


def init_params(cfg: ModelConfig, key: jax.Array) -> Params:
  """params["memory"] of a config with memory layers (float32)."""
  mem, d = cfg.memory, cfg.d_model
  k_layers, k_values = jax.random.split(key)
  if mem.kind == "titans":
    def init_one(k):
      return {**titans.init_params(mem, d, k), "norm": jnp.ones((d,))}
  else:
    def init_one(k):
      return pkm_layer.init_layer(mem, d, k)
  out = {"layers": jax.vmap(init_one)(jax.random.split(k_layers, len(mem.layers)))}
  if mem.kind != "titans" and mem.share_values:
    out["values"] = pkm_layer.init_values(mem, d, k_values)
  return out


def memory_block(p: Params, m: Params, values: jax.Array | None, x_BxTxD: jax.Array,
                 positions_BxT: jax.Array, mix: llama.Mixer, spec: LayerSpec,
                 cfg: ModelConfig, bag: Bag) -> tuple[jax.Array, Lookup | None]:
  """One block with its memory (layout in the module docstring): new x, and the slots read
  (None for Titans)."""
  mem = cfg.memory
  if mem.kind == "titans":
    read, _ = titans.forward(m, llama.rms_norm(x_BxTxD, m["norm"], cfg.norm_eps), mem)
    if mem.titans_variant == "mal":
      return llama.block(p, x_BxTxD + read, positions_BxT, None, mix, spec, cfg)[0], None
    o_BxTxD, _ = llama.attention(p, x_BxTxD, positions_BxT, None, mix, spec, cfg)
    x_BxTxD = x_BxTxD + o_BxTxD * jax.nn.sigmoid(read)
    return x_BxTxD + llama.mlp(p, x_BxTxD, spec, cfg), None
  x_BxTxD = x_BxTxD + llama.attention(p, x_BxTxD, positions_BxT, None, mix, spec, cfg)[0]
  h_BxTxD = llama.rms_norm(x_BxTxD, p["mlp_norm"], cfg.norm_eps)
  read, lookup = pkm_layer.apply(m, m["values"] if values is None else values, h_BxTxD, mem,
                                 bag)
  if mem.placement == "parallel":
    read = read + llama.mlp(p, x_BxTxD, spec, cfg)
  return x_BxTxD + read, lookup


def forward(params: Params, tokens_BxT: jax.Array, cfg: ModelConfig, remat: bool = False,
            bag: Bag | None = None, *, mix: llama.Mixer | None = None) -> tuple[jax.Array, list[Lookup]]:
  """Causal LM forward with memory layers: float32 logits [B, T, V] and, per product-key
  memory block in layer order, the slots it read.

  Args:
    bag: the value gather-sum; default the chunked single-device one
      (`pkm_layer.local_bag`), or the shard_map'd one of `memjax.memory.sharded`.
    mix: the attention of every block instead (e.g. `llama.sliding_window_mixer`).
  """
  mem = cfg.memory
  bag = bag or pkm_layer.local_bag(mem)
  b, t = tokens_BxT.shape
  positions_BxT = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
  mix = mix or llama.full_causal_mixer(cfg)
  layer = lambda tree, i: jax.tree.map(lambda a: a[i], tree)
  run_memory = (jax.checkpoint(memory_block, static_argnums=(5, 6, 7, 8)) if remat
                else memory_block)
  plan = cfg.layer_plan()
  lookups = []

  def block_with_memory(index: int, x_BxTxD: jax.Array) -> jax.Array:
    m = layer(params["memory"]["layers"], mem.layers.index(index))
    x_BxTxD, lookup = run_memory(layer(params["layers"], index), m,
                                 params["memory"].get("values"), x_BxTxD, positions_BxT, mix,
                                 plan[index], cfg, bag)
    lookups.extend([lookup] if lookup is not None else [])
    return x_BxTxD

  x, _ = llama.run_layers(params, llama.embed(params, tokens_BxT, cfg), positions_BxT, None,
                          mix, cfg, remat, memory_block=block_with_memory)
  return llama.unembed(params, x, cfg), lookups


llama.MEMORY_LAYERS["memory"] = llama.MemoryLayers(init_params=init_params, forward=forward)

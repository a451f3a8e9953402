"""Product-key memory layers: PKM (values added to the stream) and Memory+ (gated by W1, W2).

  pkm:          out = bag(slots, w)                        values [n_keys², D]
  memory_plus:  out = W2 (bag(slots, w) ⊙ silu(W1 h))      values [n_keys², V], W1 [D, V], W2 [V, D]

`bag` is the weighted sum of value rows; it defaults to the chunked single-device gather
(`product_keys.weighted_bag`) and can be the shard_map'd one (`memjax.memory.sharded`).
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import einops
import jax
import jax.numpy as jnp

from memjax.memory import product_keys
from memjax.models.config import MemoryConfig

Params = dict[str, jax.Array]
# bag(values [N, V], slots [M, K], weights [M, K]) -> [M, V]
Bag = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


class Lookup(NamedTuple):
  """Which slots a memory layer read: ids and softmax weights, both [B, T, H·topk]."""

  slots: jax.Array
  weights: jax.Array


def value_dim(mem: MemoryConfig, d_model: int) -> int:
  """Width V of a value row."""
  return mem.value_dim or d_model


def init_values(mem: MemoryConfig, d_model: int, key: jax.Array) -> jax.Array:
  """A value table [n_keys², V] ~ N(0, 1/V)."""
  v = value_dim(mem, d_model)
  return jax.random.normal(key, (mem.n_slots, v)) / jnp.sqrt(v)


def init_layer(mem: MemoryConfig, d_model: int, key: jax.Array) -> Params:
  """One layer's params: query projection and sub-keys, its own "values" unless shared,
  and "w1" [D, V], "w2" [V, D] for Memory+."""
  k_keys, k_values, k1, k2 = jax.random.split(key, 4)
  p = product_keys.init_keys(mem, d_model, k_keys)
  if not mem.share_values:
    p["values"] = init_values(mem, d_model, k_values)
  if mem.kind == "memory_plus":
    v = value_dim(mem, d_model)
    p["w1"] = jax.random.normal(k1, (d_model, v)) / jnp.sqrt(d_model)
    p["w2"] = jax.random.normal(k2, (v, d_model)) / jnp.sqrt(v)
  return p


def local_bag(mem: MemoryConfig) -> Bag:
  """The single-device chunked gather, capped at mem.max_gather_elems."""
  return functools.partial(product_keys.weighted_bag, max_elems=mem.max_gather_elems)


def apply(p: Params, values_NxV: jax.Array, h_BxTxD: jax.Array, mem: MemoryConfig,
          bag: Bag) -> tuple[jax.Array, Lookup]:
  """The memory's output [B, T, D] for the normed hidden state, and the slots it read."""
  slots, w = product_keys.lookup(p, h_BxTxD, mem)
  b = h_BxTxD.shape[0]
  flat = lambda x: einops.rearrange(x, "b t k -> (b t) k")
  read = einops.rearrange(bag(values_NxV, flat(slots), flat(w)), "(b t) v -> b t v", b=b)
  read = read.astype(h_BxTxD.dtype)
  if mem.kind == "memory_plus":
    read = (read * jax.nn.silu(h_BxTxD @ p["w1"])) @ p["w2"]
  return read, Lookup(slots, w)

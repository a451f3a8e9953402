"""Every policy's statistics and scores against a plain numpy re-implementation.

The numpy versions below loop over batch rows, heads and slots on purpose: they follow the
definitions in the papers, not the vectorised code.
"""

import numpy as np
import pytest
import jax.numpy as jnp

from memjax.cache import kv_cache
from memjax.cache.policies import Candidates, get_policy, policy_names

B, HKV, G, S, C, DH = 2, 3, 2, 10, 6, 8
N = S + C


def random_inputs(seed):
  rng = np.random.default_rng(seed)
  t = np.array([40, 25], np.int32)
  pos = np.full((B, HKV, N), -1, np.int32)
  for b in range(B):
    for h in range(HKV):
      n_valid = rng.integers(N // 2, N + 1)
      pos[b, h, :n_valid] = np.sort(rng.choice(t[b], n_valid, replace=False))
  k = rng.normal(size=(B, HKV, N, DH)).astype(np.float32)
  k *= rng.uniform(0.2, 3.0, size=(B, HKV, N, 1)).astype(np.float32)
  stats = rng.uniform(0, 2, size=(B, HKV, N)).astype(np.float32)
  logits = rng.normal(size=(B, HKV, G, C, N))
  probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  query_valid = np.ones((B, C), bool)
  query_valid[1, 4:] = False
  probs = (probs * query_valid[:, None, None, :, None]).astype(np.float32)
  return dict(t=t, pos=pos, k=k, stats=stats, probs=probs, query_valid=query_valid)


def candidates(x, stats=None, layer=0):
  """The view a policy scores (values = 2k, the random keys standing in for pre-RoPE keys)."""
  return Candidates(k=jnp.asarray(x["k"]), pos=jnp.asarray(x["pos"]),
                    stats=jnp.asarray(x["stats"] if stats is None else stats),
                    t=jnp.asarray(x["t"]), layer=jnp.int32(layer), capacity=S,
                    v=jnp.asarray(x["k"]) * 2, k_pre=jnp.asarray(x["k"]))


def np_score(name, x, policy):
  k, pos, stats, t = x["k"], x["pos"], x["stats"], x["t"]
  out = np.zeros((B, HKV, N), np.float64)
  for b in range(B):
    mean_dir = None
    for h in range(HKV):
      if name == "keydiff":
        units = [k[b, h, n] / np.linalg.norm(k[b, h, n]) for n in range(N) if pos[b, h, n] >= 0]
        mean_dir = np.mean(units, axis=0)
        mean_dir = mean_dir / np.linalg.norm(mean_dir)
      for n in range(N):
        p = pos[b, h, n]
        if name in ("window", "full"):
          out[b, h, n] = p
        elif name == "streaming":
          out[b, h, n] = np.inf if 0 <= p < policy.n_sink else p
        elif name == "h2o":
          recent = int(policy.recent_fraction * S)
          out[b, h, n] = np.inf if p >= t[b] - recent else stats[b, h, n] / max(t[b] - p, 1)
        elif name == "tova":
          out[b, h, n] = stats[b, h, n]
        elif name == "snapkv":
          out[b, h, n] = np.inf if p >= t[b] - policy.window else stats[b, h, n]
        elif name == "keydiff":
          out[b, h, n] = -np.dot(k[b, h, n] / np.linalg.norm(k[b, h, n]), mean_dir)
        elif name == "knorm":
          out[b, h, n] = -np.sqrt(np.sum(k[b, h, n].astype(np.float64) ** 2))
        elif name == "oracle":
          out[b, h, n] = np.inf if stats[b, h, n] > 0 or 0 <= p < policy.n_sink else p
  return out


def with_marks(x):
  """x with 0/1 marks as statistics (what the oracle's fresh tokens carry): ~1 in 5 set."""
  return dict(x, stats=(x["stats"] > 1.6).astype(np.float32))


def np_observe(name, x, policy):
  stats, probs, qv = x["stats"].astype(np.float64), x["probs"], x["query_valid"]
  out = stats.copy()
  for b in range(B):
    valid_queries = [c for c in range(C) if qv[b, c]]
    for h in range(HKV):
      group_mean = probs[b, h].mean(axis=0)  # [C, N]
      if name == "h2o":
        out[b, h] = stats[b, h] + sum(group_mean[c] for c in valid_queries)
      elif name == "tova":
        out[b, h] = group_mean[valid_queries[-1]]
      elif name == "snapkv":
        window = valid_queries[-policy.window:]
        votes = sum(group_mean[c] for c in window)
        half = policy.kernel // 2
        for n in range(N):
          lo, hi = max(0, n - half), min(N, n - half + policy.kernel)
          out[b, h, n] = votes[lo:hi].max()
  return out


SCORED = ["full", "window", "streaming", "h2o", "tova", "snapkv", "keydiff", "knorm", "oracle"]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", SCORED)
def test_score_matches_numpy(name, seed):
  x = random_inputs(seed)
  x = with_marks(x) if name == "oracle" else x
  policy = get_policy(name, **({"window": 3} if name == "snapkv" else {}))
  got = np.asarray(policy.score(candidates(x)))
  want = np_score(name, x, policy)
  valid = x["pos"] >= 0
  np.testing.assert_allclose(got[valid], want[valid], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["h2o", "tova", "snapkv"])
def test_observe_matches_numpy(name):
  x = random_inputs(3)
  policy = get_policy(name, **({"window": 3} if name == "snapkv" else {}))
  got = np.asarray(policy.observe(jnp.asarray(x["stats"]), jnp.asarray(x["probs"]),
                                  jnp.asarray(x["query_valid"])))
  np.testing.assert_allclose(got, np_observe(name, x, policy), rtol=1e-5, atol=1e-6)


def test_random_scores_are_uniform_fixed_and_vary_by_layer_and_head():
  x = random_inputs(0)
  x["pos"] = np.broadcast_to(np.arange(N, dtype=np.int32), (B, HKV, N)).copy()
  policy = get_policy("random")
  s0 = np.asarray(policy.score(candidates(x, layer=0)))
  assert ((s0 >= 0) & (s0 < 1)).all()
  np.testing.assert_array_equal(s0, np.asarray(policy.score(candidates(x, layer=0))))
  assert not np.allclose(s0, np.asarray(policy.score(candidates(x, layer=1))))
  assert not np.allclose(s0[:, 0], s0[:, 1])
  assert not np.allclose(s0, np.asarray(get_policy("random", seed=1).score(candidates(x))))
  big = dict(x, pos=np.arange(4096, dtype=np.int32).reshape(1, 1, -1))
  many = np.asarray(policy.score(candidates(big)._replace(k=jnp.zeros((1, 1, 4096, DH)))))
  assert abs(many.mean() - 0.5) < 0.03 and abs(np.median(many) - 0.5) < 0.03


@pytest.mark.parametrize("name", policy_names())
def test_evict_keeps_exactly_the_top_scores(name):
  """The kvpress-style matrix: after eviction the kept slots are the top-S by the policy's score."""
  x = random_inputs(5)
  x = with_marks(x) if get_policy(name).uses_marks else x
  policy = get_policy(name, **({"window": 3} if name == "snapkv" else {}))
  cands = kv_cache.LayerCache(k=jnp.asarray(x["k"]), v=jnp.asarray(x["k"]) * 2,
                              pos=jnp.asarray(x["pos"]), stats=jnp.asarray(x["stats"]))
  kept = kv_cache.evict(cands, policy, jnp.asarray(x["t"]), jnp.int32(0), S,
                        k_pre=jnp.asarray(x["k"]))
  scores = np.asarray(policy.score(candidates(x)))
  for b in range(B):
    for h in range(HKV):
      valid = np.flatnonzero(x["pos"][b, h] >= 0)
      ranked = valid[np.argsort(-scores[b, h, valid], kind="stable")]
      want = set(x["pos"][b, h, ranked[:S]].tolist())
      got_pos = np.asarray(kept.pos[b, h])
      assert set(got_pos[got_pos >= 0].tolist()) == want
      live = got_pos[got_pos >= 0]
      assert (np.diff(live) > 0).all(), "kept slots are stored in position order"
      for slot, p in enumerate(got_pos):
        if p >= 0:
          src = int(np.flatnonzero(x["pos"][b, h] == p)[0])
          np.testing.assert_array_equal(np.asarray(kept.k[b, h, slot]), x["k"][b, h, src])
          np.testing.assert_array_equal(np.asarray(kept.v[b, h, slot]), 2 * x["k"][b, h, src])

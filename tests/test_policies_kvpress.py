"""The kvpress-family policies (leverage, non_causal_attn, compactor, expected_attention, cur,
lagkv) against straightforward numpy implementations of their definitions, on random inputs:
the top-S kept set must match, and the scores agree to float32 precision.

The numpy versions loop over batch rows and heads and follow the papers' (and kvpress's)
whole-sequence definitions; inputs are one chunk holding the whole sequence, where memjax's
per-chunk scores and the whole-sequence ones coincide.
"""

import numpy as np
import pytest
import jax.numpy as jnp

from memjax.cache import kv_cache
from memjax.cache.policies import Candidates, Chunk, get_policy
from memjax.cache.policies.leverage import gaussian_sketch
from memjax.generation import generate
from memjax.eval.perplexity import budgeted_logprobs
from tests.helpers import tiny_model

B, HKV, G, C, DH = 2, 3, 2, 48, 8
HQ = HKV * G
S = 16
THETA = 10000.0


def rope_np(x_TxD, pos_T, theta=THETA):
  """RoPE in the rotate-half layout, numpy."""
  half = x_TxD.shape[-1] // 2
  inv = theta ** (-np.arange(half) / half)
  ang = pos_T[:, None] * inv
  x1, x2 = x_TxD[:, :half], x_TxD[:, half:]
  return np.concatenate([x1 * np.cos(ang) - x2 * np.sin(ang), x2 * np.cos(ang) + x1 * np.sin(ang)], -1)


def random_chunk(seed, n_valid_row1=C - 7):
  """One chunk of C tokens at positions 0..C-1 (row 1 padded after n_valid_row1), as the
  candidates and chunk view the mixer would build: rotated k, q; pre-RoPE k_pre, q_pre; v."""
  rng = np.random.default_rng(seed)
  valid = np.ones((B, C), bool)
  valid[1, n_valid_row1:] = False
  positions = np.broadcast_to(np.arange(C, dtype=np.int32), (B, C)).copy()
  k_pre = rng.normal(size=(B, HKV, C, DH)) * rng.uniform(0.3, 3, size=(B, HKV, C, 1))
  q_pre = rng.normal(size=(B, C, HQ, DH)) + rng.normal(size=(1, 1, HQ, DH))
  v = rng.normal(size=(B, HKV, C, DH)) * rng.uniform(0.3, 3, size=(B, HKV, C, 1))
  k = np.stack([[rope_np(k_pre[b, h], positions[b]) for h in range(HKV)] for b in range(B)])
  q = np.stack([np.stack([rope_np(q_pre[b, :, h], positions[b]) for h in range(HQ)], 1)
                for b in range(B)])
  pos = np.where(valid, positions, -1)[:, None, :].repeat(HKV, 1)
  t = valid.sum(1).astype(np.int32)
  f32 = lambda a: np.asarray(a, np.float32)
  return dict(k=f32(k), k_pre=f32(k_pre), v=f32(v), q=f32(q), q_pre=f32(q_pre), pos=pos,
              positions=positions, valid=valid, t=t)


def views(x, stats=None):
  cands = Candidates(k=jnp.asarray(x["k"]), pos=jnp.asarray(x["pos"]),
                     stats=jnp.zeros(x["pos"].shape) if stats is None else jnp.asarray(stats),
                     t=jnp.asarray(x["t"]), layer=jnp.int32(1), capacity=S,
                     v=jnp.asarray(x["v"]), k_pre=jnp.asarray(x["k_pre"]))
  chunk = Chunk(positions=jnp.asarray(x["positions"]), valid=jnp.asarray(x["valid"]),
                rope_theta=THETA, q=jnp.asarray(x["q"]), q_pre=jnp.asarray(x["q_pre"]))
  return cands, chunk


def memjax_scores(policy, x):
  cands, chunk = views(x)
  if policy.observes_chunk:
    cands = cands._replace(stats=policy.observe_chunk(cands, chunk))
  return np.asarray(policy.score(cands))


def zscore(x):
  return (x - x.mean()) / max(x.std(), 1e-6)


def np_leverage(k_pre, seed, layer, sketch_dim, jitter):
  """Per (b, h) over the valid keys: z-score of diag(X (XᵀX + jitter I)⁻¹ Xᵀ), X = centred K Φ."""
  phi = np.asarray(gaussian_sketch(seed, jnp.int32(layer), HKV, DH, sketch_dim), np.float64)
  out = []
  for h, keys in enumerate(k_pre):
    x = (keys - keys.mean(0)) @ phi[h]
    lev = np.einsum("nk,kl,nl->n", x, np.linalg.inv(x.T @ x + jitter * np.eye(sketch_dim)), x)
    out.append(zscore(lev))
  return out


def np_non_causal(q, k, v, tile=256, kernel=3):
  """[n] for one (b, kv head): q [n, G, d], k, v [n, d]; tiles of `tile` tokens."""
  n = len(k)
  mass = np.zeros(n)
  for start in range(0, n, tile):
    sl = slice(start, min(start + tile, n))
    for g in range(q.shape[1]):
      logits = q[sl, g] @ k[sl].T
      p = np.exp(logits - logits.max(1, keepdims=True))
      mass[sl] += (p / p.sum(1, keepdims=True)).sum(0) / q.shape[1]
  mass *= np.linalg.norm(v, axis=1)
  padded = np.pad(mass, (kernel // 2, kernel - 1 - kernel // 2))
  pooled = np.array([padded[i:i + kernel].sum() / kernel for i in range(n)])
  return zscore(pooled)


def np_expected_attention(q_pre, k, v, t, n_future=512, n_sink=4):
  """[n] for one (b, kv head): q_pre [n, G, d] queries of the heads of the group."""
  d = k.shape[1]
  half = d // 2
  inv = THETA ** (-np.arange(half) / half)
  rot = np.zeros((d, d))
  for p in range(t, t + n_future):
    c, s = np.cos(p * inv), np.sin(p * inv)
    r = np.zeros((d, d))
    for i in range(half):
      r[i, i], r[i, i + half], r[i + half, i], r[i + half, i + half] = c[i], -s[i], s[i], c[i]
    rot += r / n_future
  scores = np.zeros(len(k) - n_sink)
  for g in range(q_pre.shape[1]):
    qs = q_pre[n_sink:, g]
    mu, cov = qs.mean(0), np.cov(qs.T, bias=True)
    mu, cov = rot @ mu, rot @ cov @ rot.T
    keys = k[n_sink:]
    e = keys @ mu / np.sqrt(d) + np.einsum("nd,de,ne->n", keys, cov, keys) / (2 * d)
    scores += np.exp(e - e.max()) / np.exp(e - e.max()).sum() / q_pre.shape[1]
  scores *= np.linalg.norm(v[n_sink:], axis=1)
  return np.concatenate([np.full(n_sink, np.inf), scores])


def np_cur(k, v, window=16, n_sink=4):
  def local(x):
    sq = (x ** 2).sum(1)
    return np.array([sq[i] / sq[(i // window) * window:(i // window + 1) * window].sum()
                     for i in range(len(x))])
  out = local(k) * local(v)
  out[:n_sink] = np.inf
  return out


def np_lagkv(k, v, n_sink=4, lag=8):
  """kvpress's LagKV on one (b, kv head) over the whole sequence: sinks and tail score high."""
  n = len(k)
  out = np.full(n, np.inf)
  n_parts = (n - n_sink) // lag
  for p in range(n_parts - 1):
    combined = np.zeros(lag)
    for x in (k, v):
      part = x[n_sink + p * lag:n_sink + (p + 1) * lag]
      ref = x[n_sink + (p + 1) * lag:n_sink + (p + 2) * lag]
      std = ((part - ref.min(0)) / (ref.max(0) - ref.min(0))).std(1, ddof=1)
      combined += np.exp(std - std.max()) / np.exp(std - std.max()).sum() / 2
    out[n_sink + p * lag:n_sink + (p + 1) * lag] = np.argsort(np.argsort(combined)) / lag
  tail = np.arange(n) >= n_sink + (n_parts - 1) * lag
  out[tail] = 1 + np.arange(n)[tail] / (n + 1)  # the tail ranks by recency, in [1, 2)
  return out


def np_scores(name, policy, x):
  """float64 [B, HKV, C] (valid tokens; padding NaN)."""
  out = np.full((B, HKV, C), np.nan)
  for b in range(B):
    n = int(x["t"][b])
    for h in range(HKV):
      k, v, k_pre = x["k"][b, h, :n], x["v"][b, h, :n], x["k_pre"][b, h, :n]
      q = x["q"][b, :n, h * G:(h + 1) * G].astype(np.float64)
      q_pre = x["q_pre"][b, :n, h * G:(h + 1) * G].astype(np.float64)
      if name == "leverage":
        out[b, h, :n] = np_leverage(x["k_pre"][b, :, :n].astype(np.float64), 0, 1, 48, 1e-2)[h]
      elif name == "non_causal_attn":
        out[b, h, :n] = np_non_causal(q, k, v, policy.tile)
      elif name == "compactor":
        keep = np.zeros(n, bool)
        keep[:policy.n_sink] = keep[n - policy.n_recent:] = True
        lev = np_leverage(x["k_pre"][b, :, :n][:, ~keep].astype(np.float64), 0, 1, 48, 1e-2)[h]
        blend = 1 - S / n
        score = np_non_causal(q, k, v, policy.tile)
        score[~keep] += blend * lev
        score[keep] = np.inf
        out[b, h, :n] = score
      elif name == "expected_attention":
        out[b, h, :n] = np_expected_attention(q_pre, k, v, n)
      elif name == "cur":
        out[b, h, :n] = np_cur(k, v)
      elif name == "lagkv":
        out[b, h, :n] = np_lagkv(k, v, lag=policy.lag)
  return out


CASES = {"leverage": {}, "non_causal_attn": {"tile": 16}, "compactor": {"tile": 16},
         "expected_attention": {}, "cur": {}, "lagkv": {"lag": 8}}


def top_set(scores_N, valid_N, s):
  idx = np.flatnonzero(valid_N)
  return set(idx[np.argsort(-scores_N[idx], kind="stable")[:s]].tolist())


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", list(CASES))
def test_score_matches_numpy_and_keeps_the_same_top_s(name, seed):
  x = random_chunk(seed)
  policy = get_policy(name, **CASES[name])
  got, want = memjax_scores(policy, x), np_scores(name, policy, x)
  valid = x["pos"] >= 0
  finite = valid & np.isfinite(want)
  np.testing.assert_allclose(got[finite], want[finite], rtol=2e-3, atol=2e-4)
  assert (np.isinf(got) == np.isinf(want))[valid].all(), "the same slots are protected"
  for b in range(B):
    for h in range(HKV):
      assert top_set(got[b, h], valid[b, h], S) == top_set(want[b, h], valid[b, h], S)


def test_lagkv_two_chunks_score_as_one():
  """Partitions are scored when their successor completes, whichever chunk completes it."""
  x = random_chunk(2, n_valid_row1=C)
  policy = get_policy("lagkv", lag=8)
  whole = memjax_scores(policy, x)
  cands, chunk = views(x)
  split = 20
  first = Chunk(positions=chunk.positions[:, :split], valid=chunk.valid[:, :split],
                rope_theta=THETA)
  head = cands._replace(k=cands.k[:, :, :split], v=cands.v[:, :, :split],
                        pos=cands.pos[:, :, :split], stats=cands.stats[:, :, :split],
                        t=jnp.full((B,), split, jnp.int32))
  stats = policy.observe_chunk(head, first)
  second = Chunk(positions=chunk.positions[:, split:], valid=chunk.valid[:, split:],
                 rope_theta=THETA)
  full = cands._replace(stats=jnp.concatenate([stats, jnp.zeros((B, HKV, C - split))], -1))
  got = np.asarray(policy.score(full._replace(stats=policy.observe_chunk(full, second))))
  scored = whole < 1
  np.testing.assert_allclose(got[scored], whole[scored], rtol=1e-6)


@pytest.mark.parametrize("name", list(CASES))
def test_evict_keeps_the_top_scores_and_the_protected_slots(name):
  x = random_chunk(3)
  policy = get_policy(name, **CASES[name])
  cands, chunk = views(x)
  layer = kv_cache.LayerCache(k=cands.k, v=cands.v, pos=cands.pos, stats=cands.stats)
  if policy.observes_chunk:
    layer = layer._replace(stats=policy.observe_chunk(cands, chunk))
  kept = kv_cache.evict(layer, policy, cands.t, cands.layer, S, k_pre=cands.k_pre)
  scores = memjax_scores(policy, x)
  for b in range(B):
    for h in range(HKV):
      got = np.asarray(kept.pos[b, h])
      assert set(got[got >= 0].tolist()) == top_set(scores[b, h], x["pos"][b, h] >= 0, S)
      protected = np.flatnonzero(np.isinf(scores[b, h]) & (x["pos"][b, h] >= 0))
      assert len(protected) == min(policy.protected_slots(S), len(protected))
      assert set(protected.tolist()) <= set(got.tolist())


def test_pre_rope_keys_are_required_and_recovered_exactly():
  x = random_chunk(4)
  cands, _ = views(x)
  layer = kv_cache.LayerCache(k=cands.k, v=cands.v, pos=cands.pos, stats=cands.stats)
  with pytest.raises(ValueError, match="pre-RoPE keys"):
    kv_cache.evict(layer, get_policy("leverage"), cands.t, cands.layer, S)
  from memjax.generation.step import _unrotate
  from memjax.models.config import LayerSpec
  back = np.asarray(_unrotate(cands.k, cands.pos, LayerSpec(rope_theta=THETA)))
  valid = x["pos"] >= 0
  np.testing.assert_allclose(back[valid], x["k_pre"][valid], atol=1e-5)


SMALL = {"compactor": dict(n_sink=2, n_recent=3, tile=8), "non_causal_attn": dict(tile=8),
         "lagkv": dict(lag=4)}


@pytest.mark.parametrize("name", list(CASES))
def test_chunked_prefill_keeps_sinks_and_runs_through_generate(name):
  cfg, params = tiny_model()
  toks = np.random.default_rng(5).integers(0, 97, size=(2, 37)).astype(np.int32)
  policy = get_policy(name, **SMALL.get(name, {}))
  logp, cache = budgeted_logprobs(params, cfg, toks, policy, [12, 12], 8)
  assert np.isfinite(logp).all()
  pos = np.asarray(cache.stacked().pos)
  n_sink = getattr(policy, "n_sink", 0)
  for p in range(n_sink):
    assert ((pos == p).sum(-1) == 1).all(), (name, p)
  for p in range(37 - getattr(policy, "n_recent", 0), 37):
    assert ((pos == p).sum(-1) == 1).all(), (name, p)
  out = generate.generate_ids(params, cfg, [toks[0].tolist(), toks[1, :20].tolist()],
                              policy=policy, budget=12, questions=[[1, 2], [3]],
                              max_new_tokens=4, prefill_chunk=8)
  assert [len(o) for o in out] == [4, 4]

"""Validation of retention gates on training-like retrieval cases, on the tiny byte model."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from memjax.retention import add_gates, init_gate_params
from memjax.retention.store import load_gates
from memjax.train import run
from memjax.train.config import MethodConfig, TrainConfig, TrimKVConfig
from memjax.train.data import TEMPLATES, TrainData
from memjax.train.run import run_model
from memjax.train.validation import (BEST_GATES, VALIDATION_JSONL, half_life_stats, validate,
                                     validate_run, validation_cases)


def tiny_cfg(tmp_path=None, **kw):
  settings = dict(model="tiny", seq_len=400, batch_size=1, steps=2, warmup_steps=0,
                  save_every=1, log_every=1, fact_templates=len(TEMPLATES),
                  synthetic_fraction=1.0, recall_fraction=0.0,
                  method=MethodConfig(name="trim_kv", trim_kv=TrimKVConfig(
                      memory_M=32, gate_hidden=8, block=64, answer_weight=1.0,
                      memory_ratio=0.25, gate_bias_init=4.0)))
  if tmp_path is not None:
    settings["output_dir"] = str(tmp_path / "run")
  settings.update(kw)
  return TrainConfig(**settings)


def test_validation_cases_are_training_like_but_never_training_rows():
  cfg = tiny_cfg()
  model_cfg, params, tokenizer = run_model(cfg)
  cases = validation_cases(tokenizer, cfg, 6)
  training = TrainData(tokenizer, _train_text(cfg), cfg.seq_len, 1, cfg.seed,
                       1.0, 0.0, cfg.fact_templates)
  train_rows = {training.batch(i)["tokens"][0].tobytes() for i in range(50)}
  assert all(len(c.tokens) == cfg.seq_len for c in cases)
  assert not any(c.tokens.tobytes() in train_rows for c in cases)
  again = validation_cases(tokenizer, cfg, 6)
  assert all((a.tokens == b.tokens).all() for a, b in zip(cases, again))


def _train_text(cfg):
  from memjax.data.corpus import load_corpus
  return load_corpus(cfg.corpus_splits)


def test_half_lives_of_constant_gates_match_the_formula():
  """Gates with zero weights rate every token alike: half-life ln 2 / −log sigmoid(bias)."""
  cfg = tiny_cfg()
  model_cfg, params, tokenizer = run_model(cfg)
  gates = init_gate_params(model_cfg, 8, jax.random.PRNGKey(0), bias_init=3.0, scale=0.0)
  stats = half_life_stats(add_gates(params, gates), model_cfg,
                          validation_cases(tokenizer, cfg, 2))
  want = math.log(2) / -float(jax.nn.log_sigmoid(3.0))
  np.testing.assert_allclose([stats["fact_half_life"], stats["prose_half_life"]], want,
                             rtol=1e-5)
  assert stats["half_life_ratio"] == pytest.approx(1.0)
  gates["bias"] = gates["bias"].at[1].set(1.0)  # a second layer that forgets faster
  mixed = half_life_stats(add_gates(params, gates), model_cfg,
                          validation_cases(tokenizer, cfg, 2))
  assert mixed["prose_half_life"] < want


def test_learned_with_room_for_everything_answers_like_the_full_cache():
  """At a kept fraction of 1 nothing is evicted, so every policy gives full's answers; the
  oracle (facts + sinks + recency) at a small budget runs too."""
  cfg = tiny_cfg()
  model_cfg, params, tokenizer = run_model(cfg)
  gates = init_gate_params(model_cfg, 8, jax.random.PRNGKey(0), bias_init=3.0)
  cases = validation_cases(tokenizer, cfg, 3, 300)
  gated = add_gates(params, gates)
  full = validate(gated, model_cfg, tokenizer, cases, 1.0, policy="full", half_lives=False)
  learned = validate(gated, model_cfg, tokenizer, cases, 1.0, policy="learned")
  assert learned["accuracy"] == full["accuracy"] and set(learned) > set(full)
  oracle = validate(gated, model_cfg, tokenizer, cases, 0.25, policy="oracle", half_lives=False)
  assert 0.0 <= oracle["accuracy"] <= 1.0


def test_validate_run_scores_every_checkpoint_once_and_exports_the_best(tmp_path):
  cfg = tiny_cfg(tmp_path)
  run(cfg)
  rows = validate_run(cfg.output_dir, n_cases=2, seq_len=300, progress=False)
  assert [r["step"] for r in rows] == [1, 2]
  log = tmp_path / "run" / VALIDATION_JSONL
  assert len(log.read_text().splitlines()) == 2
  assert validate_run(cfg.output_dir, n_cases=2, seq_len=300, progress=False) == rows
  assert len(log.read_text().splitlines()) == 2, "a rerun validates nothing again"
  best = max(rows, key=lambda r: (r["accuracy"], -r["step"]))
  model_cfg, _, _ = run_model(cfg)
  gates, meta = load_gates(str(tmp_path / "run" / BEST_GATES), model_cfg)
  assert meta["step"] == best["step"] and gates["w1"].shape == (model_cfg.n_layers,
                                                                 model_cfg.d_model, 8)
  assert all(json.loads(line)["n"] == 2 for line in log.read_text().splitlines())

"""Gate files: save/load, bad files, export from a training run, and the eval's `learned` rows."""

import json

import jax
import numpy as np
import pytest

from memjax.eval.config import EvalConfig
from memjax.eval.harness import RowLog, fingerprint
from memjax.models.config import tiny_config
from memjax.retention import init_gate_params
from memjax.retention.store import (SHIPPED, SHIPPED_DIR, GateFileError, gate_path, load_gates,
                                    save_gates)
from memjax.train import MethodConfig, TrainConfig, TrimKVConfig, load_trainable, run
from memjax.train.export import export_gates

CFG = tiny_config()


def _gates(hidden=8, seed=0):
  return jax.tree.map(np.array, init_gate_params(CFG, hidden, jax.random.key(seed)))


def test_saved_gates_load_back_with_their_meta(tmp_path):
  gates = _gates()
  path = save_gates(tmp_path / "g.npz", gates, CFG, {"step": 7})
  loaded, meta = load_gates(path, CFG)
  for key in gates:
    np.testing.assert_array_equal(loaded[key], gates[key])
  assert meta["step"] == 7 and meta["hidden"] == 8 and meta["n_layers"] == CFG.n_layers


def test_truncated_corrupt_and_incomplete_files_are_clear_errors(tmp_path):
  path = save_gates(tmp_path / "g.npz", _gates(), CFG, {})
  data = path.read_bytes()
  (tmp_path / "cut.npz").write_bytes(data[:len(data) // 2])
  with pytest.raises(GateFileError, match="cut.npz.*truncated or corrupt"):
    load_gates(tmp_path / "cut.npz", CFG)
  (tmp_path / "junk.npz").write_bytes(b"not a zip file at all")
  with pytest.raises(GateFileError, match="junk.npz.*truncated or corrupt"):
    load_gates(tmp_path / "junk.npz", CFG)
  np.savez(tmp_path / "part.npz", w1=np.zeros(3))
  with pytest.raises(GateFileError, match=r"part.npz.*lacks \['b1', 'w2', 'bias', 'meta'\]"):
    load_gates(tmp_path / "part.npz", CFG)


def test_gates_of_another_model_or_with_nans_are_refused(tmp_path):
  path = save_gates(tmp_path / "g.npz", _gates(), CFG, {})
  other = tiny_config(n_kv_heads=1, n_heads=2)
  with pytest.raises(GateFileError, match="1 KV heads.*'w2': \\[2, 8, 2\\].*another model"):
    load_gates(path, other)
  bad = _gates()
  bad["bias"][0, 0] = np.nan
  path = save_gates(tmp_path / "nan.npz", bad, CFG, {})
  with pytest.raises(GateFileError, match=r"non-finite values in \['bias'\]"):
    load_gates(path, CFG)


def test_unknown_gate_names_list_what_ships():
  with pytest.raises(GateFileError, match=r"shipped: \['trimkv'\]"):
    gate_path("trimkv-v9", "smollm2-135m")
  with pytest.raises(GateFileError, match="shipped: none"):
    gate_path("trimkv", "some-other-model")


def test_shipped_gates_are_small_and_fit_smollm2(smollm2_path):
  from memjax.io import load_checkpoint
  cfg, _, _ = load_checkpoint(smollm2_path)
  for (model, name), filename in SHIPPED.items():
    path = SHIPPED_DIR / filename
    assert path.stat().st_size <= 10e6
    gates, meta = load_gates(name, cfg, model=model)
    # The best validated checkpoint ships, not necessarily the last step of the schedule.
    assert meta["model"] == model and 0 < meta["step"] <= meta["train_config"]["steps"]
    assert np.all(gates["bias"] < 12)  # trained away from any large initial bias


def test_export_writes_the_checkpointed_gates(tmp_path):
  cfg = TrainConfig(steps=2, seq_len=64, batch_size=2, save_every=1, warmup_steps=0,
                    synthetic_fraction=0.0,
                    output_dir=str(tmp_path / "run"), method=MethodConfig(
                        name="trim_kv", trim_kv=TrimKVConfig(memory_M=16, gate_hidden=8,
                                                             block=16)))
  run(cfg)
  path = export_gates(tmp_path / "run", tmp_path / "gates.npz")
  gates, meta = load_gates(path, tiny_config(vocab_size=256))
  trained, step = load_trainable(tmp_path / "run" / "checkpoints")
  for key in gates:
    np.testing.assert_array_equal(gates[key], trained["layers"]["gate"][key])
  assert meta["step"] == step == 2 and meta["train_config"]["method"]["name"] == "trim_kv"
  with pytest.raises(FileNotFoundError, match="config.yaml"):
    export_gates(tmp_path, tmp_path / "x.npz")


def test_learned_in_an_eval_needs_gates_and_its_rows_are_keyed_by_them(tmp_path):
  with pytest.raises(ValueError, match="policy 'learned' needs retention gates"):
    EvalConfig(policies=["full", "learned"])
  path_a = save_gates(tmp_path / "a.npz", _gates(seed=0), CFG, {})
  path_b = save_gates(tmp_path / "b.npz", _gates(seed=1), CFG, {})
  cfg_a = EvalConfig(policies=["full", "learned"], gates=str(path_a))
  cfg_b = EvalConfig(policies=["full", "learned"], gates=str(path_b))
  # The gates change the learned rows only: other rows stay valid across gates.
  assert fingerprint(cfg_a) == fingerprint(cfg_b) == fingerprint(EvalConfig())
  log_path = tmp_path / "rows.jsonl"
  log = RowLog(log_path, cfg_a)
  for policy in ("full", "learned"):
    log.add(dict(policy=policy, budget=None if policy == "full" else 0.25, task="single",
                 context_tokens=100, accuracy=1.0, n=1))
  assert json.loads(log_path.read_text().splitlines()[1])["gates"].startswith(f"{path_a}@")
  assert log.key("single", 100, "learned", 0.25) in RowLog(log_path, cfg_a).done
  reread_b = RowLog(log_path, cfg_b).done
  assert log.key("single", 100, "full", None) in reread_b
  assert RowLog(log_path, cfg_b).key("single", 100, "learned", 0.25) not in reread_b

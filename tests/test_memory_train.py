"""Key-usage metrics, the value tables' optimiser group, and the "memory" training method."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from memjax.config import load_config
from memjax.memory import usage
from memjax.memory.optim import with_value_group
from memjax.train.config import TrainConfig
from memjax.train.run import setup
from memjax.train.trainer import init_state, make_optimizer, make_train_step

pytestmark = pytest.mark.memory

CONFIGS = pathlib.Path(__file__).parent.parent / "configs"


def test_usage_metrics_against_numpy():
  rng = np.random.default_rng(0)
  slots = rng.integers(0, 40, (5, 7, 6))
  weights = rng.random((5, 7, 6))
  mass = np.zeros(50)
  np.add.at(mass, slots.ravel(), weights.ravel())
  got = usage.usage_metrics(usage.slot_mass(jnp.asarray(slots), jnp.asarray(weights), 50))
  p = mass / mass.sum()
  nz = p[p > 0]
  gini = np.abs(mass[:, None] - mass[None, :]).sum() / (2 * 50 * mass.sum())
  np.testing.assert_allclose(got["used"], np.mean(mass > 0), rtol=1e-6)
  np.testing.assert_allclose(got["kl"], np.sum(nz * np.log(nz * 50)), rtol=1e-5)
  np.testing.assert_allclose(got["gini"], gini, rtol=1e-5)


def test_value_tables_get_their_own_adam():
  """Default group frozen (set_to_zero) and weight decay absent: a value table moves by
  values_lr · sign(grad) on Adam's first step, nothing else moves."""
  params = {"memory": {"layers": {"values": jnp.ones((3, 4, 2)), "wq": jnp.ones((3, 2))},
                       "values": jnp.ones((5, 2))},
            "layers": {"values": jnp.ones((2,))}}
  grads = jax.tree.map(lambda a: jnp.linspace(-1.0, 1.0, a.size).reshape(a.shape) + 0.1, params)
  opt = with_value_group(optax.set_to_zero(), 0.01)
  updates, _ = opt.update(grads, opt.init(params), params)
  new = optax.apply_updates(params, updates)
  for path in (("memory", "layers", "values"), ("memory", "values")):
    a, g = new, grads
    for k in path:
      a, g = a[k], g[k]
    np.testing.assert_allclose(a, 1.0 - 0.01 * np.sign(g), rtol=1e-4)
  np.testing.assert_array_equal(new["memory"]["layers"]["wq"], 1.0)
  np.testing.assert_array_equal(new["layers"]["values"], 1.0)


@pytest.mark.parametrize("name", ["pkm", pytest.param("memory_plus", marks=pytest.mark.slow)])
def test_memory_method_trains_from_scratch(name, tmp_path):
  """The ablation config, shrunk: setup builds the from-scratch decoder with its memory,
  three steps lower the loss and log key usage."""
  cfg = load_config(TrainConfig, str(CONFIGS / f"memory_{name}.yaml"), [
      "steps=3", "warmup_steps=0", "seq_len=32", "batch_size=2", "lr=1e-2",
      "method.memory.d_model=32", "method.memory.d_ff=64", "method.memory.head_dim=8",
      "method.memory.memory.n_keys=8", "method.memory.memory.topk=4",
      "method.memory.memory.k_dim=8", f"output_dir={tmp_path}"]
      + (["method.memory.memory.value_dim=32"] if name == "memory_plus" else []))
  loss_fn, trainable, frozen, data = setup(cfg)
  assert not frozen and trainable["layers"]["wq"].shape == (4, 32, 32)
  values = (trainable["memory"]["values"] if name == "memory_plus"
            else trainable["memory"]["layers"]["values"])
  assert values.shape[-2] == 64
  optimizer, schedule = make_optimizer(cfg)  # the values get their own group
  state = init_state(trainable, optimizer, cfg.seed)
  assert isinstance(state.opt_state, optax.MultiTransformState)  # values in their own group
  step = make_train_step(loss_fn, optimizer, cfg.grad_accum, schedule)
  batch = data.batch(0)
  losses = []
  for _ in range(3):
    state, metrics = step(state, frozen, batch)
    losses.append(float(metrics["loss"]))
  assert losses[-1] < losses[0]
  assert 0 < float(metrics["mem0_used"]) <= 1 and float(metrics["mem0_gini"]) >= 0
  if name == "memory_plus":
    assert "mem1_kl" in metrics


def test_memory_method_refuses_a_pretrained_model(tmp_path):
  from memjax.train.methods import memory_params
  cfg = load_config(TrainConfig, str(CONFIGS / "memory_pkm.yaml"),
                    ["model=smollm2-135m", f"output_dir={tmp_path}"])
  with pytest.raises(ValueError, match="from scratch"):
    memory_params(None, cfg, jax.random.PRNGKey(0))

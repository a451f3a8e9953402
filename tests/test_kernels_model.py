"""SmolLM2-135M through the Pallas kernels (TPU interpreter on CPU) equals the XLA path."""

import dataclasses

import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from memjax.io.gguf_loader import load_gguf
from memjax.models import llama
from tests.test_kernels import TOLERANCE, rel_err

pytestmark = pytest.mark.pallas


def test_smollm2_logits_through_flash_kernels_equal_xla(smollm2_path):
  cfg, params, _ = load_gguf(smollm2_path)
  params = llama.cast_params(params, cfg)
  tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (1, 12)).astype(np.int32)
  want = llama.forward(params, tokens, dataclasses.replace(cfg, attention_impl="xla"))
  with pltpu.force_tpu_interpret_mode(pltpu.InterpretParams()):
    got = llama.forward(params, tokens, dataclasses.replace(cfg, attention_impl="tpu"))
  assert rel_err(got, want) < TOLERANCE["float32"]
  assert np.array_equal(np.argmax(got, -1), np.argmax(want, -1))

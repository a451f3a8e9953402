"""Gemma 3 270M (the real Q4_K_M GGUF) through memjax against transformers on the same file:
tokenizer ids, logits over a few hundred tokens of varied text, 32 greedy tokens."""

import numpy as np
import pytest

import memjax
from memjax.io import ModelFileError, find_model
from tests.test_parity_hf import VARIED_TEXT

pytestmark = [pytest.mark.slow, pytest.mark.oracle]

# More of each kind (prose, code, unicode), so that the text spans a few hundred tokens.
TEXTS = [VARIED_TEXT, "  leading spaces,\n\n\ttabs   and <start_of_turn>user\nhi<end_of_turn>",
         "Ünïcödé: ñ, ß, 한국어, العربية, עברית, 🤖🧠; math ∑ᵢ xᵢ² ≤ ∞."]


@pytest.fixture(scope="module")
def gemma_path():
  try:
    return find_model("gemma3-270m")
  except ModelFileError as e:
    pytest.skip(str(e))


@pytest.fixture(scope="module")
def lm(gemma_path):
  return memjax.load("gemma3-270m")


@pytest.fixture(scope="module")
def hf_gemma(gemma_path):
  torch = pytest.importorskip("torch", reason="the transformers reference needs torch")
  transformers = pytest.importorskip("transformers")
  AutoModelForCausalLM, AutoTokenizer = (transformers.AutoModelForCausalLM,
                                         transformers.AutoTokenizer)
  tokenizer = AutoTokenizer.from_pretrained(gemma_path.parent, gguf_file=gemma_path.name)
  model = AutoModelForCausalLM.from_pretrained(gemma_path.parent, gguf_file=gemma_path.name,
                                               dtype=torch.float32)
  return model.eval(), tokenizer


def log_softmax(x):
  x = np.asarray(x, np.float64)
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_config_is_gemma3(lm):
  plan = lm.cfg.layer_plan()
  assert lm.cfg.family == "gemma3" and len(plan) == 18
  assert [s.window for s in plan[:6]] == [512] * 5 + [None]
  assert {s.rope_theta for s in plan} == {10000.0, 1000000.0}


def test_tokenizer_ids_equal_transformers(lm, hf_gemma):
  _, hf_tok = hf_gemma
  for text in TEXTS:
    assert lm.tokenizer.encode(text) == hf_tok.encode(text), text
    ids = hf_tok.encode(text)
    assert lm.tokenizer.decode(ids) == hf_tok.decode(ids)


def test_logits_match_transformers(lm, hf_gemma):
  import torch
  hf_model, hf_tok = hf_gemma
  ids = hf_tok.encode("\n\n".join(TEXTS))
  assert len(ids) > 200
  with torch.no_grad():
    want = hf_model(torch.tensor([ids])).logits.float().numpy()[0]
  got = lm.logits([ids])[0]
  delta = np.abs(log_softmax(got) - log_softmax(want)).max()
  assert delta <= 1e-3, f"max |Δ log-softmax| = {delta:.2e}"


def test_greedy_continuation_matches_transformers(lm, hf_gemma):
  import torch
  hf_model, hf_tok = hf_gemma
  ids = hf_tok.encode("The history of the printing press begins in")
  with torch.no_grad():
    want = hf_model.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False,
                             min_new_tokens=32)[0, len(ids):].tolist()
  got = lm.generate(ids, policy="full", max_new_tokens=32, stop_at_eos=False, prefill_chunk=8)
  assert got == want

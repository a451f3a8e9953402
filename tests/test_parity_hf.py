"""SmolLM2-135M through memjax against Hugging Face transformers on the same GGUF weights."""

import numpy as np
import pytest

import memjax

VARIED_TEXT = (
    "The lighthouse keeper counted the ships every evening, writing their names in a ledger "
    "that smelled of salt and candle wax. On the ninth of March, 1887, a storm arrived.\n\n"
    "def fibonacci(n: int) -> list[int]:\n    seq = [0, 1]\n    while len(seq) < n:\n"
    "        seq.append(seq[-1] + seq[-2])\n    return seq[:n]\n\n"
    "Café, naïve, façade — 東京は大きな都市です。 Emoji: 🚀✨. Prices rose 3.75% to $1,024.50.\n"
    "    Indented line with  double  spaces\tand a tab.\n"
    "SELECT name, COUNT(*) FROM ships GROUP BY name HAVING COUNT(*) > 2;\n"
    "Photosynthesis converts light energy into chemical energy stored in glucose, releasing "
    "oxygen as a by-product; without it, most life on Earth would not exist."
)


@pytest.fixture(scope="module")
def lm():
  return memjax.load("smollm2-135m")


@pytest.mark.oracle
def test_logits_match_transformers(lm, hf_smollm2):
  import torch
  hf_model, hf_tok = hf_smollm2
  ids = hf_tok.encode(VARIED_TEXT)
  assert lm.tokenizer.encode(VARIED_TEXT) == ids
  assert len(ids) > 200
  with torch.no_grad():
    want = hf_model(torch.tensor([ids])).logits.float().numpy()[0]
  got = lm.logits([ids])[0]

  def log_softmax(x):
    x = x.astype(np.float64)
    return x - x.max(-1, keepdims=True) - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True))

  delta = np.abs(log_softmax(got) - log_softmax(want)).max()
  assert delta <= 1e-3, f"max |Δ log-softmax| = {delta:.2e}"


@pytest.mark.oracle
def test_greedy_continuation_matches_transformers(lm, hf_smollm2):
  import torch
  hf_model, hf_tok = hf_smollm2
  prompt = "The history of the printing press begins in"
  ids = hf_tok.encode(prompt)
  with torch.no_grad():
    want = hf_model.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False,
                             min_new_tokens=32)[0, len(ids):].tolist()
  got = lm.generate(ids, policy="full", max_new_tokens=32, stop_at_eos=False, prefill_chunk=8)
  assert got == want
  assert lm.generate(prompt, max_new_tokens=32, stop_at_eos=False) == hf_tok.decode(want)

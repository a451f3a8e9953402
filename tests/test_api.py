"""The public API and the command line on the real SmolLM2 model."""

import numpy as np
import pytest

import memjax
from memjax import cli
from memjax.cache.policies import get_policy


@pytest.fixture(scope="module")
def lm():
  return memjax.load("smollm2-135m")


def test_policies_lists_every_registered_policy():
  assert memjax.policies() == ["full", "window", "streaming", "h2o", "tova", "snapkv",
                               "keydiff", "knorm", "random", "leverage", "non_causal_attn",
                               "compactor", "expected_attention", "cur", "lagkv", "kvzip",
                               "learned", "oracle"]


def test_kvzip_generates_from_text(lm):
  """`kvzip` writes its reconstruction prompt with the model's tokenizer; with a budget above
  the prompt it answers like the full cache."""
  prompt = "The capital of France is"
  assert lm.generate(prompt, policy="kvzip", budget=64, max_new_tokens=4) == lm.generate(
      prompt, max_new_tokens=4)


def test_generate_text_ids_and_batches(lm):
  prompt = "The capital of France is"
  text = lm.generate(prompt, max_new_tokens=4)
  assert isinstance(text, str) and "Paris" in text
  ids = lm.generate(lm.tokenizer.encode(prompt), max_new_tokens=4)
  assert lm.tokenizer.decode(ids) == text
  batch = lm.generate([prompt, "One, two, three,"], policy="streaming", budget=8,
                      max_new_tokens=4, prefill_chunk=4)
  assert isinstance(batch, list) and len(batch) == 2 and batch[0] == text


def test_question_is_appended_after_compression(lm):
  context = "The secret code of Ada Lovelace is 27182. " + "It rained all day. " * 30
  question = "\nQuestion: What is the secret code of Ada Lovelace?\nAnswer: The secret code of Ada Lovelace is"
  full = lm.generate(context, question=question, max_new_tokens=6)
  assert "27182" in full
  # A 16-slot window has long forgotten the needle by the time the question arrives.
  assert "27182" not in lm.generate(context, question=question, policy="window", budget=16,
                                    max_new_tokens=6)


def test_logits_shape_and_length_limit(lm):
  logits = lm.logits(np.array([[1, 2, 3]]))
  assert logits.shape == (1, 3, 49152) and logits.dtype == np.float32
  with pytest.raises(ValueError, match="maximum of 8192 positions"):
    lm.generate([1] * 8200, policy="full", max_new_tokens=1)


def test_unknown_names_are_clear_errors():
  with pytest.raises(ValueError, match="smollm2-135m"):
    memjax.load("gpt-17")
  with pytest.raises(ValueError, match="registered policies"):
    get_policy("lru")


def test_cli_rejects_unknown_config_key_with_suggestion(capsys, monkeypatch, tmp_path):
  monkeypatch.setenv("MEMJAX_COMPILATION_CACHE", str(tmp_path / "xla"))
  assert cli.main(["eval", "configs/demo.yaml", "budgts=[0.5]"]) == 2
  assert "did you mean 'budgets'" in capsys.readouterr().err


@pytest.mark.slow  # ~80 s alone (three policies compiled on the real model)
def test_cli_eval_writes_table_csv_and_plot(tmp_path, capsys, monkeypatch):
  monkeypatch.setenv("MEMJAX_COMPILATION_CACHE", str(tmp_path / "xla"))
  args = ["eval", "configs/demo.yaml", "policies=[full,window,kvzip]", "budgets=[0.5]",
          "context_tokens=[200]", "n_cases=2", "batch_size=2", "max_new_tokens=7",
          f"output_dir={tmp_path}", "name=smoke"]
  assert cli.main(args) == 0
  out = capsys.readouterr().out
  assert "full cache" in out and "window" in out
  md = (tmp_path / "smoke.md").read_text()
  assert "query-agnostic" in md and "| window |" in md and "| kvzip |" in md
  assert (tmp_path / "smoke.csv").read_text().count("\n") == 4
  assert (tmp_path / "smoke_single_200.png").stat().st_size > 10_000
  # A rerun finds every row in the log and computes nothing again.
  log = (tmp_path / "smoke.rows.jsonl").read_text()
  assert log.count("\n") == 3
  assert cli.main(args + ["policies=[window]"]) == 0
  assert (tmp_path / "smoke.rows.jsonl").read_text() == log
  assert "| window |" in (tmp_path / "smoke.md").read_text()

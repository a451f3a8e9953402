"""Training batches: deterministic, resumable, mixed at the set rate, disjoint from evaluation."""

import re

import numpy as np
import pytest

from memjax.data import retrieval
from memjax.data.corpus import load_corpus
from memjax.train import data as train_data
from memjax.train.data import PROSE, RECALL, RETRIEVAL, TEMPLATES, ByteTokenizer, TrainData

TOK = ByteTokenizer()
FACT = re.compile(r"Remember: the ([a-z]+ number) assigned to ([A-Z][a-z]+ [A-Z][a-z]+) is (\d+)\.")
QUESTION = re.compile(r"\n\nQ: Which ([a-z]+ number) was assigned to ([A-Z][a-z]+ [A-Z][a-z]+)\?\n"
                      r"A: The \1 assigned to \2 is (\d+)\.$")
EVAL_PHRASES = ("secret code", "Question:", "Answer:")
TRAIN_PHRASES = ("Remember:", "assigned to", "Q: Which", "Memorize these words", "Recite the words")


@pytest.fixture(scope="module")
def text():
  return load_corpus("train")


def _data(text, **kw):
  args = dict(seq_len=320, batch_size=8, seed=0, synthetic_fraction=0.5, recall_fraction=0.5)
  args.update(kw)
  return TrainData(TOK, text, **args)


def _rows(data, kind, n_batches=12):
  """Decoded rows of one kind from the first batches."""
  out = []
  for i in range(n_batches):
    batch = data.batch(i)
    out += [TOK.decode(row) for row, k in zip(batch["tokens"], batch["kind"]) if k == kind]
  return out


def test_batches_are_fixed_by_seed_and_index(text):
  a, b, other = _data(text), _data(text), _data(text, seed=1)
  for i in (0, 1, 7):
    batch = a.batch(i)
    assert batch["tokens"].shape == (8, 320) and batch["tokens"].dtype == np.int32
    assert batch["kind"].shape == (8,)
    np.testing.assert_array_equal(batch["tokens"], b.batch(i)["tokens"])
  assert not np.array_equal(a.batch(0)["tokens"], a.batch(1)["tokens"])
  assert not np.array_equal(a.batch(0)["tokens"], other.batch(0)["tokens"])


def test_iterator_resumes_from_its_saved_state(text):
  data = _data(text)
  it = data.iterator()
  for _ in range(3):
    next(it)
  state = it.get_state()
  expected = [next(it)["tokens"] for _ in range(2)]
  resumed = _data(text).iterator()
  resumed.set_state(state)
  assert state == {"position": 3}
  for tokens in expected:
    np.testing.assert_array_equal(next(resumed)["tokens"], tokens)


@pytest.mark.parametrize("synthetic, recall", [(0.0, 0.5), (0.3, 0.5), (1.0, 0.0), (1.0, 1.0)])
def test_kinds_follow_the_mix(text, synthetic, recall):
  data = _data(text, synthetic_fraction=synthetic, recall_fraction=recall)
  kinds = np.concatenate([data.batch(i)["kind"] for i in range(40)])
  share = lambda kind: np.mean(kinds == kind)
  assert share(PROSE) == pytest.approx(1 - synthetic, abs=0.07)
  assert share(PROSE) + share(RETRIEVAL) + share(RECALL) == 1
  assert share(RECALL) == pytest.approx(synthetic * recall, abs=0.07)


def test_prose_rows_are_distinct_windows_of_the_corpus(text):
  data = _data(text, seq_len=64, synthetic_fraction=0.0)
  windows = [tuple(row) for i in range(20) for row in data.batch(i)["tokens"]]
  assert len(set(windows)) == len(windows)  # 160 rows < 5000 windows: no repeats in an epoch
  stream = TOK.encode(text)
  for row in windows[:8]:
    start = text.encode().find(bytes(row))
    assert start % 64 == 0 and list(row) == stream[start:start + 64]


def test_retrieval_rows_ask_about_a_fact_they_contain(text):
  data = _data(text, seq_len=640, synthetic_fraction=1.0, recall_fraction=0.0)
  rows = _rows(data, RETRIEVAL, n_batches=6)
  n_facts = set()
  for row in rows:
    question = QUESTION.search(row)
    assert question, row[-300:]
    facts = {(a, n): v for a, n, v in FACT.findall(row[:question.start()])}
    assert facts[question.group(1), question.group(2)] == question.group(3)
    assert len({n for _, n in facts}) == len(facts)  # distinct names in a row
    assert all(n in train_data.TRAIN_NAMES and len(v) == 4 for (_, n), v in facts.items())
    n_facts.add(len(facts))
  assert n_facts == set(range(1, train_data.MAX_FACTS + 1))


def test_recall_rows_recite_the_memorized_words(text):
  rows = _rows(_data(text, synthetic_fraction=1.0, recall_fraction=1.0), RECALL, n_batches=4)
  assert rows
  for row in rows:
    memorized = re.search(r"Memorize these words:(.+?) \(end of words\)", row, re.S).group(1)
    recited = row.split("\n\nRecite the words you memorized:")[-1]
    assert recited == memorized and 8 <= len(memorized.encode()) <= 32


def test_synthetic_rows_share_nothing_with_the_evaluation_tasks(text):
  eval_words = {w for name in retrieval.NAMES for w in name.split()}
  train_words = {w for name in train_data.TRAIN_NAMES for w in name.split()}
  assert not eval_words & train_words
  data = _data(text, synthetic_fraction=1.0)
  synthetic = "".join(TOK.decode(row) for i in range(6) for row in data.batch(i)["tokens"])
  assert not any(p in synthetic for p in EVAL_PHRASES)
  assert not any(re.search(rf"\b{w}\b", synthetic) for w in eval_words)

  class Chars:
    encode = staticmethod(lambda s: [ord(c) for c in s])
    decode = staticmethod(lambda ids: "".join(map(chr, ids)))

  cases = [c for kind in retrieval.KINDS
           for c in retrieval.make_cases(kind, 2, 600, [0.5], Chars(), seed=0)]
  evaluation = "".join(c.context + c.question for c in cases)
  assert all(p in evaluation for p in ("secret code", "Question:", "Answer:"))
  assert not any(p in evaluation for p in TRAIN_PHRASES)
  assert not any(re.search(rf"\b{w}\b", evaluation) for w in train_words)
  # Training prose comes from a third work.
  assert text[1000:3000] not in load_corpus("haystack") + load_corpus("heldout")


def test_special_tokens_the_tokenizer_adds_are_dropped(text):
  class WithBosEos(ByteTokenizer):
    def encode(self, s):
      return [1] + super().encode(s) + [2]

  plain = _data(text, seq_len=64, synthetic_fraction=0.0)
  wrapped = TrainData(WithBosEos(), text, seq_len=64, batch_size=8, seed=0,
                      synthetic_fraction=0.0)
  np.testing.assert_array_equal(plain.batch(0)["tokens"], wrapped.batch(0)["tokens"])


def test_too_short_sequences_and_corpora_are_errors(text):
  with pytest.raises(ValueError, match=r"seq_len=128 is too short .* raise seq_len or set "
                                       r"synthetic_fraction=0"):
    _data(text, seq_len=128)
  assert _data(text, seq_len=128, synthetic_fraction=0.0).batch(0)["tokens"].shape == (8, 128)
  with pytest.raises(ValueError, match="fewer than seq_len=320"):
    _data("Too short. Really.")


def test_answer_mask_fact_marks_and_templates(text):
  """Every template appears; the answer mask covers exactly the value and its closing
  punctuation; fact marks cover exactly the fact sentences; validation cases are fixed."""
  data = _data(text, seq_len=400, batch_size=16, synthetic_fraction=1.0, recall_fraction=0.0,
              fact_templates=len(TEMPLATES))
  seen = set()
  for i in range(12):
    row = data.retrieval_case(i)
    decoded = TOK.decode(row.tokens.tolist())
    answer = TOK.decode(row.tokens[len(row.tokens) - row.answer_tokens:].tolist())
    assert answer.strip().startswith(row.value) and answer.rstrip().endswith(".")
    facts = TOK.decode(row.tokens[row.fact_marks].tolist())
    assert row.value in facts and decoded.count(row.value) >= 2
    for fact, _, kind in TEMPLATES:
      if fact.split("{")[0].strip() in facts:
        seen.add(kind)
    again = data.retrieval_case(i)
    np.testing.assert_array_equal(again.tokens, row.tokens)
  assert seen == {kind for _, _, kind in TEMPLATES}
  batch = data.batch(0)
  for tokens, answer in zip(batch["tokens"], batch["answer"]):
    assert answer.sum() > 0 and answer[-1] and not answer[:len(answer) // 2].any()
  prose = _data(text, seq_len=256, batch_size=4, synthetic_fraction=0.0).batch(0)
  assert not prose["answer"].any()
  with pytest.raises(ValueError, match="fact_templates"):
    _data(text, seq_len=256, batch_size=1, fact_templates=9)

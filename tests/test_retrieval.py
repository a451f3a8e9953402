"""Prose corpus, needle placement, context length and strict scoring of retrieval cases."""

import re

import numpy as np
import pytest

from memjax.data import retrieval
from memjax.data.corpus import heldout_windows, load_corpus
from memjax.data.retrieval import NAMES, RetrievalCase, make_cases, score_answer
from memjax.data.sentences import ends_sentence, sentence_starts

NEEDLE = re.compile(r"(?:The|One of the) secret codes? of ([A-Z][a-z]+ [A-Z][a-z]+) is (\d{5})\.")


class WordTokenizer:
  """Words, punctuation marks and whitespace runs as tokens (a stand-in for BPE)."""

  def __init__(self):
    self.ids, self.pieces = {}, []

  def encode(self, text):
    out = []
    for piece in re.findall(r" ?\w+| ?[^\w\s]|\s+", text):
      if piece not in self.ids:
        self.ids[piece] = len(self.pieces)
        self.pieces.append(piece)
      out.append(self.ids[piece])
    return out

  def decode(self, ids):
    return "".join(self.pieces[i] for i in ids)


class CharTokenizer:
  def encode(self, text):
    return [ord(c) for c in text]

  def decode(self, ids):
    return "".join(map(chr, ids))


@pytest.fixture(scope="module")
def tok():
  return WordTokenizer()


def _needle_depths(case, tokenizer):
  """(name, code, relative token offset) of every needle in the context."""
  return [(m.group(1), m.group(2),
           len(tokenizer.encode(case.context[:m.start()])) / case.context_tokens)
          for m in NEEDLE.finditer(case.context)]


def test_load_corpus_splits_are_different_prose():
  haystack, heldout = load_corpus("haystack"), load_corpus("heldout")
  assert 150_000 < len(haystack) < 400_000 and 150_000 < len(heldout) < 400_000
  assert haystack[:2000] not in heldout
  assert "Gutenberg" not in haystack + heldout
  assert haystack.count("\n\n") > 500  # paragraphs kept


def test_load_corpus_user_files_and_errors(tmp_path):
  a, b, empty = tmp_path / "a.txt", tmp_path / "b.txt", tmp_path / "empty.txt"
  a.write_text("First file.\r\nSecond line.\n")
  b.write_text("Other file.")
  empty.write_text("  \n")
  assert load_corpus("heldout", [str(a), str(b)]) == "First file.\nSecond line.\n\nOther file."
  with pytest.raises(FileNotFoundError, match="missing.txt"):
    load_corpus(paths=[str(tmp_path / "missing.txt")])
  with pytest.raises(ValueError, match="empty"):
    load_corpus(paths=[str(empty)])
  with pytest.raises(ValueError, match="haystack"):
    load_corpus("validation")


def test_sentence_starts_skip_abbreviations_and_find_paragraphs():
  text = 'Mr. Tilney came. "Oh! yes," said she. J. Smith left.\n\nNew paragraph here'
  starts = sentence_starts(text)
  assert [text[s:s + 5] for s in starts] == ["Mr. T", '"Oh! ', "J. Sm", "New p"]
  assert ends_sentence('He said "no."')
  assert not ends_sentence("I saw Mr.") and not ends_sentence("and")


def test_names_are_distinct_and_absent_from_the_corpus():
  firsts = [n.split()[0] for n in NAMES]
  assert len(set(firsts)) == len(NAMES) >= 2 * retrieval.NEEDLES_PER_KIND["multikey"]
  words = set(re.findall(r"\w+", load_corpus("haystack") + load_corpus("heldout")))
  assert not words & {part for name in NAMES for part in name.split()}


@pytest.mark.parametrize("kind", retrieval.KINDS)
def test_cases_are_deterministic_by_seed(kind, tok):
  first = make_cases(kind, 3, 300, [0.2, 0.8], tok, seed=5)
  assert first == make_cases(kind, 3, 300, [0.2, 0.8], tok, seed=5)
  assert first != make_cases(kind, 3, 300, [0.2, 0.8], tok, seed=6)


@pytest.mark.parametrize("kind", retrieval.KINDS)
@pytest.mark.parametrize("context_tokens", [200, 1000, 3000])
def test_context_length_within_two_percent(kind, context_tokens, tok):
  for case in make_cases(kind, 4, context_tokens, [0.0, 0.3, 0.6, 1.0], tok, seed=1):
    assert case.context_tokens == len(tok.encode(case.context))
    assert abs(case.context_tokens - context_tokens) <= 0.02 * context_tokens


def test_needle_sits_at_the_boundary_nearest_its_depth(tok):
  # Every sentence is 6 tokens, so the nearest boundary is within 3 tokens of the target.
  haystack = " ".join(f"Sentence {w} is plain." for w in ["alpha", "beta", "gamma"] * 400)
  for depth in [0.0, 0.1, 0.25, 0.5, 0.77, 0.9, 1.0]:
    (case,) = make_cases("single", 1, 500, [depth], tok, seed=3, haystack=haystack)
    ((name, code, realised),) = _needle_depths(case, tok)
    assert case.answers == (code,) and case.depth == depth
    needle_tokens = len(tok.encode(f" The secret code of {name} is {code}."))
    target = min(depth * case.context_tokens, case.context_tokens - needle_tokens)
    assert abs(realised * case.context_tokens - target) <= 3.5
    start = case.context.index("The secret")
    assert start == 0 or case.context[:start].endswith(". ")
    assert case.question == (f"\nQuestion: What is the secret code of {name}?\n"
                             f"Answer: The secret code of {name} is")


def test_needles_in_prose_are_whole_sentences_at_sentence_boundaries(tok):
  for case in make_cases("multikey", 3, 1500, [0.1, 0.5, 0.9], tok, seed=2):
    context = case.context
    for m in NEEDLE.finditer(context):
      assert m.start() == 0 or context[m.start() - 1].isspace()
      before = context[:m.start()]
      assert not before or ends_sentence(before) or before.endswith("\n\n")
      assert m.end() == len(context) or context[m.end()].isspace()


def test_multikey_asks_about_the_needle_at_the_requested_depth(tok):
  for case in make_cases("multikey", 4, 2000, [0.1, 0.4, 0.6, 0.9], tok, seed=0):
    found = _needle_depths(case, tok)
    names = [name for name, _, _ in found]
    assert len(found) == retrieval.NEEDLES_PER_KIND["multikey"] == len(set(names))
    asked = re.search(r"code of (.+)\?", case.question).group(1)
    ((_, code, realised),) = [f for f in found if f[0] == asked]
    assert case.answers == (code,)
    assert abs(realised - case.depth) < 0.08
    gaps = np.diff(sorted(d for _, _, d in found))
    assert gaps.min() > 0.1  # spread, not clustered


def test_multivalue_asks_for_every_code_of_one_name(tok):
  for case in make_cases("multivalue", 3, 1500, [0.2, 0.5, 0.8], tok, seed=0):
    found = _needle_depths(case, tok)
    assert len({name for name, _, _ in found}) == 1
    assert sorted(case.answers) == sorted(code for _, code, _ in found)
    assert len(set(case.answers)) == retrieval.NEEDLES_PER_KIND["multivalue"]
    assert case.question.endswith(f"The secret codes of {found[0][0]} are")


def test_score_answer_is_strict():
  case = RetrievalCase("...", "?", ("48213",), "single", 0.5, 3)
  assert score_answer(case, " 48213.") == 1.0
  assert score_answer(case, " 48213, I think") == 1.0
  for wrong in [" 482130.", " 4821", " 12345 or 48213", " forty-eight", "", " 48 213"]:
    assert score_answer(case, wrong) == 0.0, wrong
  multi = RetrievalCase("...", "?", ("11111", "22222", "33333"), "multivalue", 0.5, 3)
  assert score_answer(multi, " 22222, 11111 and 333330") == pytest.approx(2 / 3)
  assert score_answer(multi, " 33333, 22222, 11111.") == 1.0


def test_make_cases_rejects_bad_arguments(tok):
  with pytest.raises(ValueError, match="multikey"):
    make_cases("multi-key", 1, 100, [0.5], tok, 0)
  with pytest.raises(ValueError, match="depths"):
    make_cases("single", 1, 100, [1.5], tok, 0)
  with pytest.raises(ValueError, match="too short"):
    make_cases("single", 1, 5000, [0.5], tok, 0, haystack="A short text. " * 50)


def test_heldout_windows_are_seeded_token_windows():
  tok = CharTokenizer()
  windows = heldout_windows(tok, 3, 256, seed=0)
  assert windows.shape == (3, 256) and windows.dtype == np.int32
  np.testing.assert_array_equal(windows, heldout_windows(tok, 3, 256, seed=0))
  assert not np.array_equal(windows, heldout_windows(tok, 3, 256, seed=1))
  assert tok.decode(windows[0]) in load_corpus("heldout")
  with pytest.raises(ValueError, match="too few"):
    heldout_windows(tok, 4, 100, seed=0, text="x" * 300)


def test_smollm2_tokenizer_cases(smollm2_path):
  pytest.importorskip("gguf")
  from memjax.io.gguf_loader import gguf_tokenizer, open_gguf
  tokenizer = gguf_tokenizer(open_gguf(smollm2_path), smollm2_path)
  for case in make_cases("multikey", 2, 2000, [0.25, 0.75], tokenizer, seed=0):
    assert abs(case.context_tokens - 2000) <= 40
    asked = re.search(r"code of (.+)\?", case.question).group(1)
    needle = f"The secret code of {asked} is {case.answers[0]}."
    offset = len(tokenizer.encode(case.context[:case.context.index(needle)]))
    assert abs(offset / case.context_tokens - case.depth) < 0.08

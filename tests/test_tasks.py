"""The task registry, RULER's case generators and scorers, on hand-checked examples."""

import collections
import re

import pytest

from memjax.eval.config import EvalConfig
from memjax.eval.tasks import RULER_TASKS, TASKS, get_task, string_match_all, string_match_part
from memjax.eval.tasks import cwe, fwe, ruler
from memjax.train.data import ByteTokenizer

TOK = ByteTokenizer()
CFG = EvalConfig(tasks=list(RULER_TASKS))
NEEDLE = re.compile(r"One of the special magic (\w+) for ([\w-]+) is: ([\w-]+)\.")


def _cases(name, length, n=3, seed=0):
  task = TASKS[name]
  cfg = EvalConfig(tasks=[name], seed=seed)
  return task.make_cases(n, length, TOK, cfg, task.max_new_tokens)


def _tokens(name, case):
  return len(TOK.encode(case.context)) + len(TOK.encode(case.question)) + TASKS[name].max_new_tokens


def test_registry_names_and_errors():
  assert len(RULER_TASKS) == 11 and set(RULER_TASKS) <= set(TASKS)
  assert {"single", "multikey", "multivalue", "perplexity"} <= set(TASKS)
  assert all(task.name == name for name, task in TASKS.items())
  with pytest.raises(ValueError, match=r"'niah_multi_key_1' \(did you mean 'niah_multikey_1'\?\)"):
    get_task("niah_multi_key_1")


def test_scorers_on_worked_examples():
  assert string_match_all(["Apple", "pear"], "I like apples.") == 0.5  # substring, any case
  assert string_match_all(["KDLEA", "QPWHZ"], " qpwhz, kdlea") == 1.0
  assert string_match_all(["1234567"], " 123456") == 0.0
  assert string_match_part(["Paris", "France"], "It is in FRANCE.") == 1.0
  assert string_match_part(["Paris", "France"], "Lyon") == 0.0


def test_insert_places_needles_in_order_at_sorted_positions():
  assert ruler.insert(["a", "b", "c"], ["X", "Y"], [0.5, 0.0]) == ["X", "a", "Y", "b", "c"]
  assert ruler.insert(["a", "b"], ["X", "Y"], [0.99, 0.6]) == ["a", "X", "Y", "b"]
  assert ruler.insert(["a"], ["X"], [0.0]) == ["X", "a"]


def test_zipf_counts():
  # floor(100 k^-2 / (pi^2 / 6)) for k = 1..4: 60.8, 15.2, 6.75, 3.8
  assert list(fwe.zipf_counts(100, 4)) == [60, 15, 6, 3]


@pytest.mark.parametrize("name, length", [(n, 3000 if n == "cwe" else 1500) for n in RULER_TASKS]
                         + [("cwe", 8000)])
def test_cases_fit_the_length_and_are_deterministic(name, length):
  cases = _cases(name, length)
  slack = 600 if getattr(TASKS[name], "haystack", "") == "essay" else 100  # one more unit
  for case in cases:
    assert length - slack < _tokens(name, case) <= length, name
    assert TASKS[name].score(case, " ".join(case.answers)) == 1.0
    assert TASKS[name].score(case, " nothing") < 1.0
  assert cases == _cases(name, length)
  assert cases != _cases(name, length, seed=1)


def test_niah_single_1_by_hand():
  (case,) = _cases("niah_single_1", 1500, n=1)
  assert case.context.startswith(
      "A special magic number is hidden within the following text. Make sure to memorize it. "
      "I will quiz you about the number afterwards.\nThe grass is green.")
  (needle,) = case.needles
  lines = case.context.split("\n")[1:]
  assert lines.count(needle) == 1 and set(lines) == {ruler.NOISE, needle}
  kind, key, value = NEEDLE.fullmatch(needle).groups()
  assert kind == "numbers" and re.fullmatch(r"[a-z]+-[a-z]+", key)
  assert re.fullmatch(r"\d{7}", value) and case.answers == (value,)
  assert case.question == (f"\nWhat is the special magic number for {key} mentioned in the "
                           f"provided text? The special magic number for {key} mentioned in "
                           "the provided text is")


@pytest.mark.parametrize("name, needles, asked, value_pattern", [
    ("niah_single_2", 1, 1, r"\d{7}"), ("niah_single_3", 1, 1, r"[0-9a-f-]{36}"),
    ("niah_multikey_1", 4, 1, r"\d{7}"), ("niah_multikey_2", 1, 1, r"\d{7}"),
    ("niah_multikey_3", 1, 1, r"[0-9a-f-]{36}"), ("niah_multivalue", 4, 1, r"\d{7}"),
    ("niah_multiquery", 4, 4, r"\d{7}")])
def test_niah_answers_follow_from_the_context(name, needles, asked, value_pattern):
  for case in _cases(name, 1500):
    assert len(case.needles) == needles
    assert all(case.context.count(n) == 1 for n in case.needles)
    found = NEEDLE.findall(case.context)
    by_key = collections.defaultdict(list)
    for _, key, value in found:
      by_key[key].append(value)
    query = re.search(r"for (.+) mentioned in the provided text\?", case.question).group(1)
    keys = re.split(r", and |, ", query)
    assert len(keys) == asked and set(keys) <= set(by_key)
    assert sorted(v for k in keys for v in by_key[k]) == sorted(case.answers)
    assert all(re.fullmatch(value_pattern, a) for a in case.answers)
    assert all(case.context.count(a) == 1 for a in case.answers)
    if name.startswith("niah_multikey_") and name != "niah_multikey_1":
      assert len(found) > 5 and len(by_key) == len(found)  # a haystack of other keys' needles
    else:
      assert len(found) == needles
  plural = "What are all the special magic numbers for"
  assert (plural in case.question) == (name in ("niah_multivalue", "niah_multiquery"))


def test_vt_chain_gives_the_answer():
  for case in _cases("vt", 1500):
    value = re.search(r"assigned the value (\d{5}) in the text", case.question).group(1)
    main = case.context.split("\n\n")[-1]  # after the solved example and the instruction
    assigned, changed = {v for v in re.findall(rf"VAR (\w+) = {value}\b", main)}, True
    while changed:
      new = {b for b, a in re.findall(r"VAR (\w+) = VAR (\w+)", main) if a in assigned}
      changed, assigned = not new <= assigned, assigned | new
    assert assigned == set(case.answers) and len(assigned) == 5
    assert len(case.needles) == 5 and all(main.count(n) == 1 for n in case.needles)
    assert all(re.fullmatch(r"[A-Z]{5}", v) for v in case.answers)
    example = case.context.split("Memorize and track")[1]
    solved = re.search(r"they are: +[A-Z]{3}(?: [A-Z]{3}){4}\n", example)
    assert solved, "the prompt starts with a solved 3-letter example"


@pytest.mark.parametrize("length, common, other", [(3000, 6, 1), (8000, 30, 3)])
def test_cwe_counts(length, common, other):
  for case in _cases("cwe", length, n=2):
    listing = case.context.split(cwe.INTRO)[-1]
    entries = re.findall(r"(\d+)\. (\w+)", listing)
    assert [int(i) for i, _ in entries] == list(range(1, len(entries) + 1))
    counts = collections.Counter(w for _, w in entries)
    assert {counts[w] for w in case.answers} == {common} and len(case.answers) == 10
    assert {c for w, c in counts.items() if w not in case.answers} == {other}
    assert case.context.count(cwe.INTRO) == 2  # the solved example, then the task


def test_fwe_counts():
  for case in _cases("fwe", 1500):
    counts = collections.Counter(case.context[len(fwe.INTRO):].split())
    ranked = [w for w, _ in counts.most_common()]
    assert ranked[0] == "..." and tuple(ranked[1:4]) == case.answers
    assert 3.5 < counts["..."] / counts[case.answers[0]] < 4.5  # rank 1 vs 2: 2^2 times
    assert counts[case.answers[2]] > counts[ranked[4]]  # the third is strictly ahead


def test_a_length_too_short_is_an_error():
  with pytest.raises(ValueError, match="cannot hold this task's prompt"):
    _cases("vt", 600)

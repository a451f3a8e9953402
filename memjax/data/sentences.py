"""Sentence boundaries in English prose, for cutting contexts and placing needles."""

from __future__ import annotations

import re

# Words that end with a period without ending a sentence ("Mr. Tilney", "No. 97"),
# matched case-sensitively so that "said no." still ends a sentence.
ABBREVIATIONS = frozenset(
    {"Mr", "Mrs", "Ms", "Dr", "St", "Esq", "Messrs", "Rev", "Col", "Capt", "Gen", "Lt",
     "No", "Vol", "vs", "Jr", "Sr", "Prof"})

# End punctuation, optional closing quotes/brackets, whitespace, then what opens a sentence.
_END = re.compile(r"[.!?][\"'\u201d\u2019)\]]*\s+(?=[\"'\u201c\u2018(\[]*[A-Z0-9])")
_PARAGRAPH = re.compile(r"\n\s*\n\s*(?=\S)")
_LAST_WORD = re.compile(r"(\w+)\W*$")
_FINAL = re.compile(r"([.!?])[\"'\u201d\u2019)\]]*\s*$")


def sentence_starts(text: str) -> list[int]:
  """Character offsets where a sentence or paragraph begins.

  Args:
    text: prose; paragraphs separated by blank lines.

  Returns:
    Sorted offsets into `text`, always starting with the first non-space
    character (0 for text without leading whitespace). A boundary is a paragraph
    break, or end punctuation followed by whitespace and a capital letter or
    digit, unless the word before the period is a known abbreviation or a
    single-letter initial.
  """
  first = len(text) - len(text.lstrip())
  starts = {first} if first < len(text) else set()
  starts.update(m.end() for m in _PARAGRAPH.finditer(text))
  for m in _END.finditer(text):
    if text[m.start()] == "." and _is_abbreviation(text[:m.start()]):
      continue
    starts.add(m.end())
  return sorted(starts)


def ends_sentence(text: str) -> bool:
  """Whether `text` ends with a complete sentence (by the rules of `sentence_starts`)."""
  match = _FINAL.search(text)
  if match is None:
    return False
  return match.group(1) != "." or not _is_abbreviation(text[:match.start()])


def _is_abbreviation(before_period: str) -> bool:
  """Whether the word ending `before_period` abbreviates rather than ends a sentence."""
  match = _LAST_WORD.search(before_period[-20:])
  if match is None:
    return False
  word = match.group(1)
  return word in ABBREVIATIONS or (len(word) == 1 and word.isupper())

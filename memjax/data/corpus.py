"""The shipped prose corpus (or the user's own text files) and perplexity windows."""

from __future__ import annotations

import pathlib
from typing import Protocol, Sequence

import numpy as np

CORPUS_DIR = pathlib.Path(__file__).parent / "corpus"

# Each split is a different work, so perplexity is never measured on haystack text and
# training never sees either of them. The "*_technical" splits are a second kind of text
# (the Python language reference, cut by topic: disjoint halves), for training on more
# than one domain and for evaluating on a domain unlike the novels.
SPLIT_FILES = {
    "haystack": "persuasion.txt",
    "heldout": "northanger_abbey.txt",
    "train": "emma.txt",
    "haystack_technical": "python_reference_haystack.txt",
    "train_technical": "python_reference_train.txt",
}


class TokenizerLike(Protocol):
  """What memjax.data needs from a tokenizer."""

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`."""

  def decode(self, ids: Sequence[int]) -> str:
    """Text of `ids`."""


def load_corpus(split: str | Sequence[str] = "haystack",
                paths: Sequence[str] | None = None) -> str:
  """Prose for evaluation contexts ("haystack"), perplexity ("heldout") or training ("train").

  Args:
    split: which shipped text to read (a name of SPLIT_FILES), or several names, whose
      texts are joined with a blank line; ignored when `paths` is given.
    paths: local UTF-8 text files to use instead of the shipped corpus. They are
      concatenated with a blank line between them, and the same text then serves
      every split.

  Returns:
    The text, with "\\r\\n" line endings normalised to "\\n".

  Raises:
    ValueError: unknown split, empty file, or a file that is not UTF-8.
    FileNotFoundError: a path that does not exist.
  """
  splits = [split] if isinstance(split, str) else list(split)
  unknown = [s for s in splits if s not in SPLIT_FILES]
  if unknown or not splits:
    raise ValueError(f"unknown corpus split {unknown or splits!r}; use one of {sorted(SPLIT_FILES)}")
  files = ([CORPUS_DIR / SPLIT_FILES[s] for s in splits] if not paths
           else [pathlib.Path(p) for p in paths])
  texts = [_read_text(f) for f in files]
  return "\n\n".join(texts)


def _read_text(path: pathlib.Path) -> str:
  """The stripped text of one corpus file, with clear errors for unusable files."""
  if not path.is_file():
    raise FileNotFoundError(
        f"corpus file {str(path)!r} does not exist; pass paths of existing text files "
        "(or leave `corpus` empty to use the shipped corpus)")
  try:
    text = path.read_text(encoding="utf-8")
  except UnicodeDecodeError as err:
    raise ValueError(
        f"corpus file {str(path)!r} is not UTF-8 text ({err}); convert it to UTF-8") from err
  text = text.replace("\r\n", "\n").strip()
  if not text:
    raise ValueError(f"corpus file {str(path)!r} is empty; give a file with prose in it")
  return text


def heldout_windows(tokenizer: TokenizerLike, n_windows: int, window_tokens: int, seed: int,
                    text: str | None = None) -> np.ndarray:
  """Non-overlapping token windows of held-out prose, for perplexity.

  Args:
    tokenizer: has `encode(str) -> list[int]`.
    n_windows: number of windows N.
    window_tokens: tokens per window W.
    seed: chooses which windows (deterministic for a given seed).
    text: prose to cut from; defaults to the shipped "heldout" split.

  Returns:
    int32 array [N, W]; windows are aligned to multiples of W in the token stream,
    returned in stream order.
  """
  if n_windows < 1 or window_tokens < 1:
    raise ValueError(f"need n_windows >= 1 and window_tokens >= 1, "
                     f"got {n_windows} and {window_tokens}")
  ids = np.asarray(tokenizer.encode(load_corpus("heldout") if text is None else text), np.int32)
  n_slots = len(ids) // window_tokens
  if n_slots < n_windows:
    raise ValueError(
        f"held-out text has {len(ids)} tokens, too few for {n_windows} windows of "
        f"{window_tokens} tokens; lower ppl_windows or ppl_window_tokens, or give a longer corpus")
  slots = np.sort(np.random.default_rng(seed).choice(n_slots, n_windows, replace=False))
  return np.stack([ids[s * window_tokens:(s + 1) * window_tokens] for s in slots])

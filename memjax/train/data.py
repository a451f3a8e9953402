"""Training batches: packed prose mixed with synthetic retrieval and recall sequences.

Batch i is a pure function of (seed, i), so a run resumes exactly from a saved position.
Each row is, at the configured rates, one of:

  prose:     seq_len consecutive tokens of the corpus; windows are visited in a seeded
             random order, a new order each epoch.
  retrieval: prose with 1-4 facts hidden at sentence boundaries, then a question about one
             of them and its answer (one of TEMPLATES: numbers, codes, places, phrases):
               ... Remember: the locker number assigned to Wilhelmina Crane is 4821. ...
               Q: Which locker number was assigned to Wilhelmina Crane?
               A: The locker number assigned to Wilhelmina Crane is 4821.
  recall:    prose with a span of other prose to memorize at a sentence boundary, then the
             span recited at the end:
               ... Memorize these words: <span> (end of words) ...
               Recite the words you memorized: <span>

The synthetic sequences share nothing with the evaluation tasks of memjax.data.retrieval:
other names (not even a first or last name in common), other sentence templates, 4-digit
numbers, letter codes, places and phrases instead of 5-digit codes, and, by default, prose from the "train" split.
Every row has exactly seq_len tokens; pieces are tokenized separately and concatenated.
"""

from __future__ import annotations

from typing import Any, Iterator, NamedTuple, Sequence

import numpy as np

from memjax.data.corpus import TokenizerLike
from memjax.data.sentences import sentence_starts

PROSE, RETRIEVAL, RECALL = 0, 1, 2

TRAIN_NAMES = (
    "Wilhelmina Crane", "Barnaby Quist", "Cordelia Voss", "Ezekiel Thrupp", "Lucinda Marrow",
    "Ambrose Kettle", "Philippa Dunmore", "Casimir Hale", "Rosamund Tull", "Gideon Farrow",
    "Hermione Bligh", "Lysander Gotch", "Millicent Dray", "Octavius Brine", "Perpetua Lowe",
    "Quentin Sallow", "Seraphina Birch", "Thaddeus Mole", "Ursula Fenwick", "Valentine Orme",
    "Winifred Slade", "Xavier Moss", "Ysolde Pratt", "Zebedee Flint", "Agatha Crowe",
    "Bartholomew Finch", "Clementine Roe", "Desmond Lusk", "Eulalia Grey", "Florian Keble",
    "Griselda Stokes", "Horatio Pell", "Imogen Tarrant", "Jasper Wilde", "Kezia Marlow",
    "Leopold Nance", "Mabel Quarles", "Nathaniel Cray", "Orla Bexley", "Percival Dunne",
)
ATTRIBUTES = ("locker number", "room number", "ticket number", "parcel number", "seat number")
# Fact templates: (fact sentence, question and answer, kind of value). The question ends
# with the answer sentence, whose value tokens (and the final full stop) are the answer span.
# Several templates and value kinds, so that gates learn to keep facts, not one sentence.
TEMPLATES = (
    (" Remember: the {attribute} assigned to {name} is {value}.",
     "\n\nQ: Which {attribute} was assigned to {name}?\nA: The {attribute} assigned to {name} is",
     "number"),
    (" Note that the access key of {name} is {value}.",
     "\n\nQ: What is the access key of {name}?\nA: The access key of {name} is",
     "code"),
    (" For the record, {name} was born in {value}.",
     "\n\nQ: Where was {name} born?\nA: {name} was born in",
     "place"),
    (" Please keep in mind that {name} likes to say \"{value}\".",
     "\n\nQ: What does {name} like to say?\nA: {name} likes to say \"",
     "phrase"),
)
QUESTION_END = {"number": ".", "code": ".", "place": ".", "phrase": "\"."}
PLACE_PARTS = (("Bel", "Cor", "Dun", "Fal", "Grim", "Hal", "Kes", "Lom", "Mar", "Pen", "Quel",
                "Ros", "Tam", "Vel", "Wyn"),
               ("ford", "mere", "wick", "ton", "bury", "stead", "haven", "moor", "field"))
PHRASE_WORDS = ("amber", "lantern", "river", "quiet", "copper", "meadow", "thunder", "velvet",
                "orchard", "silver", "harbour", "crimson", "willow", "ember", "frost", "garden",
                "marble", "falcon", "cinder", "hollow")
MEMORIZE = (" Memorize these words:", " (end of words)")
RECITE = "\n\nRecite the words you memorized:"
MAX_FACTS = 4
RECALL_SPAN = (8, 32)  # tokens of a recall span, inclusive range
MIN_PROSE_FRACTION = 0.25  # of seq_len, in every synthetic row
# Keep the random streams of rows, window orders and validation cases apart.
_ROW_STREAM, _ORDER_STREAM, _CASE_STREAM = 0, 1, 2


class RetrievalRow(NamedTuple):
  """One retrieval row and where its parts are.

  tokens: int32 [T]: prose with facts, then the question prompt, then the answer.
  prompt_tokens: length of the question prompt (it ends right before the answer).
  answer_tokens: length of the answer span at the end of the row.
  value: the asked fact's value as text (what a correct answer starts with).
  fact_marks: bool [T], True on the tokens of every fact sentence.
  """
  tokens: np.ndarray
  prompt_tokens: int
  answer_tokens: int
  value: str
  fact_marks: np.ndarray


class ByteTokenizer:
  """UTF-8 bytes as token ids (vocabulary 256), for tiny test models."""

  vocab_size = 256

  def encode(self, text: str) -> list[int]:
    return list(text.encode("utf-8"))

  def decode(self, ids: Sequence[int]) -> str:
    return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


class TrainData:
  """Batches {"tokens": int32 [B, T], "kind": int32 [B] (PROSE, RETRIEVAL or RECALL),
  "answer": bool [B, T], "fact": bool [B, T]}: "answer" is True on the answer span of a
  synthetic row (the value and full stop after "A: ...", or the recited span), "fact" on
  what the answer needs from far back (the fact sentences, or the memorize span); both all
  False in prose rows.

  Args:
    tokenizer: has `encode` and `decode`; special tokens it adds around every text are
      dropped from the pieces.
    text: prose to pack and to hide facts in (paragraphs separated by blank lines).
    seq_len: T, tokens per row.
    batch_size: B, rows per batch.
    seed: with the batch index, fixes every row.
    synthetic_fraction: probability that a row is synthetic.
    recall_fraction: probability that a synthetic row is recall rather than retrieval.
    fact_templates: retrieval facts use the first this many of TEMPLATES (1: the original
      locker-number template only).

  Raises:
    ValueError: text too short for one row, or seq_len too short for the synthetic rows
      (the message gives the minimum).
  """

  def __init__(self, tokenizer: TokenizerLike, text: str, seq_len: int, batch_size: int,
               seed: int, synthetic_fraction: float = 0.5, recall_fraction: float = 0.5,
               fact_templates: int = 1):
    if not 1 <= fact_templates <= len(TEMPLATES):
      raise ValueError(f"fact_templates must lie in [1, {len(TEMPLATES)}], got {fact_templates}")
    self.fact_templates = fact_templates
    self.tokenizer, self.seq_len, self.batch_size = tokenizer, seq_len, batch_size
    self.seed = seed
    self.synthetic_fraction, self.recall_fraction = synthetic_fraction, recall_fraction
    self._encode = _bare_encoder(tokenizer)
    self.ids, self.starts = _tokenize_sentences(text, self._encode)
    self.n_windows = len(self.ids) // seq_len
    self._cached_order: tuple[int, np.ndarray] = (-1, np.empty(0, np.int64))
    if self.n_windows < 1:
      raise ValueError(f"the corpus has {len(self.ids)} tokens, fewer than seq_len={seq_len}; "
                       "give a longer corpus or lower seq_len")
    if synthetic_fraction > 0:
      self._max_facts, self._max_span = self._synthetic_limits()

  def iterator(self, position: int = 0) -> BatchIterator:
    """Batches `position`, `position + 1`, ..."""
    return BatchIterator(self, position)

  def batch(self, index: int) -> dict[str, np.ndarray]:
    """Batch number `index` (0-based); the same for the same seed and index."""
    rows = [self._row(index, r) for r in range(self.batch_size)]
    return {"tokens": np.stack([row[0] for row in rows]),
            "kind": np.array([row[1] for row in rows], np.int32),
            "answer": np.stack([row[2] for row in rows]),
            "fact": np.stack([row[3] for row in rows])}

  def _row(self, index: int, r: int) -> tuple[np.ndarray, int, np.ndarray, np.ndarray]:
    """(tokens [T], kind, answer [T], fact [T]): masks of the answer span and of what must
    be kept to answer (the fact sentences, or the span to memorize)."""
    rng = np.random.default_rng([self.seed, _ROW_STREAM, index, r])
    if rng.random() >= self.synthetic_fraction:
      none = np.zeros(self.seq_len, bool)
      return self._prose(index * self.batch_size + r), PROSE, none, none
    if rng.random() < self.recall_fraction:
      tokens, n_answer, marks = self._recall(rng)
      return tokens, RECALL, self._last(n_answer), marks
    row = self._retrieval(rng)
    return row.tokens, RETRIEVAL, self._last(row.answer_tokens), row.fact_marks

  def _last(self, n: int) -> np.ndarray:
    """bool [T]: True on the last n tokens."""
    mask = np.zeros(self.seq_len, bool)
    mask[self.seq_len - n:] = True
    return mask

  def _prose(self, g: int) -> np.ndarray:
    """The g-th prose window in the seeded order (epoch g // n_windows)."""
    epoch, offset = divmod(g, self.n_windows)
    window = self._order(epoch)[offset]
    return self.ids[window * self.seq_len:(window + 1) * self.seq_len]

  def _order(self, epoch: int) -> np.ndarray:
    """The seeded order of the prose windows in `epoch` (the last one is cached)."""
    if self._cached_order[0] != epoch:
      rng = np.random.default_rng([self.seed, _ORDER_STREAM, epoch])
      self._cached_order = (epoch, rng.permutation(self.n_windows))
    return self._cached_order[1]

  def retrieval_case(self, index: int) -> RetrievalRow:
    """Retrieval row number `index` of this data's seed, split into its parts (for
    validation: draw it from a TrainData whose seed training does not use)."""
    return self._retrieval(np.random.default_rng([self.seed, _CASE_STREAM, index]))

  def _retrieval(self, rng: np.random.Generator) -> RetrievalRow:
    """Facts in prose, then a question on one of them and its answer."""
    k = int(rng.integers(1, self._max_facts + 1))
    names = [TRAIN_NAMES[i] for i in rng.choice(len(TRAIN_NAMES), k, replace=False)]
    templates = [TEMPLATES[i] for i in rng.integers(self.fact_templates, size=k)]
    values = [_value(rng, kind) for _, _, kind in templates]
    attributes = [ATTRIBUTES[i] for i in rng.integers(len(ATTRIBUTES), size=k)]
    facts = [self._encode(fact.format(attribute=a, name=n, value=v))
             for (fact, _, _), a, n, v in zip(templates, attributes, names, values)]
    asked = int(rng.integers(k))
    _, question, kind = templates[asked]
    prompt = self._encode(question.format(attribute=attributes[asked], name=names[asked]))
    answer = self._encode(" " * (kind != "phrase") + values[asked] + QUESTION_END[kind])
    tokens, starts = self._compose(rng, facts, np.concatenate([prompt, answer]))
    fact_marks = np.zeros(self.seq_len, bool)
    for start, fact in zip(starts, facts):
      fact_marks[start:start + len(fact)] = True
    return RetrievalRow(tokens, len(prompt), len(answer), values[asked], fact_marks)

  def _recall(self, rng: np.random.Generator) -> tuple[np.ndarray, int, np.ndarray]:
    """(row, tokens of the recited span at the end, bool [T] marks of the memorized span)."""
    n = int(rng.integers(RECALL_SPAN[0], self._max_span + 1))
    first = int(rng.integers(np.searchsorted(self.starts, len(self.ids) - n, "right")))
    span = self.ids[self.starts[first]:self.starts[first] + n]
    memorize = np.concatenate([self._encode(MEMORIZE[0]), span, self._encode(MEMORIZE[1])])
    tokens, (start,) = self._compose(rng, [memorize],
                                     np.concatenate([self._encode(RECITE), span]))
    marks = np.zeros(self.seq_len, bool)
    marks[start:start + len(memorize)] = True
    return tokens, n, marks

  def _compose(self, rng: np.random.Generator, inserts: list[np.ndarray],
               tail: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Prose from a random sentence start with `inserts` at sentence boundaries, then `tail`;
    and the offset of each insert in the row (in the order given)."""
    budget = self.seq_len - sum(len(x) for x in inserts) - len(tail)
    start = self.starts[rng.integers(np.searchsorted(self.starts, len(self.ids) - budget, "right"))]
    lo, hi = np.searchsorted(self.starts, [start, start + budget], "left")
    cuts = np.sort(rng.choice(np.append(self.starts[lo:hi], start + budget), len(inserts))) - start
    prose = self.ids[start:start + budget]
    pieces, last, offsets, length = [], 0, [], 0
    for cut, insert in zip(cuts, inserts):
      pieces += [prose[last:cut], insert]
      offsets.append(length + cut - last)
      length += cut - last + len(insert)
      last = cut
    return np.concatenate(pieces + [prose[last:], tail]).astype(np.int32), offsets

  def _synthetic_limits(self) -> tuple[int, int]:
    """(most facts per retrieval row, longest recall span) that leave enough prose."""
    longest = lambda template, kind: max(
        len(self._encode(template.format(attribute=a, name=n, value=_longest_value(kind))))
        for a in ATTRIBUTES for n in TRAIN_NAMES)
    room = self.seq_len - int(MIN_PROSE_FRACTION * self.seq_len)
    # +4: another value may take up to 4 more tokens than the longest drawn here.
    used = TEMPLATES[:self.fact_templates]
    fact = max(longest(f, kind) for f, _, kind in used) + 4
    question = max(longest(q + " {value}" + QUESTION_END[kind], kind) for _, q, kind in used) + 4
    max_facts = min(MAX_FACTS, (room - question) // fact)
    overhead = sum(len(self._encode(s)) for s in (*MEMORIZE, RECITE))
    max_span = min(RECALL_SPAN[1], (room - overhead) // 2)
    if max_facts < 1 or max_span < RECALL_SPAN[0]:
      need = max(fact + question, overhead + 2 * RECALL_SPAN[0])
      raise ValueError(
          f"seq_len={self.seq_len} is too short for synthetic sequences: they need about "
          f"{int(need / (1 - MIN_PROSE_FRACTION)) + 1} tokens; raise seq_len or set "
          "synthetic_fraction=0")
    return max_facts, max_span


def _value(rng: np.random.Generator, kind: str) -> str:
  """A random value of one kind: a 4-digit number, a code such as "QX-417", a made-up
  place name, or a three-word phrase."""
  if kind == "number":
    return str(int(rng.integers(1000, 10_000)))
  if kind == "code":
    letters = "".join(chr(ord("A") + int(i)) for i in rng.integers(26, size=2))
    return f"{letters}-{int(rng.integers(100, 1000))}"
  if kind == "place":
    return "".join(part[int(rng.integers(len(part)))] for part in PLACE_PARTS)
  return " ".join(PHRASE_WORDS[int(i)] for i in rng.choice(len(PHRASE_WORDS), 3, replace=False))


def _longest_value(kind: str) -> str:
  """A value of `kind` among the longest in characters (for length limits)."""
  return {"number": "8888", "code": "WW-888", "place": "Grimstead",
          "phrase": "thunder orchard harbour"}[kind]


class BatchIterator(Iterator[dict[str, np.ndarray]]):
  """Consecutive batches of a TrainData; `get_state` / `set_state` save and restore it."""

  def __init__(self, data: TrainData, position: int = 0):
    self.data, self.position = data, position

  def __next__(self) -> dict[str, np.ndarray]:
    batch = self.data.batch(self.position)
    self.position += 1
    return batch

  def get_state(self) -> dict[str, Any]:
    """JSON-able state: the index of the next batch."""
    return {"position": self.position}

  def set_state(self, state: dict[str, Any]) -> None:
    self.position = int(state["position"])


def _bare_encoder(tokenizer: TokenizerLike):
  """`encode` without the special tokens the tokenizer adds around every text, as int32."""
  empty, probe = tokenizer.encode(""), tokenizer.encode("a")
  head = next((i for i, (e, p) in enumerate(zip(empty, probe)) if e != p), len(empty))
  tail = len(empty) - head

  def encode(text: str) -> np.ndarray:
    ids = tokenizer.encode(text)
    return np.asarray(ids[head:len(ids) - tail], np.int32)

  return encode


def _tokenize_sentences(text: str, encode) -> tuple[np.ndarray, np.ndarray]:
  """Token ids of `text` and the token offsets where its sentences start.

  Each sentence is encoded with the whitespace before it (" She said", "\\n\\nChapter"),
  the way BPE tokenizers split running text.
  """
  cuts = [0]
  for s in sentence_starts(text)[1:]:
    while s > cuts[-1] and text[s - 1].isspace():
      s -= 1
    cuts.append(s)
  cuts.append(len(text))
  pieces = [encode(text[a:b]) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]
  lengths = np.array([len(p) for p in pieces])
  starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])[lengths > 0]
  return np.concatenate(pieces).astype(np.int32), starts.astype(np.int64)

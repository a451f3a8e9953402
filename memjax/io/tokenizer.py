"""Text <-> token ids, on top of the Hugging Face `tokenizers` library.

Three ways in: `Tokenizer.from_byte_level_bpe` rebuilds a GPT-2-style byte-level BPE tokenizer
from the vocabulary stored in a GGUF file's metadata, `Tokenizer.from_sentencepiece_bpe` a
SentencePiece-style BPE one (Gemma's GGUF files: "▁" for spaces, byte fallback, no merges
stored); `Tokenizer.from_files` reads a `tokenizer.json` (plus optional
`tokenizer_config.json`) from a Hugging Face model directory.

BOS/EOS: `encode` adds exactly the special tokens the model's files ask for, like
`transformers.AutoTokenizer(...).encode`. For GGUF that is the `tokenizer.ggml.add_bos_token` /
`add_eos_token` flags (absent = False for byte-level BPE); SmolLM2's file sets add_bos_token=False,
so `encode` adds no BOS there. For a `tokenizer.json` it is its post-processor alone: transformers
5 ignores the `add_bos_token` / `add_eos_token` flags of `tokenizer_config.json` there (checked
with and without a post-processor), and so do we.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterable, Sequence

import tokenizers
from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers, processors

from memjax import checks

# llama.cpp token types (tokenizer.ggml.token_type).
TOKEN_TYPE_CONTROL = 3
TOKEN_TYPE_USER_DEFINED = 4
# SentencePiece's visible space.
SPACE = "\u2581"

# `tokenizer.ggml.pre` values whose text splitting is the GPT-2 regex of the ByteLevel
# pre-tokenizer. transformers builds exactly this for them, and we match transformers' ids.
GPT2_REGEX_PRE_TOKENIZERS = ("default", "gpt2", "smollm")


def _byte_alphabet() -> frozenset[str]:
  """The 256 printable characters byte-level BPE uses to spell raw bytes."""
  return frozenset(pre_tokenizers.ByteLevel.alphabet())


class Tokenizer:
  """A tokenizer with known BOS/EOS ids and an optional chat template.

  Attributes:
    backend: the `tokenizers.Tokenizer` doing the work.
    bos_id: id of the beginning-of-sequence token, or None.
    eos_id: id of the end-of-sequence token, or None.
    chat_template: the model's Jinja chat template source, or None. It is only exposed, not
      rendered (memjax does not depend on jinja2).
  """

  def __init__(self, backend: tokenizers.Tokenizer, *, bos_id: int | None, eos_id: int | None,
               chat_template: str | None = None):
    self.backend = backend
    self.bos_id = bos_id
    self.eos_id = eos_id
    self.chat_template = chat_template

  @classmethod
  def from_byte_level_bpe(cls, tokens: Sequence[str], merges: Iterable[str], *,
                          token_types: Sequence[int] | None, pre_tokenizer: str | None,
                          bos_id: int | None, eos_id: int | None, add_bos: bool = False,
                          add_eos: bool = False, chat_template: str | None = None) -> Tokenizer:
    """Builds a GPT-2-style byte-level BPE tokenizer from llama.cpp's vocabulary description.

    Args:
      tokens: token strings indexed by id (`tokenizer.ggml.tokens`), spelled in the byte alphabet.
      merges: BPE merges "left right", highest priority first (`tokenizer.ggml.merges`).
      token_types: llama.cpp token type per id; CONTROL tokens become special added tokens,
        USER_DEFINED ones plain added tokens, so both are matched whole in text.
      pre_tokenizer: `tokenizer.ggml.pre`; one of GPT2_REGEX_PRE_TOKENIZERS (None = "default").
      bos_id, eos_id: special token ids.
      add_bos, add_eos: whether `encode` adds BOS / EOS around every text.
      chat_template: Jinja source of the chat template, if any.

    Raises:
      ValueError: an unsupported pre-tokenizer, or a malformed merge.
    """
    pre_tokenizer = pre_tokenizer or "default"
    if pre_tokenizer not in GPT2_REGEX_PRE_TOKENIZERS:
      raise ValueError(f"pre-tokenizer {pre_tokenizer!r} is not supported; supported: "
                       f"{', '.join(GPT2_REGEX_PRE_TOKENIZERS)}")
    vocab = {token: index for index, token in enumerate(tokens)}
    merge_pairs = []
    for merge in merges:
      pair = tuple(merge.split(" "))
      if len(pair) != 2:
        raise ValueError(f"malformed BPE merge {merge!r}: expected 'left right'")
      merge_pairs.append(pair)
    backend = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=merge_pairs))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()

    alphabet = _byte_alphabet()
    # A CONTROL token spelled outside the byte alphabet is a mislabelled llama.cpp entry; like
    # transformers we leave it out rather than let it match text.
    _add_typed_tokens(backend, tokens, token_types, lambda token: set(token) <= alphabet)
    _set_bos_eos_template(backend, tokens, bos_id if add_bos else None, eos_id if add_eos else None)
    return cls(backend, bos_id=bos_id, eos_id=eos_id, chat_template=chat_template)

  @classmethod
  def from_sentencepiece_bpe(cls, tokens: Sequence[str], *, token_types: Sequence[int] | None,
                             bos_id: int | None, eos_id: int | None, unk_id: int | None,
                             add_bos: bool = False, add_eos: bool = False,
                             chat_template: str | None = None) -> Tokenizer:
    """Builds a SentencePiece-style BPE tokenizer from a GGUF vocabulary without merges.

    Text is normalised with spaces as "▁" and split by BPE, with unknown characters spelled
    as their UTF-8 byte tokens ("<0x41>"). The merges are recovered from the vocabulary:
    every way of cutting a token into two tokens of the vocabulary is a merge, ranked by
    the token's id (earlier ids merge first; Gemma's files list tokens in merge order, and
    their scores do not follow it), longer left pieces first. A token made only of
    spaces is stored with real spaces, and respelled with "▁" so that it can be merged.

    Args:
      tokens: token strings indexed by id (`tokenizer.ggml.tokens`).
      token_types: llama.cpp token type per id (CONTROL -> special added token,
        USER_DEFINED -> plain added token, both matched whole in text).
      bos_id, eos_id, unk_id: special token ids (unk: the token of unknown pieces).
      add_bos, add_eos: whether `encode` adds BOS / EOS around every text.
      chat_template: Jinja source of the chat template, if any.
    """
    tokens = [SPACE * len(t) if " " in t and not t.strip() else t for t in tokens]
    vocab = {token: index for index, token in enumerate(tokens)}
    merges = [(token[:cut], token[cut:])
              for token, _ in sorted(vocab.items(), key=lambda item: item[1])
              for cut in range(len(token) - 1, 0, -1)
              if token[:cut] in vocab and token[cut:] in vocab]
    unk = tokens[unk_id] if unk_id is not None else None
    backend = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=unk,
                                              fuse_unk=True, byte_fallback=True))
    backend.normalizer = normalizers.Replace(" ", SPACE)
    backend.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.ByteFallback(),
                                         decoders.Fuse()])
    _add_typed_tokens(backend, tokens, token_types, lambda token: True)
    _set_bos_eos_template(backend, tokens, bos_id if add_bos else None, eos_id if add_eos else None)
    return cls(backend, bos_id=bos_id, eos_id=eos_id, chat_template=chat_template)

  @classmethod
  def from_files(cls, tokenizer_json: str | pathlib.Path, *, bos_id: int | None = None,
                 eos_id: int | None = None) -> Tokenizer:
    """Loads `tokenizer.json`, plus `tokenizer_config.json` / `chat_template.jinja` beside it.

    BOS/EOS ids come from the arguments when given (e.g. from the model's config.json), else from
    the `bos_token` / `eos_token` strings of tokenizer_config.json. `encode` adds whatever the
    tokenizer.json post-processor adds.
    """
    tokenizer_json = pathlib.Path(tokenizer_json)
    backend = tokenizers.Tokenizer.from_file(str(tokenizer_json))
    config_path = tokenizer_json.with_name("tokenizer_config.json")
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    if bos_id is None:
      bos_id = _token_id(backend, config.get("bos_token"))
    if eos_id is None:
      eos_id = _token_id(backend, config.get("eos_token"))
    template_path = tokenizer_json.with_name("chat_template.jinja")
    chat_template = (template_path.read_text() if template_path.exists()
                     else config.get("chat_template"))
    return cls(backend, bos_id=bos_id, eos_id=eos_id, chat_template=chat_template)

  @property
  def vocab_size(self) -> int:
    """Number of distinct token ids, added tokens included."""
    return self.backend.get_vocab_size(with_added_tokens=True)

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`; special-token text such as "<|im_start|>" maps to its single id.

    BOS/EOS are added only when the model's tokenizer files ask for it (see the module docstring).

    Raises:
      TypeError: `text` is not a string.
      ValueError: `text` holds a lone surrogate (it is not valid Unicode).
    """
    if not isinstance(text, str):
      raise TypeError(f"encode takes a string, got {type(text).__name__}")
    try:
      text.encode("utf-8")
    except UnicodeEncodeError as err:
      raise ValueError(f"text holds a lone surrogate {text[err.start]!r} at index {err.start}, "
                       "which is not valid Unicode; remove it, or repair the text with "
                       "text.encode('utf-8', 'replace').decode()") from None
    return self.backend.encode(text).ids

  def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
    """Text of a sequence of token ids (special tokens written out unless skipped).

    Raises:
      TypeError: an id is not an integer.
      ValueError: an id outside [0, vocab_size) (the message names it and the vocabulary size).
    """
    ids = checks.token_ids(ids, self.vocab_size, "decode")
    return self.backend.decode(ids, skip_special_tokens=skip_special_tokens)


def _add_typed_tokens(backend: tokenizers.Tokenizer, tokens: Sequence[str],
                      token_types: Sequence[int] | None, control_ok) -> None:
  """Adds CONTROL tokens (those `control_ok` accepts) as special tokens and USER_DEFINED ones
  as plain added tokens, so that both are matched whole in text."""
  types = token_types if token_types is not None else ()
  control = [AddedToken(token, special=True, normalized=False)
             for token, kind in zip(tokens, types)
             if kind == TOKEN_TYPE_CONTROL and control_ok(token)]
  user_defined = [AddedToken(token, special=False, normalized=False)
                  for token, kind in zip(tokens, types) if kind == TOKEN_TYPE_USER_DEFINED]
  backend.add_special_tokens(control)
  backend.add_tokens(user_defined)


def _token_id(backend: tokenizers.Tokenizer, token: str | dict | None) -> int | None:
  """Id of a token given as a string or as a serialized AddedToken dict."""
  if isinstance(token, dict):
    token = token.get("content")
  return None if token is None else backend.token_to_id(token)


def _set_bos_eos_template(backend: tokenizers.Tokenizer, tokens: Sequence[str],
                          bos_id: int | None, eos_id: int | None) -> None:
  """Makes `encode` wrap every text as [bos] text [eos] (each only when its id is given)."""
  if bos_id is None and eos_id is None:
    return
  specials = [(tokens[i], i) for i in (bos_id, eos_id) if i is not None]
  single = " ".join(([f"{tokens[bos_id]}:0"] if bos_id is not None else []) + ["$A:0"]
                    + ([f"{tokens[eos_id]}:0"] if eos_id is not None else []))
  backend.post_processor = processors.TemplateProcessing(single=single, special_tokens=specials)

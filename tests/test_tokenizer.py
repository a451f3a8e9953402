"""The GGUF-built tokenizer gives transformers' ids, round-trips text and knows its specials."""

import gguf
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memjax.io import Tokenizer
from memjax.io.gguf_loader import gguf_tokenizer, open_gguf

TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "",
    " ",
    " leading space and trailing space ",
    "Café, naïve, façade, Ångström, Straße, résumé",
    "日本語のテキストと中文文本, 한국어",
    "Emoji: 🤗🚀👍🏽 and a family 👨‍👩‍👧",
    "def f(x):\n    if x:\n        return [i ** 2 for i in range(10)]\n\treturn None\n",
    "a    b\t\tc\n\n\nd   \n  \n",
    "     ",
    "\n\n\n\n",
    "Digits: 0 7 42 123 2024 3.14159 1,000,000 x² ½ ٣",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more text<|im_end|>",
    "<|im_start|> not-a-special <|im_star",
    "I'm sure they'll say it's what we'd've done; DON'T SHOUT'S",
    "URLs: https://example.com/a?b=c&d=e#f and emails a.b@c.de",
    "mixed\r\nline\rendings",
    "Ωμέγα Кириллица עברית العربية हिन्दी",
]


@pytest.fixture(scope="module")
def smollm2_reader(smollm2_path):
  return open_gguf(smollm2_path)


@pytest.fixture(scope="module")
def tokenizer(smollm2_reader, smollm2_path):
  return gguf_tokenizer(smollm2_reader, smollm2_path)


@pytest.mark.oracle
@pytest.mark.parametrize("text", TEXTS)
def test_ids_match_transformers(tokenizer, hf_smollm2_tokenizer, text):
  assert tokenizer.encode(text) == hf_smollm2_tokenizer.encode(text)


@pytest.mark.oracle
@settings(max_examples=200, deadline=None, database=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=40))
def test_ids_match_transformers_on_random_text(tokenizer, hf_smollm2_tokenizer, text):
  assert tokenizer.encode(text) == hf_smollm2_tokenizer.encode(text)


@pytest.mark.parametrize("text", TEXTS)
def test_decode_inverts_encode(tokenizer, text):
  assert tokenizer.decode(tokenizer.encode(text)) == text


@pytest.mark.oracle
def test_decode_matches_transformers(tokenizer, hf_smollm2_tokenizer):
  ids = tokenizer.encode(" ".join(TEXTS))
  assert tokenizer.decode(ids) == hf_smollm2_tokenizer.decode(ids)
  assert (tokenizer.decode(ids, skip_special_tokens=True)
          == hf_smollm2_tokenizer.decode(ids, skip_special_tokens=True))


def test_special_tokens(tokenizer):
  assert (tokenizer.bos_id, tokenizer.eos_id) == (1, 2)
  assert tokenizer.vocab_size == 49152
  assert tokenizer.encode("<|im_start|><|im_end|>") == [1, 2]
  assert tokenizer.decode([1, 2]) == "<|im_start|><|im_end|>"


def test_no_bos_added_like_transformers(tokenizer):
  ids = tokenizer.encode("Hello")
  assert ids[0] != tokenizer.bos_id
  assert len(ids) == 1


def test_chat_template_exposed(tokenizer):
  assert "<|im_start|>" in tokenizer.chat_template


def _write_vocab_only_gguf(path, tokens, token_types, merges, add_bos, add_eos):
  """A GGUF holding only tokenizer metadata (enough for both tokenizers)."""
  writer = gguf.GGUFWriter(path, "llama")
  writer.add_tokenizer_model("gpt2")
  writer.add_tokenizer_pre("smollm")
  writer.add_token_list(tokens)
  writer.add_token_types(token_types)
  writer.add_token_merges(merges)
  writer.add_bos_token_id(1)
  writer.add_eos_token_id(2)
  writer.add_add_bos_token(add_bos)
  writer.add_add_eos_token(add_eos)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()


@pytest.mark.oracle
@pytest.mark.parametrize("add_bos, add_eos", [(True, False), (False, False), (True, True)])
def test_bos_eos_flags_match_transformers(tmp_path, smollm2_reader, add_bos, add_eos):
  transformers = pytest.importorskip("transformers")
  fields = {key: smollm2_reader.fields[f"tokenizer.ggml.{key}"].contents()
            for key in ("tokens", "token_type", "merges")}
  path = tmp_path / "vocab.gguf"
  # The first 4096 tokens and 2000 merges (whose results all lie among those tokens) keep the file
  # small and the BPE non-trivial.
  _write_vocab_only_gguf(path, fields["tokens"][:4096], fields["token_type"][:4096],
                         fields["merges"][:2000], add_bos, add_eos)
  ours = gguf_tokenizer(open_gguf(path), path)
  theirs = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
  for text in ["Hello world", "<|im_start|>hi", "日本 🤗 12"]:
    assert ours.encode(text) == theirs.encode(text)
  ids = ours.encode("Hello")
  assert (ids[0] == ours.bos_id, ids[-1] == ours.eos_id) == (add_bos, add_eos)


def test_unsupported_pre_tokenizer_is_rejected():
  with pytest.raises(ValueError, match="pre-tokenizer 'qwen2' is not supported"):
    Tokenizer.from_byte_level_bpe(["a", "b"], [], token_types=None, pre_tokenizer="qwen2",
                                  bos_id=None, eos_id=None)

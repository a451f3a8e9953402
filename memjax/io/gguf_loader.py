"""Load a GGUF file (llama.cpp's format) into memjax's parameter pytree.

Architectures: those of the families with a `gguf_architecture` (memjax.models.families:
llama, qwen2, qwen3, gemma3). Tensor names and shapes come from the family's parameter
table. Weights are dequantised to float32 with the `gguf` package (F32/F16/BF16, Q4_0..Q8_0
and the K-quants Q2_K..Q6_K), transposed to the `x @ w` layout and, for the "llama"
architecture's q/k, re-ordered from llama.cpp's interleaved RoPE layout back to Hugging
Face's "rotate_half" layout. A `rope_freqs.weight` tensor (llama.cpp's Llama 3 RoPE
scaling: one divisor per frequency) is read into the config, not the params. Tokenizers: GPT-2 byte-level BPE ("gpt2") and SentencePiece
BPE ("llama", as Gemma's files describe it). See `memjax.io.layout` for the pytree.
"""

from __future__ import annotations

import pathlib

import gguf
import numpy as np

from memjax.io import layout
from memjax.io.errors import ModelFileError
from memjax.io.tokenizer import Tokenizer
from memjax.models.config import ModelConfig, RopeScaling
from memjax.models.families import family_of_gguf, get_family

Q = gguf.GGMLQuantizationType
# Types whose dequantisation we test (round trips through gguf.quants.quantize).
SUPPORTED_TYPES = frozenset({Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1,
                             Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K})

_REQUIRED = object()
# llama.cpp's per-frequency RoPE divisors (Llama 3 scaling): a config tensor, not a parameter.
ROPE_FREQS = "rope_freqs.weight"


def load_gguf(path: str | pathlib.Path,
              dtype: str = "float32") -> tuple[ModelConfig, dict, Tokenizer]:
  """Reads config, weights and tokenizer of a GGUF file of a supported architecture.

  Args:
    path: the .gguf file.
    dtype: "float32" or "bfloat16"; dtype of the returned host (numpy) arrays and of cfg.dtype.

  Returns:
    (cfg, params, tokenizer); params as described in `memjax.io.layout`.

  Raises:
    ModelFileError: missing, truncated or corrupt file, bad magic, an unsupported architecture,
      a missing/unknown/mis-shaped tensor or an unsupported tensor type; the message names the
      file (and the tensor or metadata key involved).
  """
  path = pathlib.Path(path)
  reader = open_gguf(path)
  tensors = {tensor.name: tensor for tensor in reader.tensors}
  cfg = gguf_config(reader, path, dtype)
  tensors.pop(ROPE_FREQS, None)  # read by gguf_config
  permute = get_family(cfg.family).gguf_interleaved_rope

  def read(name, row):
    values = dequantize(tensors[name], path)
    if permute and row.rope_heads is not None:
      values = unpermute_rope(values.T, getattr(cfg, f"n_{row.rope_heads}")).T
    return values

  params = layout.fill_params(cfg, "gguf", list(tensors), read, lambda name: path)
  return cfg, params, gguf_tokenizer(reader, path)


def open_gguf(path: str | pathlib.Path) -> gguf.GGUFReader:
  """Opens a GGUF file, turning every parse failure into a ModelFileError naming the file."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise ModelFileError(f"{path}: no such file")
  size = path.stat().st_size
  with open(path, "rb") as f:
    magic = f.read(4)
  if magic != b"GGUF":
    raise ModelFileError(f"{path}: not a GGUF file (bad magic {magic!r}, expected b'GGUF')")
  try:
    return gguf.GGUFReader(path)
  except (ValueError, IndexError, KeyError, OverflowError, UnicodeDecodeError) as e:
    raise ModelFileError(f"{path}: truncated or corrupt GGUF file ({size} bytes): {e}") from e


def gguf_config(reader: gguf.GGUFReader, path: pathlib.Path, dtype: str) -> ModelConfig:
  """ModelConfig from the `<architecture>.*` metadata and the family's own fields; tied
  embeddings when there is no output.weight."""
  architecture = _field(reader, "general.architecture", path)
  rope_freqs = next((t for t in reader.tensors if t.name == ROPE_FREQS), None)
  try:
    family = family_of_gguf(architecture)
  except ValueError as e:
    raise ModelFileError(f"{path}: {e}") from e
  get = lambda key, default=_REQUIRED: _field(reader, f"{architecture}.{key}", path, default)
  n_heads = int(get("attention.head_count"))
  d_model = int(get("embedding_length"))
  head_dim = int(get("attention.key_length", d_model // n_heads))
  rope_dim = int(get("rope.dimension_count", head_dim))
  value_dim = int(get("attention.value_length", head_dim))
  if not rope_dim == value_dim == head_dim:
    raise ModelFileError(f"{path}: head_dim {head_dim}, value_length {value_dim} and RoPE "
                         f"dimension {rope_dim} differ; only full-width RoPE is supported")
  fields = dict(
      family=family.name,
      vocab_size=len(_field(reader, "tokenizer.ggml.tokens", path)),
      d_model=d_model,
      n_layers=int(get("block_count")),
      n_heads=n_heads,
      n_kv_heads=int(get("attention.head_count_kv", n_heads)),
      head_dim=head_dim,
      d_ff=int(get("feed_forward_length")),
      rope_theta=_float32_value(get("rope.freq_base", 10000.0)),
      rope_scaling=_gguf_rope_scaling(get, rope_freqs, path),
      norm_eps=_float32_value(get("attention.layer_norm_rms_epsilon")),
      max_positions=int(get("context_length")),
      tie_embeddings="output.weight" not in {t.name for t in reader.tensors},
  )
  try:
    return ModelConfig(**{**fields, **family.gguf_fields(get)}, dtype=dtype)
  except ValueError as e:
    raise ModelFileError(f"{path}: inconsistent hyper-parameters: {e}") from e


def _gguf_rope_scaling(get, rope_freqs: gguf.ReaderTensor | None,
                       path: pathlib.Path) -> RopeScaling | None:
  """RoPE scaling from `rope.scaling.*` metadata ("none" or "linear"), or from the
  per-frequency divisors of a `rope_freqs.weight` tensor."""
  kind = get("rope.scaling.type", "none")
  if rope_freqs is not None:
    if kind != "none":
      raise ModelFileError(f"{path}: both {ROPE_FREQS!r} and RoPE scaling {kind!r}")
    return RopeScaling("factors", factors=tuple(dequantize(rope_freqs, path).tolist()))
  if kind == "none":
    return None
  if kind != "linear":
    raise ModelFileError(f"{path}: RoPE scaling {kind!r} is not supported in GGUF files "
                         "(supported: none, linear)")
  return RopeScaling("linear", factor=_float32_value(get("rope.scaling.factor")))


def gguf_tokenizer(reader: gguf.GGUFReader, path: pathlib.Path) -> Tokenizer:
  """The tokenizer described by the `tokenizer.*` metadata: byte-level BPE ("gpt2") or
  SentencePiece-style BPE ("llama")."""
  model = _field(reader, "tokenizer.ggml.model", path)
  if model not in ("gpt2", "llama"):
    raise ModelFileError(f"{path}: tokenizer model {model!r} is not supported (supported: "
                         "'gpt2' byte-level BPE, 'llama' SentencePiece BPE)")
  tokens = _field(reader, "tokenizer.ggml.tokens", path)
  options = dict(
      token_types=_field(reader, "tokenizer.ggml.token_type", path, None),
      bos_id=_field(reader, "tokenizer.ggml.bos_token_id", path, None),
      eos_id=_field(reader, "tokenizer.ggml.eos_token_id", path, None),
      # llama.cpp adds BOS to a SentencePiece vocabulary that does not say otherwise.
      add_bos=bool(_field(reader, "tokenizer.ggml.add_bos_token", path, model == "llama")),
      add_eos=bool(_field(reader, "tokenizer.ggml.add_eos_token", path, False)),
      chat_template=_field(reader, "tokenizer.chat_template", path, None),
  )
  try:
    if model == "llama":
      return Tokenizer.from_sentencepiece_bpe(
          tokens, unk_id=_field(reader, "tokenizer.ggml.unknown_token_id", path, None),
          **options)
    merges = _field(reader, "tokenizer.ggml.merges", path, [])  # GGUFWriter drops empty arrays
    return Tokenizer.from_byte_level_bpe(
        tokens, merges, pre_tokenizer=_field(reader, "tokenizer.ggml.pre", path, None),
        **options)
  except ValueError as e:
    raise ModelFileError(f"{path}: bad tokenizer metadata: {e}") from e


def dequantize(tensor: gguf.ReaderTensor, path: pathlib.Path) -> np.ndarray:
  """float32 values of a GGUF tensor, in numpy order (GGUF lists dims fastest-first)."""
  if tensor.tensor_type not in SUPPORTED_TYPES:
    supported = ", ".join(sorted(t.name for t in SUPPORTED_TYPES))
    raise ModelFileError(f"{path}: tensor {tensor.name!r} has type {tensor.tensor_type.name}, "
                         f"which is not supported (supported: {supported})")
  values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
  return values.reshape(tuple(reversed(tensor.shape.tolist())))


def unpermute_rope(w_DxHD: np.ndarray, n_heads: int) -> np.ndarray:
  """Undoes llama.cpp's q/k permutation on an `x @ w` matrix [D, H*Dh].

  llama.cpp stores each head's output features interleaved as pairs (x0, x_half, x1, ...) for its
  adjacent-pair RoPE; Hugging Face's rotate_half RoPE wants the two halves contiguous. Within each
  head, column (i, half) of the input becomes column (half, i) of the output.
  """
  D, width = w_DxHD.shape
  w_DxHxIx2 = w_DxHD.reshape(D, n_heads, width // n_heads // 2, 2)
  return w_DxHxIx2.swapaxes(2, 3).reshape(D, width)


def _field(reader: gguf.GGUFReader, key: str, path: pathlib.Path, default=_REQUIRED):
  """Python value of a metadata key; `default` if absent, ModelFileError if required."""
  field = reader.get_field(key)
  if field is None:
    if default is _REQUIRED:
      raise ModelFileError(f"{path}: missing metadata key {key!r}")
    return default
  return field.contents()


def _float32_value(value: float) -> float:
  """The shortest decimal that a float32 metadata value stands for (9.99999975e-06 -> 1e-05)."""
  return float(str(np.float32(value)))

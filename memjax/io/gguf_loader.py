"""Load a Llama-architecture GGUF file (llama.cpp's format) into memjax's parameter pytree.

Weights are dequantised to float32 with the `gguf` package, transposed to the `x @ w` layout and,
for q/k, re-ordered from llama.cpp's interleaved RoPE layout back to Hugging Face's "rotate_half"
layout. See `memjax.io.layout` for the resulting pytree.
"""

from __future__ import annotations

import pathlib

import gguf
import numpy as np

from memjax.io import layout
from memjax.io.errors import ModelFileError
from memjax.io.tokenizer import Tokenizer
from memjax.models.config import ModelConfig

Q = gguf.GGMLQuantizationType
# Types whose dequantisation we test (round trips through gguf.quants.quantize).
SUPPORTED_TYPES = frozenset({Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1})

# GGUF tensor name "blk.{i}.<suffix>.weight" -> memjax layer parameter.
LAYER_TENSORS = {
    "attn_norm": "attn_norm", "attn_q": "wq", "attn_k": "wk", "attn_v": "wv",
    "attn_output": "wo", "ffn_norm": "mlp_norm", "ffn_gate": "w_gate", "ffn_up": "w_up",
    "ffn_down": "w_down",
}

_REQUIRED = object()


def load_gguf(path: str | pathlib.Path,
              dtype: str = "float32") -> tuple[ModelConfig, dict, Tokenizer]:
  """Reads config, weights and tokenizer of a Llama GGUF file.

  Args:
    path: the .gguf file.
    dtype: "float32" or "bfloat16"; dtype of the returned host (numpy) arrays and of cfg.dtype.

  Returns:
    (cfg, params, tokenizer); params as described in `memjax.io.layout`.

  Raises:
    ModelFileError: missing, truncated or corrupt file, bad magic, a non-llama architecture,
      a missing/unexpected/mis-shaped tensor or an unsupported tensor type; the message names the
      file (and the tensor or metadata key involved).
  """
  path = pathlib.Path(path)
  reader = open_gguf(path)
  architecture = _field(reader, "general.architecture", path)
  if architecture != "llama":
    raise ModelFileError(
        f"{path}: architecture {architecture!r} is not supported (only 'llama')")
  tensors = {tensor.name: tensor for tensor in reader.tensors}
  cfg = gguf_config(reader, path, dtype)
  _check_tensor_names(tensors, cfg, path)
  params = layout.allocate_params(cfg)
  for name, tensor in tensors.items():
    _store_tensor(params, name, dequantize(tensor, path), cfg, path)
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
  """ModelConfig from the `llama.*` metadata; tied embeddings when there is no output.weight."""
  scaling = _field(reader, "llama.rope.scaling.type", path, "none")
  if scaling != "none":
    raise ModelFileError(f"{path}: RoPE scaling {scaling!r} is not supported")
  n_heads = int(_field(reader, "llama.attention.head_count", path))
  d_model = int(_field(reader, "llama.embedding_length", path))
  head_dim = int(_field(reader, "llama.attention.key_length", path, d_model // n_heads))
  rope_dim = int(_field(reader, "llama.rope.dimension_count", path, head_dim))
  value_dim = int(_field(reader, "llama.attention.value_length", path, head_dim))
  if not rope_dim == value_dim == head_dim:
    raise ModelFileError(f"{path}: head_dim {head_dim}, value_length {value_dim} and RoPE "
                         f"dimension {rope_dim} differ; only full-width RoPE is supported")
  fields = dict(
      vocab_size=len(_field(reader, "tokenizer.ggml.tokens", path)),
      d_model=d_model,
      n_layers=int(_field(reader, "llama.block_count", path)),
      n_heads=n_heads,
      n_kv_heads=int(_field(reader, "llama.attention.head_count_kv", path, n_heads)),
      head_dim=head_dim,
      d_ff=int(_field(reader, "llama.feed_forward_length", path)),
      rope_theta=_float32_value(_field(reader, "llama.rope.freq_base", path, 10000.0)),
      norm_eps=_float32_value(_field(reader, "llama.attention.layer_norm_rms_epsilon", path)),
      max_positions=int(_field(reader, "llama.context_length", path)),
      tie_embeddings="output.weight" not in {t.name for t in reader.tensors},
  )
  try:
    return ModelConfig(**fields, dtype=dtype)
  except ValueError as e:
    raise ModelFileError(f"{path}: inconsistent hyper-parameters: {e}") from e


def gguf_tokenizer(reader: gguf.GGUFReader, path: pathlib.Path) -> Tokenizer:
  """The byte-level BPE tokenizer described by the `tokenizer.*` metadata."""
  model = _field(reader, "tokenizer.ggml.model", path)
  if model != "gpt2":
    raise ModelFileError(
        f"{path}: tokenizer model {model!r} is not supported (only byte-level BPE 'gpt2')")
  tokens = _field(reader, "tokenizer.ggml.tokens", path)
  merges = _field(reader, "tokenizer.ggml.merges", path, [])  # GGUFWriter drops empty arrays
  options = dict(
      token_types=_field(reader, "tokenizer.ggml.token_type", path, None),
      pre_tokenizer=_field(reader, "tokenizer.ggml.pre", path, None),
      bos_id=_field(reader, "tokenizer.ggml.bos_token_id", path, None),
      eos_id=_field(reader, "tokenizer.ggml.eos_token_id", path, None),
      add_bos=bool(_field(reader, "tokenizer.ggml.add_bos_token", path, False)),
      add_eos=bool(_field(reader, "tokenizer.ggml.add_eos_token", path, False)),
      chat_template=_field(reader, "tokenizer.chat_template", path, None),
  )
  try:
    return Tokenizer.from_byte_level_bpe(tokens, merges, **options)
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


def _store_tensor(params: dict, name: str, values: np.ndarray, cfg: ModelConfig,
                  path: pathlib.Path) -> None:
  """Puts one dequantised GGUF tensor (numpy order [out, in]) into `params` as `x @ w`."""
  if name == "token_embd.weight":
    layout.store(params, "embed", values, layer=None, source=name, file=path)
  elif name == "output_norm.weight":
    layout.store(params, "final_norm", values, layer=None, source=name, file=path)
  elif name == "output.weight":
    layout.store(params, "lm_head", values.T, layer=None, source=name, file=path)
  else:
    _, index, suffix, _ = name.split(".")
    key = LAYER_TENSORS[suffix]
    w = values.T
    if key in ("wq", "wk"):
      w = unpermute_rope(w, cfg.n_heads if key == "wq" else cfg.n_kv_heads)
    layout.store(params, key, w, layer=int(index), source=name, file=path)


def _check_tensor_names(tensors: dict, cfg: ModelConfig, path: pathlib.Path) -> None:
  """Raises ModelFileError unless the file holds exactly the tensors of a Llama model."""
  expected = {"token_embd.weight", "output_norm.weight"}
  if not cfg.tie_embeddings:
    expected.add("output.weight")
  expected |= {f"blk.{i}.{suffix}.weight" for i in range(cfg.n_layers) for suffix in LAYER_TENSORS}
  missing, unexpected = sorted(expected - tensors.keys()), sorted(tensors.keys() - expected)
  if missing:
    raise ModelFileError(f"{path}: missing tensor(s) {', '.join(missing[:5])}"
                         + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
  if unexpected:
    raise ModelFileError(f"{path}: unexpected tensor(s) {', '.join(unexpected[:5])}; "
                         "only plain Llama weights are supported")


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

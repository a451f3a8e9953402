"""Load a Hugging Face Llama directory (config.json + *.safetensors + tokenizer.json).

The safetensors format is parsed here with numpy (no dependency): an 8-byte little-endian header
length N, N bytes of JSON mapping tensor names to {dtype, shape, data_offsets}, then raw
little-endian data. Tensors are memory-mapped and only copied into the parameter pytree.
"""

from __future__ import annotations

import json
import pathlib

import ml_dtypes
import numpy as np

from memjax.io import layout
from memjax.io.errors import ModelFileError
from memjax.io.tokenizer import Tokenizer
from memjax.models.config import ModelConfig

# safetensors dtype name -> numpy dtype of its little-endian bytes.
_DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype(ml_dtypes.bfloat16)}

# Hugging Face per-layer weight name (after "model.layers.{i}.") -> memjax layer parameter.
LAYER_TENSORS = {
    "input_layernorm.weight": "attn_norm", "self_attn.q_proj.weight": "wq",
    "self_attn.k_proj.weight": "wk", "self_attn.v_proj.weight": "wv",
    "self_attn.o_proj.weight": "wo", "post_attention_layernorm.weight": "mlp_norm",
    "mlp.gate_proj.weight": "w_gate", "mlp.up_proj.weight": "w_up",
    "mlp.down_proj.weight": "w_down",
}


def load_hf_dir(directory: str | pathlib.Path,
                dtype: str = "float32") -> tuple[ModelConfig, dict, Tokenizer | None]:
  """Reads a Hugging Face Llama checkpoint directory.

  Args:
    directory: holds config.json, one or several *.safetensors and, optionally, tokenizer.json.
    dtype: "float32" or "bfloat16"; dtype of the returned host (numpy) arrays and of cfg.dtype.

  Returns:
    (cfg, params, tokenizer); params as in `memjax.io.layout` (torch Linear weights transposed to
    `x @ w`); tokenizer is None when the directory has no tokenizer.json.

  Raises:
    ModelFileError: missing/invalid config.json, a non-Llama model, unsupported options, no
      weights, a missing or mis-shaped tensor, or a truncated/corrupt safetensors file.
  """
  directory = pathlib.Path(directory)
  hf_config = _read_json(directory / "config.json")
  cfg = hf_llama_config(hf_config, directory, dtype)
  files = sorted(directory.glob("*.safetensors"))
  if not files:
    raise ModelFileError(f"{directory}: no *.safetensors weight files")
  tensors = {}
  for file in files:
    for name, array in read_safetensors(file).items():
      if name in tensors:
        raise ModelFileError(f"{file}: tensor {name!r} is also in another *.safetensors file")
      tensors[name] = (array, file)
  params = layout.allocate_params(cfg)
  for name, key, layer, transpose in _hf_tensor_names(cfg):
    if name not in tensors:
      raise ModelFileError(f"{directory}: missing tensor {name!r}")
    array, file = tensors[name]
    layout.store(params, key, array.T if transpose else array, layer=layer, source=name,
                 file=file)
  tokenizer_json = directory / "tokenizer.json"
  tokenizer = None
  if tokenizer_json.exists():
    tokenizer = Tokenizer.from_files(tokenizer_json, bos_id=_first(hf_config.get("bos_token_id")),
                                     eos_id=_first(hf_config.get("eos_token_id")))
  return cfg, params, tokenizer


def hf_llama_config(hf_config: dict, directory: pathlib.Path, dtype: str) -> ModelConfig:
  """ModelConfig from a Hugging Face LlamaConfig dict (transformers 4.x or 5.x spelling)."""
  architectures = hf_config.get("architectures") or []
  if hf_config.get("model_type") != "llama" and "LlamaForCausalLM" not in architectures:
    raise ModelFileError(f"{directory}: model_type {hf_config.get('model_type')!r} / "
                         f"architectures {architectures} is not a Llama model")
  rope = hf_config.get("rope_parameters") or hf_config.get("rope_scaling") or {}
  rope_type = rope.get("rope_type", rope.get("type", "default"))
  unsupported = {"RoPE scaling": rope_type != "default",
                 "attention_bias": hf_config.get("attention_bias", False),
                 "mlp_bias": hf_config.get("mlp_bias", False),
                 f"hidden_act {hf_config.get('hidden_act')!r}":
                     hf_config.get("hidden_act", "silu") != "silu"}
  for option, present in unsupported.items():
    if present:
      raise ModelFileError(f"{directory}: {option} is not supported")
  n_heads = hf_config["num_attention_heads"]
  try:
    return ModelConfig(
        vocab_size=hf_config["vocab_size"],
        d_model=hf_config["hidden_size"],
        n_layers=hf_config["num_hidden_layers"],
        n_heads=n_heads,
        n_kv_heads=hf_config.get("num_key_value_heads") or n_heads,
        head_dim=hf_config.get("head_dim") or hf_config["hidden_size"] // n_heads,
        d_ff=hf_config["intermediate_size"],
        rope_theta=float(rope.get("rope_theta", hf_config.get("rope_theta", 10000.0))),
        norm_eps=float(hf_config.get("rms_norm_eps", 1e-6)),
        max_positions=hf_config.get("max_position_embeddings", 2048),
        tie_embeddings=hf_config.get("tie_word_embeddings", False),
        dtype=dtype,
    )
  except KeyError as e:
    raise ModelFileError(f"{directory}/config.json: missing key {e}") from e
  except ValueError as e:
    raise ModelFileError(f"{directory}/config.json: {e}") from e


def read_safetensors(path: str | pathlib.Path) -> dict[str, np.ndarray]:
  """Memory-maps every tensor of a .safetensors file (F32, F16, BF16).

  Returns:
    name -> read-only array in numpy order, in its stored dtype (BF16 as ml_dtypes.bfloat16).

  Raises:
    ModelFileError: truncated file, bad header, overlapping/out-of-range data or an unsupported
      dtype; the message names the file (and tensor).
  """
  path = pathlib.Path(path)
  size = path.stat().st_size
  if size < 8:
    raise ModelFileError(f"{path}: truncated safetensors file ({size} bytes, no header)")
  with open(path, "rb") as f:
    header_len = int(np.frombuffer(f.read(8), "<u8")[0])
    if 8 + header_len > size:
      raise ModelFileError(f"{path}: truncated or corrupt safetensors file: header of "
                           f"{header_len} bytes does not fit in {size} bytes")
    try:
      header = json.loads(f.read(header_len))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
      raise ModelFileError(f"{path}: corrupt safetensors header: {e}") from e
  header.pop("__metadata__", None)
  data_len = size - 8 - header_len
  data = (np.memmap(path, np.uint8, "r", offset=8 + header_len) if data_len
          else np.empty(0, np.uint8))  # numpy cannot map zero bytes
  return {name: _tensor_view(data, name, info, path) for name, info in header.items()}


def _tensor_view(data: np.ndarray, name: str, info: dict, path: pathlib.Path) -> np.ndarray:
  """The array one header entry {dtype, shape, data_offsets} describes, viewed from `data`."""
  try:
    dtype_name, shape, (begin, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
  except (KeyError, TypeError, ValueError) as e:
    raise ModelFileError(f"{path}: corrupt header entry for tensor {name!r}: {info!r}") from e
  dtype = _DTYPES.get(dtype_name)
  if dtype is None:
    raise ModelFileError(f"{path}: tensor {name!r} has dtype {dtype_name!r}, which is not "
                         f"supported (supported: {', '.join(_DTYPES)})")
  if end > len(data):
    raise ModelFileError(f"{path}: truncated file: tensor {name!r} needs data bytes up to {end} "
                         f"but only {len(data)} are present")
  if not 0 <= begin <= end or end - begin != int(np.prod(shape)) * dtype.itemsize:
    raise ModelFileError(
        f"{path}: tensor {name!r} has data_offsets {[begin, end]}, inconsistent with "
        f"{dtype_name} shape {shape}")
  return data[begin:end].view(dtype).reshape(shape)


def _hf_tensor_names(cfg: ModelConfig):
  """Yields (HF name, memjax key, layer or None, transpose?) for every parameter."""
  yield "model.embed_tokens.weight", "embed", None, False
  yield "model.norm.weight", "final_norm", None, False
  if not cfg.tie_embeddings:
    yield "lm_head.weight", "lm_head", None, True
  for i in range(cfg.n_layers):
    for suffix, key in LAYER_TENSORS.items():
      yield f"model.layers.{i}.{suffix}", key, i, not key.endswith("norm")


def _read_json(path: pathlib.Path) -> dict:
  """Parsed JSON file; ModelFileError if it is missing or invalid."""
  if not path.is_file():
    raise ModelFileError(f"{path}: no such file")
  try:
    return json.loads(path.read_text())
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ModelFileError(f"{path}: invalid JSON: {e}") from e


def _first(value):
  """The first element of a list (HF allows several eos ids), or the value itself."""
  return value[0] if isinstance(value, list) else value

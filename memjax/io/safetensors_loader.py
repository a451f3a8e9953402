"""Load a Hugging Face checkpoint directory (config.json + *.safetensors + tokenizer.json).

The family comes from config.json's `model_type` (memjax.models.families); tensor names and
shapes from its parameter table. Both spellings of RoPE settings are read: transformers 5's
`rope_parameters` (one dict, or one per layer kind as Gemma 3 has) and the older
`rope_theta` / `rope_scaling`.

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
from memjax.models.config import ModelConfig, RopeScaling
from memjax.models.families import family_of_hf

# safetensors dtype name -> numpy dtype of its little-endian bytes.
_DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype(ml_dtypes.bfloat16)}

# config.json `layer_types` entry -> ModelConfig layer kind.
_LAYER_KINDS = {"full_attention": "global", "sliding_attention": "sliding"}


def load_hf_dir(directory: str | pathlib.Path,
                dtype: str = "float32") -> tuple[ModelConfig, dict, Tokenizer | None]:
  """Reads a Hugging Face checkpoint directory of a supported family.

  Args:
    directory: holds config.json, one or several *.safetensors and, optionally, tokenizer.json.
    dtype: "float32" or "bfloat16"; dtype of the returned host (numpy) arrays and of cfg.dtype.

  Returns:
    (cfg, params, tokenizer); params as in `memjax.io.layout` (torch Linear weights transposed to
    `x @ w`); tokenizer is None when the directory has no tokenizer.json.

  Raises:
    ModelFileError: missing/invalid config.json, an unsupported model type or option, no
      weights, a missing, unknown or mis-shaped tensor, or a truncated/corrupt safetensors file.
  """
  directory = pathlib.Path(directory)
  hf_config = _read_json(directory / "config.json")
  cfg = hf_model_config(hf_config, directory, dtype)
  files = sorted(directory.glob("*.safetensors"))
  if not files:
    raise ModelFileError(f"{directory}: no *.safetensors weight files")
  tensors = {}
  for file in files:
    for name, array in read_safetensors(file).items():
      if name in tensors:
        raise ModelFileError(f"{file}: tensor {name!r} is also in another *.safetensors file")
      tensors[name] = (array, file)

  def read(name, row):
    array = tensors[name][0]
    return array.astype(np.float32) + row.hf_offset if row.hf_offset else array

  params = layout.fill_params(cfg, "hf", list(tensors), read,
                              lambda name: tensors[name][1] if name else directory)
  tokenizer_json = directory / "tokenizer.json"
  tokenizer = None
  if tokenizer_json.exists():
    tokenizer = Tokenizer.from_files(tokenizer_json, bos_id=_first(hf_config.get("bos_token_id")),
                                     eos_id=_first(hf_config.get("eos_token_id")))
  return cfg, params, tokenizer


def hf_model_config(hf_config: dict, directory: pathlib.Path, dtype: str) -> ModelConfig:
  """ModelConfig from a Hugging Face config.json dict (transformers 4.x or 5.x spelling):
  the common fields here, the family's own from its `hf_fields`."""
  try:
    family = family_of_hf(hf_config.get("model_type"), hf_config.get("architectures") or [])
    theta, scaling = hf_rope(hf_config)
    kinds = hf_config.get("layer_types")
    if kinds is not None:
      unknown = sorted(set(kinds) - _LAYER_KINDS.keys())
      if unknown:
        raise ValueError(f"layer_types {unknown} are not supported (supported: "
                         f"{', '.join(_LAYER_KINDS)})")
      kinds = tuple(_LAYER_KINDS[k] for k in kinds)
    sliding = kinds is None or "sliding" in kinds
    n_heads = hf_config["num_attention_heads"]
    fields = dict(
        family=family.name,
        vocab_size=hf_config["vocab_size"],
        d_model=hf_config["hidden_size"],
        n_layers=hf_config["num_hidden_layers"],
        n_heads=n_heads,
        n_kv_heads=hf_config.get("num_key_value_heads") or n_heads,
        head_dim=hf_config.get("head_dim") or hf_config["hidden_size"] // n_heads,
        d_ff=hf_config["intermediate_size"],
        rope_theta=theta,
        rope_scaling=scaling,
        sliding_window=hf_config.get("sliding_window") if sliding else None,
        layer_kinds=kinds if kinds is not None and "sliding" in kinds else None,
        norm_eps=float(hf_config.get("rms_norm_eps", 1e-6)),
        max_positions=hf_config.get("max_position_embeddings", 2048),
        tie_embeddings=hf_config.get("tie_word_embeddings", False),
        dtype=dtype,
    )
    return ModelConfig(**{**fields, **family.hf_fields(hf_config)})
  except KeyError as e:
    raise ModelFileError(f"{directory}/config.json: missing key {e}") from e
  except ValueError as e:
    raise ModelFileError(f"{directory}/config.json: {e}") from e


def hf_rope(hf_config: dict, layer_kind: str = "full_attention") -> tuple[float,
                                                                          RopeScaling | None]:
  """(theta, scaling) of the RoPE of `layer_kind` layers from `rope_parameters` (flat, or
  one dict per layer kind) or, in older configs, `rope_theta` and `rope_scaling`.

  Raises:
    ValueError: a RoPE type other than default, linear and llama3.
  """
  rope = hf_config.get("rope_parameters")
  if isinstance(rope, dict) and isinstance(rope.get(layer_kind), dict):
    rope = rope[layer_kind]
  if rope is None:
    rope = {**(hf_config.get("rope_scaling") or {}),
            "rope_theta": hf_config.get("rope_theta", 10000.0)}
  theta = float(rope.get("rope_theta", hf_config.get("rope_theta", 10000.0)))
  kind = rope.get("rope_type", rope.get("type", "default"))
  if kind == "default":
    return theta, None
  if kind == "linear":
    return theta, RopeScaling("linear", factor=float(rope["factor"]))
  if kind == "llama3":
    return theta, RopeScaling(
        "llama3", factor=float(rope["factor"]), low_freq_factor=float(rope["low_freq_factor"]),
        high_freq_factor=float(rope["high_freq_factor"]),
        original_max_positions=int(rope["original_max_position_embeddings"]))
  raise ValueError(f"RoPE scaling {kind!r} is not supported (supported: default, linear, "
                   "llama3)")


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

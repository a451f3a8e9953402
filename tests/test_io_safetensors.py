"""Hugging Face Llama directories: our safetensors parser, config mapping and tokenizer.json."""

import json

import ml_dtypes
import numpy as np
import pytest
from tokenizers import Tokenizer as BackendTokenizer
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from memjax.io import ModelFileError, Tokenizer, load_checkpoint, param_shapes, read_safetensors
from memjax.models.config import tiny_config

HF_LAYER_NAMES = {
    "attn_norm": "input_layernorm", "wq": "self_attn.q_proj", "wk": "self_attn.k_proj",
    "wv": "self_attn.v_proj", "wo": "self_attn.o_proj", "mlp_norm": "post_attention_layernorm",
    "w_gate": "mlp.gate_proj", "w_up": "mlp.up_proj", "w_down": "mlp.down_proj",
}
CORPUS = ["The quick brown fox jumps over the lazy dog.", "def f(x):\n    return x * 2\n",
          "Memory-bounded attention keeps a budget of keys and values.", "Café 日本 🤗 123"]
TEXTS = ["Hello fox", "  def   g(y):\n\treturn y", "日本🤗 42", "<s>inline</s> specials"]
_SAFETENSORS_DTYPES = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16",
                       np.dtype(ml_dtypes.bfloat16): "BF16", np.dtype(np.int64): "I64"}


def safetensors_bytes(tensors: dict) -> bytes:
  """A .safetensors file written by hand from the format description (independent of our parser)."""
  header, chunks, offset = {"__metadata__": {"format": "np"}}, [], 0
  for name, array in tensors.items():
    raw = np.ascontiguousarray(array).tobytes()
    header[name] = {"dtype": _SAFETENSORS_DTYPES[array.dtype], "shape": list(array.shape),
                    "data_offsets": [offset, offset + len(raw)]}
    chunks.append(raw)
    offset += len(raw)
  header_bytes = json.dumps(header).encode()
  header_bytes += b" " * (-len(header_bytes) % 8)
  return np.uint64(len(header_bytes)).tobytes() + header_bytes + b"".join(chunks)


def tiny_tokenizer() -> BackendTokenizer:
  """A byte-level BPE trained on a few lines, adding <s> in front of every text like Llama."""
  tokenizer = BackendTokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<unk>", "<s>", "</s>"],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tokenizer.train_from_iterator(CORPUS, trainer)
  tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[
      ("<s>", 1)])
  return tokenizer


def _hf_config(cfg):
  return {
      "architectures": ["LlamaForCausalLM"], "model_type": "llama",
      "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model,
      "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
      "num_key_value_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim,
      "intermediate_size": cfg.d_ff, "rope_theta": cfg.rope_theta, "rms_norm_eps": cfg.norm_eps,
      "max_position_embeddings": cfg.max_positions, "tie_word_embeddings": cfg.tie_embeddings,
      "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": [2], "rope_scaling": None,
  }


def _hf_state(cfg, seed=0):
  """Random HF-named float32 weights in torch layout ([out, in])."""
  rng = np.random.default_rng(seed)
  shapes = param_shapes(cfg)
  state = {"model.embed_tokens.weight": shapes["embed"], "model.norm.weight": shapes["final_norm"]}
  if not cfg.tie_embeddings:
    state["lm_head.weight"] = shapes["lm_head"][::-1]
  for key, hf_name in HF_LAYER_NAMES.items():
    for i in range(cfg.n_layers):
      state[f"model.layers.{i}.{hf_name}.weight"] = shapes["layers"][key][1:][::-1]
  return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in state.items()}


def write_hf_dir(directory, cfg, state, *, config_overrides=None, n_files=2):
  """config.json + the state split over `n_files` safetensors + tokenizer.json."""
  directory.mkdir(exist_ok=True)
  config = _hf_config(cfg) | (config_overrides or {})
  (directory / "config.json").write_text(json.dumps(config))
  names = list(state)
  for part in range(n_files):
    chunk = {name: state[name] for name in names[part::n_files]}
    (directory / f"model-{part}.safetensors").write_bytes(safetensors_bytes(chunk))
  tiny_tokenizer().save(str(directory / "tokenizer.json"))
  return directory


def _check_params(params, state, cfg):
  """Every memjax param equals the HF weight (transposed for matrices)."""
  np.testing.assert_array_equal(params["embed"], state["model.embed_tokens.weight"])
  np.testing.assert_array_equal(params["final_norm"], state["model.norm.weight"])
  if not cfg.tie_embeddings:
    np.testing.assert_array_equal(params["lm_head"], state["lm_head.weight"].T)
  for key, hf_name in HF_LAYER_NAMES.items():
    for i in range(cfg.n_layers):
      reference = state[f"model.layers.{i}.{hf_name}.weight"]
      np.testing.assert_array_equal(params["layers"][key][i],
                                    reference if reference.ndim == 1 else reference.T,
                                    err_msg=f"{key}[{i}]")


@pytest.fixture
def tiny_cfg():
  return tiny_config(vocab_size=tiny_tokenizer().get_vocab_size(), tie_embeddings=False)


def test_tiny_dir_loads(tmp_path, tiny_cfg):
  state = _hf_state(tiny_cfg)
  directory = write_hf_dir(tmp_path / "tiny", tiny_cfg, state)
  cfg, params, tokenizer = load_checkpoint(directory)
  assert cfg == tiny_cfg
  assert set(params["layers"]) == set(param_shapes(cfg)["layers"])
  _check_params(params, state, cfg)
  assert (tokenizer.bos_id, tokenizer.eos_id) == (1, 2)
  assert tokenizer.vocab_size == cfg.vocab_size
  for text in TEXTS:
    ids = tokenizer.encode(text)
    assert ids[0] == tokenizer.bos_id  # this tokenizer.json's post-processor adds <s>
    assert tokenizer.decode(ids, skip_special_tokens=True) == text.replace("<s>", "").replace(
        "</s>", "")


def test_tied_embeddings_and_bfloat16(tmp_path):
  cfg = tiny_config(vocab_size=tiny_tokenizer().get_vocab_size(), tie_embeddings=True)
  state = _hf_state(cfg, seed=3)
  state = {name: w.astype(ml_dtypes.bfloat16) for name, w in state.items()}
  directory = write_hf_dir(tmp_path / "tied", cfg, state, n_files=1)
  loaded_cfg, params, _ = load_checkpoint(directory, dtype="bfloat16")
  assert loaded_cfg.tie_embeddings and "lm_head" not in params
  assert params["layers"]["wq"].dtype == np.dtype(ml_dtypes.bfloat16)
  _check_params(params, state, cfg)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16])
def test_read_safetensors_values(tmp_path, dtype):
  rng = np.random.default_rng(0)
  tensors = {"a": rng.standard_normal((3, 5)).astype(dtype), "b": np.arange(7, dtype=dtype),
             "scalar": np.array(2.5, dtype)}
  path = tmp_path / "t.safetensors"
  path.write_bytes(safetensors_bytes(tensors))
  loaded = read_safetensors(path)
  assert set(loaded) == set(tensors)
  for name, array in tensors.items():
    assert loaded[name].dtype == array.dtype and loaded[name].shape == array.shape
    np.testing.assert_array_equal(loaded[name], array)


def test_read_safetensors_agrees_with_the_safetensors_package(tmp_path):
  safetensors_numpy = pytest.importorskip("safetensors.numpy")
  tensors = {"x": np.random.default_rng(1).standard_normal((4, 6)).astype(np.float16),
             "y": np.ones((2,), np.float32)}
  path = tmp_path / "official.safetensors"
  safetensors_numpy.save_file(tensors, str(path))
  loaded = read_safetensors(path)
  for name, array in tensors.items():
    np.testing.assert_array_equal(loaded[name], array)


# ---------------------------------------------------------------- broken files and directories

@pytest.fixture
def valid_file(tmp_path):
  path = tmp_path / "w.safetensors"
  path.write_bytes(safetensors_bytes({"a": np.ones((4, 4), np.float32),
                                      "b": np.zeros((8,), np.float16)}))
  return path


@pytest.mark.parametrize("keep", [0, 5, 8, 20, -1])
def test_truncated_safetensors(valid_file, keep):
  data = valid_file.read_bytes()
  valid_file.write_bytes(data[:keep])
  with pytest.raises(ModelFileError, match=r"w\.safetensors: .*(truncated|corrupt)"):
    read_safetensors(valid_file)


def test_unsupported_dtype_names_tensor(tmp_path):
  path = tmp_path / "ints.safetensors"
  path.write_bytes(safetensors_bytes({"counts": np.arange(3, dtype=np.int64)}))
  with pytest.raises(ModelFileError, match="ints.safetensors: tensor 'counts' has dtype 'I64'"):
    read_safetensors(path)


def test_inconsistent_offsets(tmp_path):
  path = tmp_path / "bad.safetensors"
  header = json.dumps({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}).encode()
  path.write_bytes(np.uint64(len(header)).tobytes() + header + bytes(12))
  with pytest.raises(ModelFileError, match="bad.safetensors: tensor 'a' has data_offsets"):
    read_safetensors(path)


def test_missing_tensor(tmp_path, tiny_cfg):
  state = _hf_state(tiny_cfg)
  del state["model.layers.1.mlp.up_proj.weight"]
  directory = write_hf_dir(tmp_path / "holey", tiny_cfg, state)
  with pytest.raises(ModelFileError, match=r"missing tensor\(s\) model.layers.1.mlp.up_proj.weight"):
    load_checkpoint(directory)


def test_unknown_tensor_is_named(tmp_path, tiny_cfg):
  state = _hf_state(tiny_cfg)
  state["model.layers.0.self_attn.q_proj.bias"] = np.zeros((32,), np.float32)
  directory = write_hf_dir(tmp_path / "extra", tiny_cfg, state)
  with pytest.raises(ModelFileError, match=r"unknown tensor\(s\) model.layers.0.self_attn.q_proj"
                                           r".bias: the 'llama' parameter table"):
    load_checkpoint(directory)


def test_wrong_shape_names_tensor(tmp_path, tiny_cfg):
  state = _hf_state(tiny_cfg)
  state["model.layers.0.self_attn.k_proj.weight"] = np.zeros((3, 3), np.float32)
  directory = write_hf_dir(tmp_path / "shape", tiny_cfg, state)
  with pytest.raises(ModelFileError, match="tensor 'model.layers.0.self_attn.k_proj.weight' has "
                                           r"shape \(3, 3\)"):
    load_checkpoint(directory)


@pytest.mark.parametrize("overrides, message", [
    ({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]},
     "model_type 'gpt2' .* is not supported; supported model types: llama, qwen2"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 8.0}},
     "RoPE scaling 'yarn' is not supported \\(supported: default, linear, llama3\\)"),
    ({"attention_bias": True}, "attention_bias is not supported"),
    ({"hidden_act": "gelu"}, "hidden_act 'gelu' is not supported"),
])
def test_unsupported_configs(tmp_path, tiny_cfg, overrides, message):
  directory = write_hf_dir(tmp_path / "odd", tiny_cfg, _hf_state(tiny_cfg),
                           config_overrides=overrides)
  with pytest.raises(ModelFileError, match=message):
    load_checkpoint(directory)


def test_directory_without_weights(tmp_path, tiny_cfg):
  (tmp_path / "config.json").write_text(json.dumps(_hf_config(tiny_cfg)))
  with pytest.raises(ModelFileError, match=r"no \*\.safetensors weight files"):
    load_checkpoint(tmp_path)


# ---------------------------------------------------------------- transformers' own files

@pytest.mark.oracle
@pytest.mark.parametrize("tied", [False, True])
def test_transformers_save_pretrained(tmp_path, tied):
  pytest.importorskip("torch", reason="the transformers reference needs torch")
  transformers = pytest.importorskip("transformers")
  backend = tiny_tokenizer()
  hf_config = transformers.LlamaConfig(
      vocab_size=backend.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, intermediate_size=64, rope_theta=5000.0,
      max_position_embeddings=128, tie_word_embeddings=tied, bos_token_id=1, eos_token_id=2)
  model = transformers.LlamaForCausalLM(hf_config)
  model.save_pretrained(tmp_path, max_shard_size="20KB")  # several shards
  hf_tokenizer = transformers.PreTrainedTokenizerFast(
      tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
  hf_tokenizer.save_pretrained(tmp_path)
  assert len(list(tmp_path.glob("*.safetensors"))) > 1

  cfg, params, tokenizer = load_checkpoint(tmp_path)
  assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_ff) == (
      2, 32, 4, 2, 8, 64)
  assert (cfg.rope_theta, cfg.norm_eps, cfg.tie_embeddings) == (5000.0, 1e-6, tied)
  state = {name: t.detach().numpy() for name, t in model.state_dict().items()}
  _check_params(params, state, cfg)

  reference = transformers.AutoTokenizer.from_pretrained(tmp_path)
  for text in TEXTS:
    assert tokenizer.encode(text) == reference.encode(text), text
  assert (tokenizer.bos_id, tokenizer.eos_id) == (reference.bos_token_id, reference.eos_token_id)


@pytest.mark.oracle
@pytest.mark.parametrize("add_bos, add_eos", [(False, True), (True, True), (False, False)])
def test_tokenizer_json_post_processor_decides_bos_like_transformers(tmp_path, add_bos, add_eos):
  # transformers 5 keeps tokenizer.json's post-processor (here: "<s> $A") whatever the flags say.
  transformers = pytest.importorskip("transformers")
  tiny_tokenizer().save(str(tmp_path / "tokenizer.json"))
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({
      "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
      "add_bos_token": add_bos, "add_eos_token": add_eos}))
  tokenizer = Tokenizer.from_files(tmp_path / "tokenizer.json")
  reference = transformers.AutoTokenizer.from_pretrained(tmp_path)
  for text in TEXTS:
    assert tokenizer.encode(text) == reference.encode(text), text
  ids = tokenizer.encode("fox")
  assert (tokenizer.bos_id, tokenizer.eos_id) == (1, 2)
  assert ids[0] == tokenizer.bos_id and ids[-1] != tokenizer.eos_id

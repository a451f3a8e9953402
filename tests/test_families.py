"""Every model family against transformers on tiny random checkpoints that transformers
itself writes (save_pretrained), in both config.json forms; loading by repo id from a
hub cache."""

import json
import shutil

import jax
import numpy as np
import pytest

import memjax
from memjax.io import ModelFileError, load_checkpoint
from memjax.io.registry import find_hub_snapshot
from memjax.models import llama

torch = pytest.importorskip("torch", reason="the transformers reference needs torch")
transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.oracle

SEQ = 24
COMMON = dict(vocab_size=101, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, intermediate_size=48, max_position_embeddings=256,
              rms_norm_eps=1e-6)

# family -> (transformers config class, its fields); windows are shorter than SEQ.
FAMILIES = {
    "llama3": ("LlamaConfig", dict(
        tie_word_embeddings=False,
        rope_parameters=dict(rope_type="llama3", rope_theta=10000.0, factor=8.0,
                             low_freq_factor=1.0, high_freq_factor=4.0,
                             original_max_position_embeddings=64))),
    "llama_linear": ("LlamaConfig", dict(
        tie_word_embeddings=True,
        rope_parameters=dict(rope_type="linear", rope_theta=5000.0, factor=4.0))),
    "qwen2": ("Qwen2Config", dict(tie_word_embeddings=False)),
    "qwen3": ("Qwen3Config", dict(head_dim=16, tie_word_embeddings=True)),
    "mistral": ("MistralConfig", dict(sliding_window=5, tie_word_embeddings=False)),
    "gemma2": ("Gemma2Config", dict(
        num_hidden_layers=4, head_dim=16, sliding_window=6, query_pre_attn_scalar=20,
        final_logit_softcapping=30.0, attn_logit_softcapping=5.0,
        rope_parameters=dict(rope_type="default", rope_theta=10000.0))),
    "gemma3": ("Gemma3TextConfig", dict(
        num_hidden_layers=7, head_dim=16, sliding_window=4, query_pre_attn_scalar=24,
        final_logit_softcapping=30.0,
        rope_parameters={"full_attention": dict(rope_type="linear", rope_theta=100000.0,
                                                factor=2.0),
                         "sliding_attention": dict(rope_type="default", rope_theta=10000.0)})),
}


def randomize(model, seed):
  """Weights of every kind, biases and norms included, drawn at random (seeded)."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      p.copy_(1.0 + 0.1 * noise if "norm" in name and "gemma" not in type(model).__name__.lower()
              else 0.2 * noise)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
  """family -> (directory, transformers model) of a tiny random checkpoint."""
  out = {}
  for seed, (family, (config_class, fields)) in enumerate(FAMILIES.items()):
    config = getattr(transformers, config_class)(**{**COMMON, **fields})
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    model = model.eval()
    randomize(model, seed)
    directory = tmp_path_factory.mktemp(family)
    model.save_pretrained(directory)
    out[family] = directory, model
  return out


def old_form(config: dict) -> dict:
  """The config.json of older transformers: rope_theta / rope_scaling (and Gemma 3's
  rope_local_base_freq / sliding_window_pattern) instead of rope_parameters, no layer_types."""
  old = {k: v for k, v in config.items() if k not in ("rope_parameters", "layer_types")}
  rope = config["rope_parameters"]
  if config["model_type"] == "gemma2":
    old["sliding_window_pattern"] = 2
  if "full_attention" in rope:
    old["rope_local_base_freq"] = rope["sliding_attention"]["rope_theta"]
    old["sliding_window_pattern"] = 6
    rope = rope["full_attention"]
  old["rope_theta"] = rope["rope_theta"]
  scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
  old["rope_scaling"] = None if scaling.get("rope_type") == "default" else scaling
  return old


def log_softmax(x):
  x = np.asarray(x, np.float64)
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_transformers(checkpoints, family, tmp_path):
  directory, model = checkpoints[family]
  cfg, params, _ = load_checkpoint(directory)
  tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, SEQ), dtype=np.int32)
  with torch.no_grad():
    want = model(torch.from_numpy(tokens.astype(np.int64))).logits.numpy()
  got = jax.jit(llama.forward, static_argnums=2)(llama.cast_params(params, cfg), tokens, cfg)
  delta = np.abs(log_softmax(got) - log_softmax(want)).max()
  assert delta <= 1e-3, f"{family}: max |Δ log-softmax| = {delta:.2e}"

  # The older config.json spelling describes the same model.
  old = tmp_path / "old"
  shutil.copytree(directory, old)
  config = json.loads((directory / "config.json").read_text())
  (old / "config.json").write_text(json.dumps(old_form(config)))
  assert load_checkpoint(old)[0] == cfg


def test_family_features_are_read(checkpoints):
  """The configs carry what makes each family differ (so the parity above tests it)."""
  cfgs = {family: load_checkpoint(checkpoints[family][0])[0] for family in FAMILIES}
  assert cfgs["llama3"].rope_scaling.kind == "llama3" and not cfgs["llama3"].tie_embeddings
  assert cfgs["llama_linear"].rope_scaling.factor == 4.0 and cfgs["llama_linear"].tie_embeddings
  assert cfgs["qwen2"].qkv_bias and cfgs["qwen2"].sliding_window is None
  assert cfgs["qwen3"].qk_norm and cfgs["qwen3"].head_dim == 16
  assert [s.window for s in cfgs["mistral"].layer_plan()] == [5, 5, 5]
  assert [(s.window, s.attn_soft_cap) for s in cfgs["gemma2"].layer_plan()] == [(6, 5.0),
                                                                                (None, 5.0)] * 2
  plan = cfgs["gemma3"].layer_plan()
  assert [s.window for s in plan] == [4, 4, 4, 4, 4, None, 4]
  assert [s.rope_theta for s in plan] == [10000.0] * 5 + [100000.0, 10000.0]
  assert plan[5].rope_scaling.factor == 2.0 and plan[0].rope_scaling is None


def test_unknown_tensor_and_architecture_are_named(checkpoints, tmp_path):
  directory, _ = checkpoints["qwen3"]
  odd = tmp_path / "odd"
  shutil.copytree(directory, odd)
  config = json.loads((odd / "config.json").read_text())
  (odd / "config.json").write_text(json.dumps({**config, "model_type": "qwen2"}))
  with pytest.raises(ModelFileError, match=r"unknown tensor\(s\) model.layers.0.self_attn.k_norm"
                                           r".weight.*'qwen2' parameter table"):
    load_checkpoint(odd)
  (odd / "config.json").write_text(json.dumps({**config, "model_type": "phi3",
                                               "architectures": ["Phi3ForCausalLM"]}))
  with pytest.raises(ModelFileError, match="model_type 'phi3'.*not supported; supported model "
                                           "types: llama, qwen2, qwen3, mistral, gemma2, gemma3_text"):
    load_checkpoint(odd)


def test_load_by_repo_id_from_the_hub_cache(checkpoints, tmp_path, monkeypatch):
  directory, _ = checkpoints["qwen3"]
  monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
  monkeypatch.delenv("HF_HUB_CACHE", raising=False)
  with pytest.raises(ModelFileError, match="not in the local Hugging Face cache.*hf download "
                                           "Tiny/Qwen3-Test"):
    memjax.load("Tiny/Qwen3-Test")
  repo = tmp_path / "hf" / "hub" / "models--Tiny--Qwen3-Test"
  shutil.copytree(directory, repo / "snapshots" / "abc123")
  (repo / "snapshots" / "old999").mkdir()
  (repo / "refs").mkdir()
  (repo / "refs" / "main").write_text("abc123")
  assert find_hub_snapshot("Tiny/Qwen3-Test") == repo / "snapshots" / "abc123"
  lm = memjax.load("Tiny/Qwen3-Test")
  assert lm.cfg == load_checkpoint(directory)[0]


# llama.cpp's names for the HF weights (written here by hand, independently of the family
# tables), for the architectures whose GGUF q/k keep Hugging Face's layout.
GGUF_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight", "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias", "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias", "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight", "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight", "mlp.down_proj.weight": "ffn_down.weight",
}


def llama_cpp_permute(rows, n_heads):
  """llama.cpp's q/k row order for its interleaved RoPE: per head, (half, i) -> (i, half)."""
  width = rows.shape[0]
  return rows.reshape(n_heads, 2, width // n_heads // 2, -1).swapaxes(1, 2).reshape(rows.shape)


def write_gguf(path, arch, model, extra=()):
  """The transformers model as an F32 GGUF of architecture `arch` (minimal gpt2 tokenizer;
  "llama" q/k permuted like llama.cpp), plus the (name, array) tensors `extra`."""
  gguf = pytest.importorskip("gguf")
  config = model.config
  writer = gguf.GGUFWriter(path, arch)
  writer.add_block_count(config.num_hidden_layers)
  writer.add_context_length(config.max_position_embeddings)
  writer.add_embedding_length(config.hidden_size)
  writer.add_feed_forward_length(config.intermediate_size)
  writer.add_head_count(config.num_attention_heads)
  writer.add_head_count_kv(config.num_key_value_heads)
  head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
  writer.add_key_length(head_dim)
  writer.add_value_length(head_dim)
  writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
  writer.add_layer_norm_rms_eps(config.rms_norm_eps)
  writer.add_tokenizer_model("gpt2")
  writer.add_token_list([f"t{i}" for i in range(config.vocab_size)])
  writer.add_token_types([1] * config.vocab_size)
  heads = {"q_proj": config.num_attention_heads, "k_proj": config.num_key_value_heads}
  for name, value in model.state_dict().items():
    parts = name.split(".")
    gguf_name = (f"blk.{parts[2]}.{GGUF_NAMES['.'.join(parts[3:])]}" if parts[1] == "layers"
                 else GGUF_NAMES[name])
    value = value.numpy().astype(np.float32)
    if arch == "llama" and parts[-2] in heads:
      value = llama_cpp_permute(value, heads[parts[-2]])
    writer.add_tensor(gguf_name, np.ascontiguousarray(value))
  for name, value in extra:
    writer.add_tensor(name, value)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  return path


@pytest.mark.parametrize("arch, fields", [
    ("qwen2", dict(tie_word_embeddings=False)),
    ("qwen3", dict(head_dim=128, num_attention_heads=2, num_key_value_heads=1,
                   tie_word_embeddings=True)),  # transformers' qwen3 GGUF reader assumes 128
])
def test_gguf_architectures_match_transformers(tmp_path, arch, fields):
  """qwen2 / qwen3 GGUF files (q/k biases, q/k norms) read by memjax and by transformers."""
  config_class = {"qwen2": "Qwen2Config", "qwen3": "Qwen3Config"}[arch]
  config = getattr(transformers, config_class)(**{**COMMON, **fields})
  model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
  randomize(model, 7)
  path = write_gguf(tmp_path / f"{arch}.gguf", arch, model)
  reference = transformers.AutoModelForCausalLM.from_pretrained(
      tmp_path, gguf_file=path.name, dtype=torch.float32, attn_implementation="eager").eval()
  cfg, params, _ = load_checkpoint(path)
  assert cfg.family == arch
  tokens = np.random.default_rng(1).integers(0, cfg.vocab_size, (1, SEQ), dtype=np.int32)
  with torch.no_grad():
    want = reference(torch.from_numpy(tokens.astype(np.int64))).logits.numpy()
  got = llama.forward(llama.cast_params(params, cfg), tokens, cfg)
  delta = np.abs(log_softmax(got) - log_softmax(want)).max()
  assert delta <= 1e-3, f"{arch} GGUF: max |Δ log-softmax| = {delta:.2e}"


def test_llama3_gguf_rope_freqs_match_transformers(checkpoints, tmp_path):
  """A Llama 3 GGUF stores its RoPE scaling as per-frequency divisors (rope_freqs.weight,
  here computed from transformers' own llama3 frequencies); memjax reads them into the config."""
  from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
  _, model = checkpoints["llama3"]
  config = model.config
  scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
  half = scaled.shape[0]
  plain = config.rope_parameters["rope_theta"] ** (-np.arange(half, dtype=np.float64) / half)
  divisors = (plain / scaled.double().numpy()).astype(np.float32)
  assert divisors.max() > 1.5  # the scaling really stretches some frequencies
  path = write_gguf(tmp_path / "llama3.gguf", "llama", model, [("rope_freqs.weight", divisors)])
  cfg, params, _ = load_checkpoint(path)
  assert cfg.rope_scaling.kind == "factors"
  tokens = np.random.default_rng(2).integers(0, cfg.vocab_size, (1, SEQ), dtype=np.int32)
  with torch.no_grad():
    want = model(torch.from_numpy(tokens.astype(np.int64))).logits.numpy()
  got = llama.forward(llama.cast_params(params, cfg), tokens, cfg)
  delta = np.abs(log_softmax(got) - log_softmax(want)).max()
  assert delta <= 1e-3, f"llama3 GGUF: max |Δ log-softmax| = {delta:.2e}"

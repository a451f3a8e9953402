"""Gemma 3 (text): five sliding-window layers to one global, a RoPE base per layer kind,
q/k norms, norms before and after attention and MLP, GeGLU, embeddings scaled by
sqrt(d_model), RMSNorm as (1 + w) and `query_pre_attn_scalar`.

Hugging Face stores the norm weights w (hf_offset adds the 1); llama.cpp's GGUF stores
1 + w already.
"""

from __future__ import annotations

from memjax.models.table import LLAMA_TENSORS, Family, Tensor, qk_norm_tensors, replace

# Every sixth layer is global (Gemma 3's pattern; llama.cpp and transformers assume it
# for GGUF files, which do not record it).
GLOBAL_EVERY = 6


def gemma_tensors(qk_norm: bool) -> tuple[Tensor, ...]:
  """The Gemma 2/3 table: post-attention and post-MLP norms, (1 + w) norms in HF files, and
  (Gemma 3) q/k norms."""
  tensors = replace(LLAMA_TENSORS, "layers/mlp_norm",
                    hf="model.layers.{i}.pre_feedforward_layernorm.weight")
  post_norms = (
      Tensor("layers/attn_post_norm", lambda c: (c.d_model,), ("norm",),
             "model.layers.{i}.post_attention_layernorm.weight",
             "blk.{i}.post_attention_norm.weight", init="ones"),
      Tensor("layers/mlp_post_norm", lambda c: (c.d_model,), ("norm",),
             "model.layers.{i}.post_feedforward_layernorm.weight",
             "blk.{i}.post_ffw_norm.weight", init="ones"))
  tensors = tensors + post_norms + (qk_norm_tensors() if qk_norm else ())
  for t in tensors:
    if t.path.endswith("norm"):
      tensors = replace(tensors, t.path, hf_offset=1.0)
  return tensors


def pattern_kinds(n_layers: int, every: int = GLOBAL_EVERY) -> tuple[str, ...]:
  """Layer kinds of the sliding pattern: layer i is global iff (i + 1) % every == 0."""
  return tuple("global" if (i + 1) % every == 0 else "sliding" for i in range(n_layers))


def gemma_hf_fields(hf: dict, *, qk_norm: bool, global_every: int) -> dict:
  """Gemma 2/3 config.json fields (transformers 5 `rope_parameters`, flat or per layer kind,
  or the older `rope_local_base_freq` / `sliding_window_pattern`)."""
  act = hf.get("hidden_activation", "gelu_pytorch_tanh")
  if act != "gelu_pytorch_tanh":
    raise ValueError(f"hidden_activation {act!r} is not supported (supported: "
                     "'gelu_pytorch_tanh')")
  fields = dict(
      qk_norm=qk_norm, mlp_act="gelu_tanh", post_norms=True, embed_scale=True,
      query_pre_attn_scalar=float(hf.get("query_pre_attn_scalar", 256)),
      final_soft_cap=hf.get("final_logit_softcapping"),
      tie_embeddings=hf.get("tie_word_embeddings", True))
  if not hf.get("layer_types"):
    fields["layer_kinds"] = pattern_kinds(hf["num_hidden_layers"],
                                          hf.get("sliding_window_pattern", global_every))
  return fields


def hf_fields(hf: dict) -> dict:
  """Gemma3TextConfig fields; Gemma 3 has no attention soft-cap (transformers ignores
  `attn_logit_softcapping` there, and so does memjax)."""
  local = (hf.get("rope_parameters") or {}).get("sliding_attention") or {}
  return dict(gemma_hf_fields(hf, qk_norm=True, global_every=GLOBAL_EVERY),
              rope_local_theta=float(local.get("rope_theta",
                                               hf.get("rope_local_base_freq", 10000.0))))


def gguf_fields(get) -> dict:
  return dict(qk_norm=True, mlp_act="gelu_tanh", post_norms=True, embed_scale=True,
              query_pre_attn_scalar=float(get("attention.key_length")),
              rope_local_theta=10000.0, sliding_window=int(get("attention.sliding_window")),
              layer_kinds=pattern_kinds(int(get("block_count"))))


FAMILY = Family(name="gemma3", tensors=gemma_tensors(qk_norm=True), hf_model_types=("gemma3_text",),
                gguf_architecture="gemma3", hf_fields=hf_fields, gguf_fields=gguf_fields)

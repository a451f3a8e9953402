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


def _tensors() -> tuple[Tensor, ...]:
  tensors = replace(LLAMA_TENSORS, "layers/mlp_norm",
                    hf="model.layers.{i}.pre_feedforward_layernorm.weight")
  post_norms = (
      Tensor("layers/attn_post_norm", lambda c: (c.d_model,), ("norm",),
             "model.layers.{i}.post_attention_layernorm.weight",
             "blk.{i}.post_attention_norm.weight", init="ones"),
      Tensor("layers/mlp_post_norm", lambda c: (c.d_model,), ("norm",),
             "model.layers.{i}.post_feedforward_layernorm.weight",
             "blk.{i}.post_ffw_norm.weight", init="ones"))
  tensors = tensors + post_norms + qk_norm_tensors()
  for t in tensors:
    if t.path.endswith("norm"):
      tensors = replace(tensors, t.path, hf_offset=1.0)
  return tensors


def pattern_kinds(n_layers: int, every: int = GLOBAL_EVERY) -> tuple[str, ...]:
  """Layer kinds of the sliding pattern: layer i is global iff (i + 1) % every == 0."""
  return tuple("global" if (i + 1) % every == 0 else "sliding" for i in range(n_layers))


def hf_fields(hf: dict) -> dict:
  """Gemma3TextConfig fields (transformers 5 `rope_parameters` per layer kind, or the
  older `rope_local_base_freq` / `sliding_window_pattern`)."""
  if hf.get("attn_logit_softcapping") is not None:
    raise ValueError("attn_logit_softcapping is not supported (final_logit_softcapping is)")
  act = hf.get("hidden_activation", "gelu_pytorch_tanh")
  if act != "gelu_pytorch_tanh":
    raise ValueError(f"hidden_activation {act!r} is not supported (supported: "
                     "'gelu_pytorch_tanh')")
  local = (hf.get("rope_parameters") or {}).get("sliding_attention") or {}
  fields = dict(
      qk_norm=True, mlp_act="gelu_tanh", post_norms=True, embed_scale=True,
      query_pre_attn_scalar=float(hf.get("query_pre_attn_scalar", 256)),
      rope_local_theta=float(local.get("rope_theta", hf.get("rope_local_base_freq", 10000.0))),
      final_soft_cap=hf.get("final_logit_softcapping"),
      tie_embeddings=hf.get("tie_word_embeddings", True))
  if not hf.get("layer_types"):
    fields["layer_kinds"] = pattern_kinds(hf["num_hidden_layers"],
                                          hf.get("sliding_window_pattern", GLOBAL_EVERY))
  return fields


def gguf_fields(get) -> dict:
  return dict(qk_norm=True, mlp_act="gelu_tanh", post_norms=True, embed_scale=True,
              query_pre_attn_scalar=float(get("attention.key_length")),
              rope_local_theta=10000.0, sliding_window=int(get("attention.sliding_window")),
              layer_kinds=pattern_kinds(int(get("block_count"))))


FAMILY = Family(name="gemma3", tensors=_tensors(), hf_model_types=("gemma3_text",),
                gguf_architecture="gemma3", hf_fields=hf_fields, gguf_fields=gguf_fields)

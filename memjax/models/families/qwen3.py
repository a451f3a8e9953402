"""Qwen3 (dense): the Llama block with RMSNorm over each query and key head."""

from __future__ import annotations

from memjax.models.families.qwen2 import without_unused_window
from memjax.models.table import LLAMA_TENSORS, Family, qk_norm_tensors


def hf_fields(hf: dict) -> dict:
  if hf.get("attention_bias", False):
    raise ValueError("attention_bias is not supported for qwen3")
  return {"qk_norm": True, **without_unused_window(hf)}


FAMILY = Family(name="qwen3", tensors=LLAMA_TENSORS + qk_norm_tensors(),
                hf_model_types=("qwen3",), gguf_architecture="qwen3", hf_fields=hf_fields,
                gguf_fields=lambda get: {"qk_norm": True})

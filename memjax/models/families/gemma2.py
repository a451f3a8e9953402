"""Gemma 2: the Gemma 3 block without q/k norms, alternating sliding-window and global
layers with one RoPE base, and soft-capped attention and output logits."""

from __future__ import annotations

from memjax.models.families.gemma3 import gemma_hf_fields, gemma_tensors
from memjax.models.table import Family


def hf_fields(hf: dict) -> dict:
  return dict(gemma_hf_fields(hf, qk_norm=False, global_every=2),
              attn_soft_cap=hf.get("attn_logit_softcapping"))


FAMILY = Family(name="gemma2", tensors=gemma_tensors(qk_norm=False),
                hf_model_types=("gemma2",), gguf_architecture=None, hf_fields=hf_fields,
                gguf_fields=lambda get: {})

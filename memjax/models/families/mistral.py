"""Mistral: the Llama block; every layer attends over a sliding window when the config
sets `sliding_window` (the common field)."""

from __future__ import annotations

from memjax.models.families.llama import hf_fields
from memjax.models.table import LLAMA_TENSORS, Family

FAMILY = Family(name="mistral", tensors=LLAMA_TENSORS, hf_model_types=("mistral",),
                gguf_architecture=None, hf_fields=hf_fields, gguf_fields=lambda get: {})

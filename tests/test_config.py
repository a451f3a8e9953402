"""YAML + key=value configs: typed, validated, with helpful errors, and round-tripping."""

import dataclasses
from typing import Literal

import pytest

from memjax.config import ConfigError, config_to_dict, dump_config, load_config
from memjax.eval.config import ALL_POLICIES, EvalConfig


@dataclasses.dataclass(frozen=True)
class Optim:
  lr: float = 1e-3
  betas: tuple[float, float] = (0.9, 0.95)
  clip: float | None = None
  schedule: Literal["cosine", "constant"] = "cosine"


@dataclasses.dataclass(frozen=True)
class Run:
  eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
  optim: Optim = dataclasses.field(default_factory=Optim)
  steps: int = 10
  tags: dict[str, int] = dataclasses.field(default_factory=dict)
  small: EvalConfig = dataclasses.field(default_factory=lambda: EvalConfig(seed=9, n_cases=2))


def _yaml(tmp_path, text, name="eval.yaml"):
  path = tmp_path / name
  path.write_text(text)
  return str(path)


def test_defaults_match_the_documented_ones():
  cfg = load_config(EvalConfig)
  assert cfg == EvalConfig()
  assert cfg.policies == ALL_POLICIES and cfg.policies[0] == "full"
  assert cfg.context_tokens == [1000] and cfg.depths == [0.1, 0.3, 0.5, 0.7, 0.9]
  assert cfg.protocol == "query-agnostic" and cfg.corpus == []


def test_yaml_then_overrides_in_order(tmp_path):
  path = _yaml(tmp_path, "budgets: [0.5, 0.25]\nseed: 3\ntasks: [single, multikey]\n")
  cfg = load_config(EvalConfig, path, ["seed=4", "budgets=[0.25, 1e-1, 256]", "query_aware=true",
                                       "policies=[full, h2o]"])
  assert cfg.seed == 4 and cfg.tasks == ["single", "multikey"]
  assert cfg.budgets == [0.25, 0.1, 256.0] and all(isinstance(b, float) for b in cfg.budgets)
  assert cfg.query_aware and cfg.protocol == "query-aware" and cfg.policies == ["full", "h2o"]


def test_unknown_key_names_the_file_and_suggests(tmp_path):
  path = _yaml(tmp_path, "budgts: [0.5]\n")
  message = r"unknown config key 'budgts' in .*eval\.yaml; did you mean 'budgets'\?"
  with pytest.raises(ConfigError, match=message):
    load_config(EvalConfig, path)
  message = r"'eval\.budgts' in override 'eval\.budgts=\[1\]'; did you mean 'eval\.budgets'"
  with pytest.raises(ConfigError, match=message):
    load_config(Run, None, ["eval.budgts=[1]"])
  with pytest.raises(ConfigError, match="valid keys are"):
    load_config(EvalConfig, None, ["zzz=1"])
  with pytest.raises(FileNotFoundError, match="nope.yaml"):
    load_config(EvalConfig, str(tmp_path / "nope.yaml"))


@pytest.mark.parametrize("override, message", [
    ("n_cases=2.5", r"'n_cases' in override 'n_cases=2.5' expects int, got 2.5 \(float\)"),
    ("n_cases=true", r"expects int, got True \(bool\)"),
    ("budgets=abc", r"'budgets' .* expects list\[float\], got 'abc' \(str\)"),
    ("policies=h2o", r"write a list, e.g. policies=\[h2o\]"),
    ("budget_schedule=pyramd",
     r"one of 'uniform', 'pyramid', got 'pyramd'.*did you mean 'pyramid'"),
    ("query_aware=1", r"expects bool"),
    ("seed", r"must look like key=value"),
])
def test_type_errors_name_key_type_and_value(override, message):
  with pytest.raises(ConfigError, match=message):
    load_config(EvalConfig, None, [override])


@pytest.mark.parametrize("override, message", [
    ("budgets=[]", "budgets must not be empty"),
    ("budgets=[0.5, 0]", "budget 0.0"),
    ("budgets=[1.5]", "budget 1.5"),
    ("tasks=[single, niah_singel_1]",
     r"unknown task\(s\) 'niah_singel_1' \(did you mean 'niah_single_1'\?\)"),
    ("depths=[1.2]", r"depths must lie in \[0, 1\]"),
    ("n_cases=0", "n_cases must be >= 1"),
])
def test_validation(override, message):
  with pytest.raises(ConfigError, match=message):
    load_config(EvalConfig, None, [override])


def test_nested_sections_lists_tuples_and_optionals(tmp_path):
  path = _yaml(tmp_path, "eval:\n  budgets: [0.5]\n  seed: 2\noptim: {lr: 0.1}\n", "run.yaml")
  cfg = load_config(Run, path, ["eval.budgets=[0.25,0.125]", "optim.betas=[0.8, 0.99]",
                                "optim.clip=1", "optim={schedule: constant}", "tags={a: 1}"])
  assert cfg.eval.budgets == [0.25, 0.125] and cfg.eval.seed == 2
  assert cfg.optim == Optim(lr=0.1, betas=(0.8, 0.99), clip=1.0, schedule="constant")
  assert cfg.tags == {"a": 1}
  small = load_config(Run, None, ["small.seed=1"]).small
  assert (small.seed, small.n_cases) == (1, 2)  # other keys keep the section's own defaults
  assert load_config(Run, None, ["optim.clip=null"]).optim.clip is None
  with pytest.raises(ConfigError, match=r"expects tuple\[float, float\]"):
    load_config(Run, None, ["optim.betas=[1, 2, 3]"])
  with pytest.raises(ConfigError, match="'steps' .* is not a section"):
    load_config(Run, None, ["steps.x=1"])
  with pytest.raises(ConfigError, match="'optim' .* is a section"):
    load_config(Run, None, ["optim=3"])
  message = "invalid EvalConfig section eval: budgets must not be empty"
  with pytest.raises(ConfigError, match=message):
    load_config(Run, None, ["eval.budgets=[]"])


def test_yaml_round_trip(tmp_path):
  cfg = load_config(Run, None, ["eval.budgets=[0.3, 512]", "eval.corpus=[a.txt, b.txt]",
                                "optim.betas=[0.5, 0.6]", "steps=7"])
  path = tmp_path / "out" / "run.yaml"
  text = dump_config(cfg, str(path))
  assert path.read_text() == text and "budgets: [0.3, 512.0]" in text
  assert load_config(Run, str(path)) == cfg
  assert config_to_dict(cfg)["optim"]["betas"] == [0.5, 0.6]

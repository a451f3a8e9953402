"""Fault injection: unwritable and failing checkpoint directories, damaged and interrupted
checkpoints, out-of-range token ids, bad arguments and bad configs. Every case must end in a
clear error or a verified recovery: never a hang, a traceback for a user error, or a silent
change of what runs."""

import errno
import os
import pathlib
import re
import shutil
import subprocess
import sys
import textwrap
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tokenizers import pre_tokenizers

from memjax import cli
from memjax.cache.policies import get_policy
from memjax.config import ConfigError
from memjax.generation import generate
from memjax.io import Tokenizer
from memjax.lm import LanguageModel
from memjax.train import TrainConfig, load_state, load_train_config, train
from memjax.train.checkpoint import (MANIFEST, Checkpointer, CheckpointError,
                                     CheckpointWarning)
from memjax.train.trainer import NonFiniteLossError
from tests.helpers import tiny_model
from tests.test_train import ToyBatches, toy_loss

ROOT = pathlib.Path(__file__).resolve().parents[1]
SUBPROCESS_TIMEOUT_S = 300


# ---------------------------------------------------------------------------------------
# Directories that cannot be written. Tests run as root, who may write anywhere a mode
# forbids, so "unwritable" is a path below a regular file, or a directory made immutable
# with chattr +i (which binds root too).

def _immutable(path: pathlib.Path, on: bool) -> None:
  subprocess.run(["chattr", "+i" if on else "-i", str(path)], check=True,
                 capture_output=True)


@pytest.fixture(scope="module")
def chattr_works(tmp_path_factory) -> bool:
  """Whether `chattr +i` is available here and stops root from writing."""
  probe = tmp_path_factory.mktemp("chattr")
  try:
    _immutable(probe, True)
  except (OSError, subprocess.CalledProcessError):
    return False
  try:
    (probe / "x").write_text("")
    return False
  except OSError:
    return True
  finally:
    _immutable(probe, False)


@pytest.fixture
def unwritable_dir(tmp_path, chattr_works, request):
  """A checkpoint_dir that cannot be written: below a regular file, or immutable."""
  if request.param == "below_a_file":
    (tmp_path / "file").write_text("not a directory")
    yield tmp_path / "file" / "checkpoints"
    return
  if not chattr_works:
    pytest.skip("chattr +i is not available or does not bind root here")
  path = tmp_path / "immutable"
  path.mkdir()
  _immutable(path, True)
  yield path
  _immutable(path, False)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  """Subprocess environment: CPU, and one XLA cache shared by this module's subprocesses."""
  return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
              MEMJAX_COMPILATION_CACHE=str(tmp_path_factory.mktemp("xla")))


TINY_FAST = ["steps=4", "warmup_steps=0", "seq_len=64", "batch_size=2", "grad_accum=1",
             "synthetic_fraction=0", "save_every=2"]


def _one_error_line(stderr: str, command: str) -> str:
  """The single "memjax COMMAND: error: ..." line of `stderr`; fails on any traceback."""
  assert "Traceback" not in stderr, stderr[-3000:]
  errors = [line for line in stderr.splitlines() if line.startswith(f"memjax {command}: error:")]
  assert len(errors) == 1, stderr[-3000:]
  return errors[0]


@pytest.mark.parametrize("unwritable_dir", ["below_a_file", "immutable"], indirect=True)
def test_unwritable_checkpoint_dir_ends_the_cli_at_once(unwritable_dir, tmp_path, env):
  run = subprocess.run(
      [sys.executable, "-m", "memjax.cli", "train", "configs/train_tiny.yaml",
       f"checkpoint_dir={unwritable_dir}", f"output_dir={tmp_path / 'out'}", *TINY_FAST],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S)
  assert run.returncode == 2, run.stderr[-3000:]
  line = _one_error_line(run.stderr, "train")
  assert f"checkpoint directory {unwritable_dir} cannot be written" in line


# A toy run whose checkpoints fail mid-run: the directory turns immutable after step 2's
# save ("unwritable"), or the disk fills while step 2 is written in the background
# ("disk_full", raised where the manifest is written, in orbax's save thread).
FAILING_RUN = textwrap.dedent("""
    import errno, pathlib, subprocess, sys, time
    import jax.numpy as jnp
    from memjax.train import TrainConfig, checkpoint, train
    from tests.test_train import ToyBatches, toy_loss

    mode, directory = sys.argv[1], pathlib.Path(sys.argv[2])

    class Batches(ToyBatches):
      def __next__(self):
        if mode == "unwritable" and self.position == 3:  # after step 2's save, before 4's
          while not (directory / "2").is_dir():
            time.sleep(0.01)
          subprocess.run(["chattr", "+i", str(directory)], check=True)
        return super().__next__()

    def disk_full(step_dir):
      raise OSError(errno.ENOSPC, "No space left on device", str(step_dir))

    if mode == "disk_full":
      checkpoint.write_manifest = disk_full
    cfg = TrainConfig(steps=10, warmup_steps=0, lr=0.1, save_every=2, log_every=1,
                      batch_size=4, output_dir=str(directory.parent / "out"),
                      checkpoint_dir=str(directory))
    batches = Batches(nan_at=0)
    try:
      train(cfg, toy_loss, {"w": jnp.zeros(2)}, {"scale": jnp.ones(2)}, batches)
    except checkpoint.CheckpointError as err:
      print(f"stopped at batch {batches.position}: {err}")
      sys.exit(3)
    print("trained to the end")
""")


@pytest.mark.parametrize("mode, failed_step", [("unwritable", 4), ("disk_full", 2)])
def test_a_failed_save_stops_the_run_and_the_process_ends(mode, failed_step, tmp_path, env,
                                                          chattr_works):
  if mode == "unwritable" and not chattr_works:
    pytest.skip("chattr +i is not available or does not bind root here")
  directory = tmp_path / "checkpoints"
  try:
    run = subprocess.run([sys.executable, "-c", FAILING_RUN, mode, str(directory)], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S)
  finally:
    if mode == "unwritable" and directory.exists():
      _immutable(directory, False)
  assert run.returncode == 3, run.stdout[-2000:] + run.stderr[-3000:]
  assert f"saving checkpoint step {failed_step} to {directory} failed" in run.stdout
  position = int(run.stdout.split("stopped at batch ")[1].split(":")[0])
  assert position <= 4  # stopped at once, not at the end of the run
  if mode == "disk_full":
    assert "No space left on device" in run.stdout
    assert not [p for p in directory.iterdir() if p.name.isdigit()]  # nothing half-saved


def test_a_failed_save_leaves_no_thread_behind(tmp_path, monkeypatch):
  def disk_full(step_dir):
    raise OSError(errno.ENOSPC, "No space left on device", str(step_dir))

  monkeypatch.setattr("memjax.train.checkpoint.write_manifest", disk_full)
  before = set(threading.enumerate())
  with pytest.raises(CheckpointError, match=f"saving checkpoint step 2 to {tmp_path} failed"):
    train(_toy_cfg(tmp_path, steps=10), toy_loss, *_toy_params(), ToyBatches(nan_at=0))
  left = lambda: [t.name for t in set(threading.enumerate()) - before if not t.daemon]
  deadline = time.monotonic() + 10
  while left() and time.monotonic() < deadline:
    time.sleep(0.05)
  assert not left()  # no thread would keep the interpreter from exiting


# ---------------------------------------------------------------------------------------
# Damaged and interrupted checkpoints: a toy run saved at steps 2 and 4.

def _toy_cfg(directory: pathlib.Path, steps: int) -> TrainConfig:
  return TrainConfig(steps=steps, warmup_steps=0, lr=0.1, save_every=2, log_every=1,
                     batch_size=4, output_dir=str(directory.with_name(f"{directory.name}_out")),
                     checkpoint_dir=str(directory))


def _toy_params():
  return {"w": jnp.zeros(2)}, {"scale": jnp.ones(2)}


class _Interrupt(Exception):
  """Stands in for a kill: raised by the batches of a run that should stop."""


class StoppingBatches(ToyBatches):
  """ToyBatches that stop the run before step `stop_at`."""

  def __init__(self, stop_at: int):
    super().__init__(nan_at=0)
    self.stop_at = stop_at

  def __next__(self):
    if self.position + 1 == self.stop_at:
      raise _Interrupt
    return super().__next__()


@pytest.fixture(scope="module")
def toy_runs(tmp_path_factory):
  """(checkpoints 2 and 4 of a 6-step run stopped before step 5, the final state of the
  whole 6-step run)."""
  stopped = tmp_path_factory.mktemp("stopped")
  with pytest.raises(_Interrupt):
    train(_toy_cfg(stopped, steps=6), toy_loss, *_toy_params(), StoppingBatches(stop_at=5))
  whole = tmp_path_factory.mktemp("whole")
  final = train(_toy_cfg(whole, steps=6), toy_loss, *_toy_params(), ToyBatches(nan_at=0))
  return stopped, final


def _largest_data_file(step_dir: pathlib.Path) -> pathlib.Path:
  return max((p for p in (step_dir / "state").rglob("*") if p.is_file() and "/d/" in str(p)),
             key=lambda p: p.stat().st_size)


def _overwrite_8_bytes(step_dir):
  path = _largest_data_file(step_dir)
  data = bytearray(path.read_bytes())
  data[len(data) // 2:len(data) // 2 + 8] = b"\xde\xad\xbe\xef" * 2
  path.write_bytes(bytes(data))
  return path


def _flip_one_bit(step_dir):
  path = _largest_data_file(step_dir)
  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 0x10
  path.write_bytes(bytes(data))
  return path


def _truncate(step_dir):
  path = _largest_data_file(step_dir)
  path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 3])
  return path


def _empty_state_metadata(step_dir):
  (step_dir / "state" / "_METADATA").write_bytes(b"")
  return step_dir / "state" / "_METADATA"


def _garbage_data_metadata(step_dir):
  (step_dir / "data" / "metadata").write_bytes(b"\x00\x9c garbage {{")
  return step_dir / "data" / "metadata"


def _delete_data_file(step_dir):
  path = _largest_data_file(step_dir)
  path.unlink()
  return path


def _killed_before_the_manifest(step_dir):
  # kill -9 between the data write and the manifest write leaves the data without one
  (step_dir / MANIFEST).unlink()
  return step_dir / MANIFEST


def _garbage_manifest(step_dir):
  (step_dir / MANIFEST).write_text("{not json")
  return step_dir / MANIFEST


DAMAGES = {
    "overwrite_8_bytes": (_overwrite_8_bytes, "does not match its sha256 checksum"),
    "flip_one_bit": (_flip_one_bit, "does not match its sha256 checksum"),
    "truncate_data_file": (_truncate, r"has \d+ bytes where \d+ were saved"),
    "empty_state_metadata": (_empty_state_metadata, "has 0 bytes where"),
    "garbage_data_metadata": (_garbage_data_metadata, r"(bytes where|sha256)"),
    "delete_data_file": (_delete_data_file, "is missing"),
    "killed_before_the_manifest": (_killed_before_the_manifest,
                                   f"has no {MANIFEST} .its save did not finish"),
    "garbage_manifest": (_garbage_manifest, f"its {MANIFEST} is unreadable"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_newest_checkpoint_falls_back_to_a_verified_one(damage, toy_runs, tmp_path):
  stopped, whole_run = toy_runs
  directory = tmp_path / "checkpoints"
  shutil.copytree(stopped, directory)
  hurt, reason = DAMAGES[damage]
  path = hurt(directory / "4")
  name = path.relative_to(directory / "4").as_posix()
  with pytest.warns(CheckpointWarning) as caught:
    final = train(_toy_cfg(directory, steps=6), toy_loss, *_toy_params(), ToyBatches(nan_at=0))
  message = str(caught[0].message)
  assert f"checkpoint step 4 in {directory} fails verification" in message
  assert "resuming from step 2" in message
  assert name in message and re.search(reason, message), message
  # The run resumed from step 2 and ended exactly where an undisturbed run ends.
  assert _same_leaves(final, whole_run)
  assert (directory / "4.rejected").is_dir()  # kept for inspection, out of orbax's way
  assert sorted(p.name for p in directory.iterdir() if p.name.isdigit()) == ["2", "4", "6"]


def _same_leaves(a, b) -> bool:
  return all(np.array_equal(np.asarray(x), np.asarray(y))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def test_no_verified_checkpoint_is_an_error_naming_each_step(toy_runs, tmp_path):
  stopped, _ = toy_runs
  directory = tmp_path / "checkpoints"
  shutil.copytree(stopped, directory)
  _flip_one_bit(directory / "4")
  _killed_before_the_manifest(directory / "2")
  expected = (rf"no checkpoint in {directory} verifies \(step 4: .* sha256 .*; step 2: .*"
              rf"no {MANIFEST}.*write_manifest")
  with pytest.raises(CheckpointError, match=expected):
    train(_toy_cfg(directory, steps=6), toy_loss, *_toy_params(), ToyBatches(nan_at=0))
  with pytest.raises(CheckpointError, match=expected):
    load_state(directory)
  assert sorted(p.name for p in directory.iterdir()) == ["2", "4"]  # nothing moved or lost


def test_load_state_falls_back_and_leaves_the_directory_alone(toy_runs, tmp_path):
  stopped, _ = toy_runs
  directory = tmp_path / "checkpoints"
  shutil.copytree(stopped, directory)
  _overwrite_8_bytes(directory / "4")
  with pytest.warns(CheckpointWarning, match="step 4 .* loading step 2 instead"):
    state, step = load_state(directory)
  assert step == 2 == int(state["step"])
  with pytest.raises(CheckpointError, match="checkpoint step 4 in .* fails verification: .*sha256"):
    load_state(directory, step=4)
  assert sorted(p.name for p in directory.iterdir()) == ["2", "4"]


def test_the_nan_stop_names_a_checkpoint_that_verifies(tmp_path):
  class DamagingBatches(ToyBatches):
    """At step 5 (NaN), step 4's checkpoint has been damaged on disk."""

    def __next__(self):
      if self.position == 4:
        while not (tmp_path / "4").is_dir():
          time.sleep(0.01)
        _flip_one_bit(tmp_path / "4")
      return super().__next__()

  with pytest.raises(NonFiniteLossError, match=rf"last good checkpoint is step 2 in {tmp_path}"):
    train(_toy_cfg(tmp_path, steps=10), toy_loss, *_toy_params(), DamagingBatches(nan_at=5))


def test_an_intact_checkpoint_verifies_and_restores_exactly(toy_runs, tmp_path):
  stopped, _ = toy_runs
  directory = tmp_path / "checkpoints"
  shutil.copytree(stopped, directory)
  manifest = (directory / "4" / MANIFEST).read_text()
  assert "state/_METADATA" in manifest and "data/metadata" in manifest
  expected, _ = load_state(stopped)
  checkpointer = Checkpointer(directory, keep=3)
  try:
    assert checkpointer.newest_verified_step() == 4
  finally:
    checkpointer.close()
  got, step = load_state(directory)
  assert step == 4 and _same_leaves(got, expected)


# ---------------------------------------------------------------------------------------
# Token ids and generation arguments, on a tiny random model with a byte tokenizer.

VOCAB = 256


@pytest.fixture(scope="module")
def byte_tokenizer():
  """A byte-level BPE tokenizer with one token per byte (vocabulary 256, no merges)."""
  return Tokenizer.from_byte_level_bpe(sorted(pre_tokenizers.ByteLevel.alphabet()), [],
                                       token_types=None, pre_tokenizer=None, bos_id=None,
                                       eos_id=None)


@pytest.fixture(scope="module")
def lm(byte_tokenizer):
  cfg, params = tiny_model(vocab_size=VOCAB)
  return LanguageModel(cfg, params, byte_tokenizer, "tiny")


OUT_OF_RANGE = r"token id {id} at position {pos} is outside the vocabulary of 256 ids"


@pytest.mark.parametrize("call, message", [
    (lambda lm: lm.generate([-1, 20, 30]), "prompt 0: " + OUT_OF_RANGE.format(id=-1, pos=0)),
    (lambda lm: lm.generate([20, 256, 30]), "prompt 0: " + OUT_OF_RANGE.format(id=256, pos=1)),
    (lambda lm: lm.generate([[1, 2], [3, 10**20]]),
     "prompt 1: " + OUT_OF_RANGE.format(id=10**20, pos=1)),
    (lambda lm: lm.generate([1, 2], question=[5, -3]),
     "question 0: " + OUT_OF_RANGE.format(id=-3, pos=1)),
    (lambda lm: lm.generate("text", question=[300]),
     "question 0: " + OUT_OF_RANGE.format(id=300, pos=0)),
    (lambda lm: lm.logits([[1, 2, -1]]), "row 0: " + OUT_OF_RANGE.format(id=-1, pos=2)),
    (lambda lm: lm.logits(np.array([[1, 2], [256, 3]])),
     "row 1: " + OUT_OF_RANGE.format(id=256, pos=0)),
    (lambda lm: generate.generate_ids(lm.params, lm.cfg, [[1, 2, 999]]),
     "prompt 0: " + OUT_OF_RANGE.format(id=999, pos=2)),
    (lambda lm: lm.tokenizer.decode([-1]), "decode: " + OUT_OF_RANGE.format(id=-1, pos=0)),
    (lambda lm: lm.tokenizer.decode([65, 256]), "decode: " + OUT_OF_RANGE.format(id=256, pos=1)),
])
def test_token_ids_out_of_range_are_errors_naming_the_id(lm, call, message):
  with pytest.raises(ValueError, match=message):
    call(lm)


@pytest.mark.parametrize("call, error, message", [
    (lambda lm: lm.generate([1, 2.0]), TypeError, r"prompt 0: position 1 holds 2.0 \(float\)"),
    (lambda lm: lm.generate([True, 2]), TypeError, r"position 0 holds True \(bool\)"),
    (lambda lm: lm.tokenizer.decode([1.5]), TypeError, r"decode: position 0 holds 1.5"),
    (lambda lm: lm.generate("a", prefill_chunk=0), ValueError, r"prefill_chunk .* >= 1, got 0"),
    (lambda lm: lm.generate("a", prefill_chunk=-8), ValueError, r"prefill_chunk .* got -8"),
    (lambda lm: lm.generate("a", prefill_chunk=4.0), TypeError, r"prefill_chunk .* an int"),
    (lambda lm: lm.generate("a", policy="window", budget=32.7), TypeError,
     r"budget .* must be an int, got 32.7 \(float\)"),
    (lambda lm: lm.generate("a", policy="window", budget="32"), TypeError,
     r"budget .* got '32' \(str\)"),
    (lambda lm: lm.generate("a", policy="window", budget=True), TypeError,
     r"budget .* got True \(bool\)"),
    (lambda lm: lm.generate("a", policy="window", budget=0), ValueError, r"budget .* >= 1"),
    (lambda lm: lm.generate("a", policy="full", budget=8.5), TypeError, r"budget .* an int"),
    (lambda lm: lm.generate("a", policy="window"), ValueError, r"needs a budget"),
    (lambda lm: lm.generate("a", max_new_tokens=-3), ValueError,
     r"max_new_tokens .* >= 1, got -3"),
    (lambda lm: lm.generate("a", max_new_tokens=0), ValueError, r"max_new_tokens .* >= 1"),
    (lambda lm: lm.generate("a", max_new_tokens=2.0), TypeError, r"max_new_tokens .* an int"),
    (lambda lm: lm.generate("a", temperature=-1), ValueError,
     r"temperature .* finite number >= 0, got -1"),
    (lambda lm: lm.generate("a", temperature=float("nan")), ValueError, r"temperature .* nan"),
    (lambda lm: lm.generate("a", temperature=float("inf")), ValueError, r"temperature .* inf"),
    (lambda lm: lm.generate("a", temperature="0.5"), TypeError, r"temperature .* a number"),
    (lambda lm: lm.generate("a", seed=-1), ValueError, r"seed must be >= 0"),
    (lambda lm: lm.generate("a", question=["q1", "q2"]), ValueError,
     r"one question per prompt .* 2 question\(s\) for 1 prompt\(s\)"),
    (lambda lm: lm.generate(["a", "b"], question="q"), ValueError,
     r"one question per prompt .* 1 question\(s\) for 2 prompt\(s\)"),
    (lambda lm: lm.generate(["text", [1, 2]]), TypeError,
     r"prompt mixes text and token ids \(item 0 is a string, item 1 is not\)"),
    (lambda lm: lm.generate("a", question=[[1], "q"]), TypeError, r"question mixes text"),
    (lambda lm: lm.generate(5), TypeError, r"prompt must be a string, a list of token ids"),
    (lambda lm: lm.generate([]), ValueError, r"every prompt needs at least one token"),
    (lambda lm: lm.generate(["a", ""]), ValueError, r"every prompt needs at least one token"),
    (lambda lm: lm.generate("bad \ud800 text"), ValueError,
     r"lone surrogate '\\ud800' at index 4"),
    (lambda lm: lm.generate(["ok", "\udfff"]), ValueError, r"lone surrogate"),
    (lambda lm: lm.logits([[1, 2], [3]]), ValueError,
     r"logits needs rows of one length, got lengths \[1, 2\]"),
    (lambda lm: lm.logits([]), ValueError, r"at least one row of at least one token"),
    (lambda lm: lm.logits([[1] * 300]), ValueError, r"300 tokens exceed .* 256 positions"),
])
def test_bad_arguments_are_clear_errors(lm, call, error, message):
  with pytest.raises(error, match=message):
    call(lm)


def test_a_budget_beyond_the_sequence_costs_what_full_costs(lm):
  prompt = "The quick brown fox jumps over the lazy dog, twice."  # 51 bytes
  total = len(prompt) + 4
  assert generate.resolve_budgets(lm.cfg, get_policy("window"), 100_000, total) == [total] * 2
  assert generate.resolve_budgets(lm.cfg, get_policy("h2o"), 100_000, total,
                                  "pyramid") == [total] * 2
  assert generate.resolve_budgets(lm.cfg, get_policy("window"), 16, total) == [16] * 2
  full = lm.generate(prompt, policy="full", max_new_tokens=4)
  assert lm.generate(prompt, policy="window", budget=100_000, max_new_tokens=4) == full


def test_valid_arguments_still_work(lm):
  ids = lm.tokenizer.encode("hello")
  assert lm.tokenizer.decode(ids) == "hello"
  assert lm.tokenizer.decode(np.array(ids, np.int32)) == "hello"
  text = lm.generate("hello", max_new_tokens=3, budget=np.int64(8), policy="window")
  assert isinstance(text, str)
  batch = lm.generate([ids, ids[:2]], question=[[1], []], max_new_tokens=2)
  assert len(batch) == 2 and all(len(row) <= 2 for row in batch)
  assert lm.logits(np.array(ids)).shape == (1, len(ids), VOCAB)


# ---------------------------------------------------------------------------------------
# The command line: user errors are one line naming the file, exit code 2, no traceback.

@pytest.fixture
def quiet_cli(monkeypatch, tmp_path):
  monkeypatch.setenv("MEMJAX_COMPILATION_CACHE", str(tmp_path / "xla"))
  monkeypatch.chdir(tmp_path)


def _cli_error(capsys, argv) -> str:
  """The one error line of `memjax ARGV`, which must exit with code 2."""
  assert cli.main(argv) == 2
  return _one_error_line(capsys.readouterr().err, argv[0])


@pytest.mark.parametrize("name, text, message", [
    ("bad.yaml", "steps: 10\nlr: [1, 2\nseed: 3\n", r"bad.yaml:3:5: invalid YAML: expected ',' or ']'"),
    ("bad.yaml", "steps: 10\n  lr: 3\n", r"bad.yaml:2:5: invalid YAML: mapping values are not allowed"),
    ("bad.yaml", "steps: 'ten\n", r"bad.yaml:\d+:\d+: invalid YAML"),
    ("bad.yaml", "- steps\n", r"bad.yaml must hold a mapping of config keys, not list"),
    ("bad.yaml", "lrr: 1\n", r"unknown config key 'lrr' in bad.yaml; did you mean 'lr'\?"),
    ("bad.gin", "TrainConfig.lr = = 3\n", r"bad.gin:1: gin syntax error: Unable to parse value"),
    ("bad.gin", "TrainConfig.steps = 5\nTrainConfig.lr = [1,\n", r"bad.gin:3: gin syntax error: EOF"),
    ("bad.gin", "include 'missing.gin'\n", r"bad.gin:1: `include 'missing.gin'`: no such file"),
    ("bad.gin", "TrainConfg.lr = 1e-3\n", r"bad.gin:1: No configurable matching 'TrainConfg'"),
])
def test_config_syntax_errors_name_the_file_and_line(quiet_cli, capsys, name, text, message):
  pathlib.Path(name).write_text(text)
  assert re.search(message, _cli_error(capsys, ["train", name]))


@pytest.mark.parametrize("override, message", [
    ("lr=[1,", r"override 'lr=\[1,', column 4: invalid YAML"),
    ('lr="abc', r"override 'lr=\"abc', column \d+: invalid YAML"),
    ("method={name: x", r"override 'method=\{name: x', column \d+: invalid YAML"),
    ("nokey", r"override 'nokey' must look like key=value"),
    ("steps=2.5", r"config key 'steps' in override 'steps=2.5' expects int, got 2.5"),
])
def test_override_errors_name_the_override(quiet_cli, capsys, override, message):
  pathlib.Path("ok.yaml").write_text("steps: 10\nwarmup_steps: 2\n")
  assert re.search(message, _cli_error(capsys, ["train", "ok.yaml", override]))


def test_path_errors_name_the_path(quiet_cli, capsys, tmp_path):
  assert "config file 'nope.yaml' does not exist" in _cli_error(capsys, ["train", "nope.yaml"])
  pathlib.Path("dir.yaml").mkdir()
  assert "config file 'dir.yaml' is not a file" in _cli_error(capsys, ["train", "dir.yaml"])
  pathlib.Path("latin1.yaml").write_bytes("lr: 1  # caf\xe9\n".encode("latin-1"))
  assert "'latin1.yaml' is not UTF-8 text" in _cli_error(capsys, ["train", "latin1.yaml"])
  assert "must end in .yaml, .yml or .gin" in _cli_error(capsys, ["train", "config.toml"])
  pathlib.Path("blocker").write_text("a file")
  line = _cli_error(capsys, ["train", str(ROOT / "configs/train_tiny.yaml"),
                             "output_dir=blocker/run", *TINY_FAST])
  assert "Not a directory" in line and "blocker/run" in line


def test_gin_imports_are_refused_unless_allowed(quiet_cli, capsys, tmp_path, monkeypatch):
  # A module that leaves a mark when imported: gin would run it while reading the file.
  (tmp_path / "side_effect.py").write_text(
      "import pathlib\npathlib.Path('imported.txt').write_text('ran')\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  pathlib.Path("inc.gin").write_text("import side_effect\n")
  pathlib.Path("run.gin").write_text("TrainConfig.steps = 0\ninclude 'inc.gin'\n")
  line = _cli_error(capsys, ["train", "run.gin"])
  assert "inc.gin:1: `import side_effect` would import a Python module" in line
  assert "--gin-imports" in line and not pathlib.Path("imported.txt").exists()
  with pytest.raises(ConfigError, match="allow_imports=True"):
    load_train_config("run.gin")
  # Allowed, the import runs; the config is then checked as usual (steps=0 is invalid).
  line = _cli_error(capsys, ["train", "run.gin", "--gin-imports"])
  assert "steps must be >= 1" in line and pathlib.Path("imported.txt").exists()


def test_debug_shows_the_traceback(quiet_cli):
  pathlib.Path("bad.yaml").write_text("lr: [1\n")
  with pytest.raises(ConfigError, match="bad.yaml:2:1: invalid YAML"):
    cli.main(["train", "bad.yaml", "--debug", "seed=1"])


def test_train_keeps_overrides_after_options(quiet_cli, capsys):
  pathlib.Path("ok.yaml").write_text("steps: 10\nwarmup_steps: 2\n")
  assert "batch_size=6 is not a multiple of grad_accum=4" in _cli_error(
      capsys, ["train", "ok.yaml", "batch_size=6", "--gin-imports", "grad_accum=4"])

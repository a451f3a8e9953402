"""Value table sharded by columns over a `mem` axis of 8 simulated devices (subprocess)."""

import json
import pathlib
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.memory, pytest.mark.distributed]

WORKER = pathlib.Path(__file__).with_name("memory_sharded_worker.py")


def test_sharded_values_equal_unsharded():
  """Memory+ lookup on a (data 2, mem 4) mesh: loss and every gradient (params and input)
  match the single-device chunked gather, with rows padded (T=11) and not (T=12)."""
  run = subprocess.run([sys.executable, str(WORKER)], capture_output=True, text=True,
                       timeout=600, cwd=WORKER.parent.parent)
  assert run.returncode == 0, run.stderr[-3000:]
  errors = json.loads(run.stdout.strip().splitlines()[-1])
  assert errors.pop("devices") == 8
  assert len(errors) == 14
  assert max(errors.values()) < 1e-5, errors

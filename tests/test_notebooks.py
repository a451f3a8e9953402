"""Every Colab notebook runs end to end on CPU with its smallest settings (nbclient)."""

import pathlib

import pytest

nbformat = pytest.importorskip("nbformat", reason="the [test] extra installs nbformat")
nbclient = pytest.importorskip("nbclient", reason="the [test] extra installs nbclient")

COLAB = pathlib.Path(__file__).resolve().parent.parent / "colab"
NOTEBOOKS = sorted(COLAB.glob("*.ipynb"))
NEEDS_SMOLLM2 = {"01_quickstart", "03_visualise_retention"}
# The two longest (about 1.5 and 0.5 min alone) run with `make test-all`, keeping the default
# run near 20 minutes on 2 cores; the other two run by default.
SLOW = {"01_quickstart", "04_memory_layers"}
CELL_TIMEOUT_S = 600


def test_every_notebook_is_tested_and_committed_without_outputs():
  assert [p.name for p in NOTEBOOKS] == [
      "01_quickstart.ipynb", "02_train_retention_gates_tpu.ipynb",
      "03_visualise_retention.ipynb", "04_memory_layers.ipynb"]
  for path in NOTEBOOKS:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code), path.name


@pytest.mark.parametrize("path", [
    pytest.param(p, marks=pytest.mark.slow) if p.stem in SLOW else p for p in NOTEBOOKS],
    ids=lambda p: p.stem)
def test_notebook_runs_on_cpu_with_small_settings(path, tmp_path, monkeypatch, request):
  """Runs in a temporary directory (the notebooks write results/ and runs/ where they run);
  a cell that raises fails the test with its traceback. Every notebook ends in plots."""
  if path.stem in NEEDS_SMOLLM2:
    request.getfixturevalue("smollm2_path")  # skips when the model is not installed
  monkeypatch.setenv("MEMJAX_NOTEBOOK_SMALL", "1")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  nb = nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                   resources={"metadata": {"path": str(tmp_path)}})
  client.execute()
  outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
  assert not [out for out in outputs if out.output_type == "error"]
  assert any("image/png" in out.get("data", {}) for out in outputs), "no plot was shown"

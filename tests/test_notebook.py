"""notebooks/quickstart.ipynb: committed without outputs; runs end to end in a fresh kernel."""

import json
import os
import re
import sys
import time

import nbformat
import pytest
from xla_env import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "quickstart.ipynb")
CELL_TIMEOUT_S = int(os.environ.get("GIRL_NOTEBOOK_CELL_TIMEOUT", "300"))


def _read():
    return nbformat.read(NOTEBOOK, as_version=4)


def test_notebook_is_committed_without_outputs():
    nb = _read()
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "the quickstart has no code cells"
    for i, cell in enumerate(code):
        assert cell.outputs == [], f"code cell {i} has stored outputs: clear them with nbformat"
        assert cell.execution_count is None, f"code cell {i} has an execution count"


def test_notebook_selects_the_platform_before_jax_is_imported():
    code = [c.source for c in _read().cells if c.cell_type == "code"]
    lines = code[0].splitlines()
    first_env = next(i for i, line in enumerate(lines) if "JAX_PLATFORMS" in line)
    imports = re.compile(r"^\s*(import|from)\s+(jax|flax|girl_jax)\b")
    assert not any(imports.match(line) for line in lines[:first_env]), "jax imported too early"
    assert any("pipeline.run" in s for s in code), "the notebook must use the pipeline API"


def _kernel_manager(tmp_path):
    """A kernel on this very interpreter (the venv), whatever kernelspecs the machine has."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    spec_dir = tmp_path / "kernels" / "girl-test"
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "girl test kernel",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    ksm = KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")])
    return KernelManager(kernel_name="girl-test", kernel_spec_manager=ksm)


def _texts(nb):
    """Every text a cell printed or displayed, in order."""
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            if o.output_type == "stream":
                out.append(o.text)
            elif o.output_type in ("execute_result", "display_data"):
                out += [v for k, v in o.data.items() if k.startswith("text/")]
    return "\n".join(out)


@pytest.mark.slow
def test_quickstart_notebook_runs_and_shows_the_results(tmp_path, monkeypatch):
    from nbclient import NotebookClient

    workdir = tmp_path / "work"
    monkeypatch.setenv("GIRL_QUICKSTART_WORKDIR", str(workdir))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    # The kernel sees what a user sees: one CPU device, not the tests' 8 simulated ones.
    monkeypatch.setenv("XLA_FLAGS", xla_flags(None))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = _read()
    client = NotebookClient(
        nb,
        km=_kernel_manager(tmp_path),
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": os.path.dirname(NOTEBOOK)}},
    )
    t0 = time.time()
    client.execute()  # raises CellExecutionError, with the cell and traceback, on any error
    print(f"quickstart notebook ran in {time.time() - t0:.0f}s")

    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    text = _texts(nb)
    assert "| feature set |" in text
    for row in ("| Base |", "| GIRL-SFT |", "| GIRL |"):
        assert row in text, f"results table row {row} missing from the notebook output"
    pngs = [
        o
        for c in nb.cells
        for o in c.get("outputs", [])
        if o.output_type == "display_data" and "image/png" in o.data
    ]
    assert len(pngs) >= 3, "expected the PPO, training-curve and ROC plots to be displayed"

    results = json.loads((workdir / "results.json").read_text())
    assert set(results["recommender"]) == {"Base", "GIRL-SFT", "GIRL"}
    for row in results["recommender"].values():
        assert set(row) == {"mlp"}
        assert 0.0 <= row["mlp"]["auc"] <= 1.0 and row["mlp"]["logloss"] > 0
    assert (workdir / "report.md").is_file()
    generated = __import__("pandas").read_parquet(workdir / "generated" / "generated.parquet")
    assert len(generated) == results["market"]["seekers"]

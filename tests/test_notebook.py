"""notebooks/audit_report.ipynb runs in a real Jupyter kernel against a real destination (with
an erasure and recorded reviews) and is committed without outputs."""

from __future__ import annotations

import json

import pytest

from tests.conftest import REPO, run_cli

NOTEBOOK = REPO / "notebooks" / "audit_report.ipynb"


def test_notebook_is_committed_without_outputs():
    nb = json.loads(NOTEBOOK.read_text())
    cells = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert cells and all(not c["outputs"] and c["execution_count"] is None for c in cells)


@pytest.mark.integration
def test_audit_notebook_runs_in_a_kernel_on_a_real_destination(tmp_path, photo_dir, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    from sanitizer import review, storage

    dst = tmp_path / "dst"
    assert (
        run_cli("run", str(photo_dir), str(dst), "--workers", "1").returncode == 1
    )  # one broken JPEG
    assert run_cli("verify", str(dst)).returncode == 0
    erased = run_cli("erase", str(dst), "--key", "nested/deeper/cat.jpg", "--reason", "test")
    assert erased.returncode == 0, erased.stderr
    verdicts = {"reviewer": "t", "verdicts": [{"key": "astronaut.jpg", "verdict": "fine"}]}
    review.import_verdicts(storage.location(str(dst)), json.dumps(verdicts), "v.json")

    nb = nbformat.read(NOTEBOOK, as_version=4)
    monkeypatch.setenv("SANITIZER_DST", str(dst))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {}}).execute()
    text, pictures = [], 0
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            assert o["output_type"] != "error", o
            text.append(o.get("text", "") + o.get("data", {}).get("text/plain", ""))
            pictures += "image/png" in o.get("data", {})
    out = "\n".join(text)
    assert "outputs without an ok row: none" in out and "ok rows without an output: none" in out
    assert "outputs erased on request since their ok row: ['nested/deeper/cat.jpg']" in out
    assert "'complete'" in out or "complete" in out
    assert pictures >= 4, out  # faces/scores/sizes, failures, runs over time, verify
    assert "fine" in out

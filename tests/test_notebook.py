"""notebooks/audit_report.ipynb runs against a real destination and is committed without outputs."""

from __future__ import annotations

import json

from tests.conftest import REPO, run_cli

NOTEBOOK = REPO / "notebooks" / "audit_report.ipynb"


def test_audit_notebook_runs_on_a_real_destination(tmp_path, photo_dir, monkeypatch, capsys):
    dst = tmp_path / "dst"
    assert (
        run_cli("run", str(photo_dir), str(dst), "--workers", "1").returncode == 1
    )  # one broken JPEG
    assert run_cli("verify", str(dst)).returncode == 0
    nb = json.loads(NOTEBOOK.read_text())
    cells = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert cells and all(not c["outputs"] and c["execution_count"] is None for c in cells)
    monkeypatch.setenv("SANITIZER_DST", str(dst))
    namespace: dict = {}
    for cell in cells:
        exec(compile("".join(cell["source"]), str(NOTEBOOK), "exec"), namespace)  # noqa: S102
    out = capsys.readouterr().out
    assert "outputs without an ok row: none" in out and "ok rows without an output: none" in out
    assert namespace["latest"]["status"] == "complete"
    assert set(namespace["latest_rows"].status) == {"ok", "failed", "skipped"}

"""The notebook in docs/examples runs top to bottom in a real Jupyter kernel, with the outputs it shows."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[2] / "docs" / "examples" / "quickstart.ipynb"


def outputs(cell: nbformat.NotebookNode) -> str:
    text = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream":
            text.append(out["text"])
        elif "data" in out:
            text.append(out["data"].get("text/plain", ""))
    return "".join(text)


def test_the_quickstart_notebook_runs(tmp_path: Path) -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    shown = [outputs(c) for c in code]
    assert shown[0].startswith("<cloudx.Cloudx embedded")
    assert "<Project fib ('Fibonacci')" in shown[1]
    assert "('README.md', 6, 2)" in shown[2] and "('fib.py'" in shown[2]
    assert shown[3].strip() == "55 exit 0 network none"
    assert shown[4] == "stdout line 1\nstdout line 2\nstdout line 3\n"
    assert shown[5].strip() == "succeeded 832040"
    assert shown[6].strip() == "NotFound not_found no file `missing.txt`"

"""``demos/tour.ipynb`` runs from top to bottom (nbclient; the ``python3`` kernel, which
jupyter_client starts with this Python):
no cell raises, and every cell that ends with a result shows it as the interactive page,
with the PNG grid beside it. The notebook is stored without outputs."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

TOUR = Path(__file__).resolve().parents[1] / "demos" / "tour.ipynb"


def test_tour_is_stored_without_outputs():
    nb = nbformat.read(TOUR, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_tour_runs_and_results_render(tmp_path):
    nb = nbformat.read(TOUR, as_version=4)
    client = NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError on the first cell that fails
    pages = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for out in cell.outputs:
            assert out.output_type != "error", out
            data = out.get("data", {})
            if "text/html" in data and 'class="mmcam"' in data["text/html"]:
                assert data["image/png"]  # the grid, for viewers that run no script
                pages.append(data["text/html"])
    # the scene's caption, the photo's caption, VQA, classes and the Hugging Face caption
    assert len(pages) == 5
    ids = [re.search(r'id="(mmcam-[0-9a-f]+)"', p).group(1) for p in pages]
    assert len(set(ids)) == 5
    vqa = pages[2]
    assert "rather than" in vqa  # the contrast map's item

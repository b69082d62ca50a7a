"""Every notebook in notebooks/ executes top to bottom without error."""

import glob
import os

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import REPO

NOTEBOOKS = sorted(glob.glob(os.path.join(REPO, "notebooks", "*.ipynb")))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs(path, tmp_path, cache_dir):
    nb = nbformat.read(path, as_version=4)
    os.environ["SALT_NOTEBOOK_WORKDIR"] = str(tmp_path / "run")
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": REPO}}).execute()

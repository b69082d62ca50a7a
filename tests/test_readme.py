"""The README's commands and the preset table (docs/models.md) stay true."""

import os
import subprocess
import sys

from conftest import REPO


def _readme(path: str = "README.md"):
    with open(os.path.join(REPO, path)) as fh:
        return fh.read()


def test_preset_table_is_the_codes_output():
    table = subprocess.run([sys.executable, "-m", "salt_jax.model.presets"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.strip()
    assert table in _readme("docs/models.md")


def test_ci_runs_the_readmes_install_and_test_commands():
    readme = _readme()
    with open(os.path.join(REPO, ".ci", "run")) as fh:
        ci = fh.read()
    assert 'pip install -e ".[test]" && python -m pytest -q tests' in readme
    assert 'pip install -e ".[test]"\npython -m pytest -q tests' in ci
    assert ("pip install -e . && python -m salt_jax.experiment --config=configs/experiments/demo.py "
            "--workdir=runs/demo") in readme
    assert os.path.exists(os.path.join(REPO, "configs", "experiments", "demo.py"))

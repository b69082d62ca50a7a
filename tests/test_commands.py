"""One command-line style: every console command setup.py installs runs its module's main(), --help exits 0
listing the command's flags, and a wrong flag is one `error:` line on stderr with exit status 2."""

import importlib.metadata
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import REPO

# console command -> (module, flags its --help must list)
COMMANDS = {
    "salt-train": ("salt_jax.main", ["--config", "--workdir"]),
    "salt-experiment": ("salt_jax.experiment", ["--config", "--workdir", "--engine", "--ray_address"]),
    "salt-prepare": ("salt_jax.prepare", ["--config", "--workers", "--process_index", "--process_count", "--engine",
                                          "--ray_address"]),
    "salt-teacher-cache": ("salt_jax.teacher_cache", ["--config"]),
    "salt-compile": ("salt_jax.compile", ["--config", "--topology", "--search", "--out"]),
    "salt-eval": ("salt_jax.eval", ["--workdir", "--step", "--tasks", "--num_fewshot", "--out"]),
    "salt-sample": ("salt_jax.sample", ["--workdir", "--prompt", "--max_tokens", "--temperature"]),
    "salt-hf": ("salt_jax.hf", ["--hf_dir", "--workdir", "--out", "--step", "--dtype"]),
    "salt-bench": ("salt_jax.bench", ["--config", "--teacher", "--repeats", "--loss_only", "--loss_bench",
                                      "--cached_bench", "--out", "--loop", "--rounds", "--loop_steps"]),
    "salt-presets": ("salt_jax.model.presets", []),
}


def _script(name: str) -> str:
    path = os.path.join(os.path.dirname(sys.executable), name)
    if not os.path.exists(path):
        pytest.skip(f"{name} is not installed next to {sys.executable}: run pip install -e . in this environment")
    return path


def _run_all(argvs: dict) -> dict:
    """Runs each argv (the commands import jax: 4 at a time keeps this to seconds on 2 cores)."""
    def run(argv):
        return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)
    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(argvs, pool.map(run, argvs.values())))


@pytest.fixture(scope="module")
def results():
    argvs = {}
    for name in COMMANDS:
        argvs[name, "help"] = [_script(name), "--help"]
        argvs[name, "bad"] = [_script(name), "--nosuchflag=1"]
    argvs["salt-hf", "no subcommand"] = [_script("salt-hf"), "--out=x"]
    argvs["salt-hf", "unknown subcommand"] = [_script("salt-hf"), "convert", "--out=x"]
    return _run_all(argvs)


def test_setup_installs_each_command_at_its_modules_main():
    from salt_jax.cli import COMMANDS as CLI_COMMANDS

    try:
        installed = {e.name: e.value for e in importlib.metadata.distribution("salt_jax").entry_points
                     if e.group == "console_scripts"}
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("salt_jax is not installed in this environment: run pip install -e .")
    want = {}
    for name, (module, _) in COMMANDS.items():
        package = os.path.isdir(os.path.join(REPO, *module.split(".")))
        want[name] = f"{module}.__main__:main" if package else f"{module}:main"
    assert installed == want
    assert CLI_COMMANDS == {name: module for name, (module, _) in COMMANDS.items()}  # the usage lines' table


@pytest.mark.parametrize("name", list(COMMANDS))
def test_help_exits_0_and_lists_the_flags(name, results):
    out = results[name, "help"]
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    module = COMMANDS[name][0]
    assert lines[0].startswith(f"usage: {name}") and f"python -m {module}" in lines[0], lines[0]
    for flag in COMMANDS[name][1]:
        assert f"  {flag}: " in out.stdout, f"{name} --help does not list {flag}"
    if name == "salt-hf":
        assert "  import " in out.stdout and "  export " in out.stdout  # both subcommands
    if name == "salt-presets":
        assert "flags: none" in out.stdout


@pytest.mark.parametrize("name", list(COMMANDS))
def test_a_wrong_flag_is_one_error_line_and_exit_2(name, results):
    out = results[name, "bad"]
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "nosuchflag" in lines[0], out.stderr[-2000:]


def test_hf_needs_a_known_subcommand(results):
    for case, needle in (("no subcommand", "give a subcommand: import or export"),
                         ("unknown subcommand", "unknown subcommand 'convert': use import or export")):
        out = results["salt-hf", case]
        lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
        assert out.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"error: {needle}"), out.stderr

"""Every row of docs/errors.md, through the command line: exit status 2, no traceback, one line naming it."""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from conftest import ERRORS_TINY as TINY, REPO



def _rows() -> list[dict]:
    rows = []
    with open(os.path.join(REPO, "docs", "errors.md")) as fh:
        for line in fh:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) == 5 and cells[0] not in ("id", "---") and not cells[0].startswith("-"):
                code = re.findall(r"`([^`]*)`", cells[2])
                rows.append({"id": cells[0], "area": cells[1], "args": shlex.split(code[-1]) if code else [],
                             "setup": "*setup" in cells[2], "offline": "*no network" in cells[2],
                             "needle": re.findall(r"`([^`]*)`", cells[3])[0]})
    return rows


ROWS = _rows()


# Rows marked *no network*: every request fails at once, as on a machine without network (the proxy's name
# never resolves; the Hub is off; a placeholder Google token keeps TensorFlow's GCS client from probing for
# credentials; no retries).
DEAD_PROXY = "http://proxy.invalid:9"
NO_NETWORK = {"https_proxy": DEAD_PROXY, "HTTPS_PROXY": DEAD_PROXY, "http_proxy": DEAD_PROXY, "HTTP_PROXY": DEAD_PROXY,
              "HF_HUB_OFFLINE": "1", "GOOGLE_AUTH_TOKEN_FOR_TESTING": "placeholder",
              "GCS_RETRY_CONFIG_MAX_RETRIES": "0"}


def _run(module, args, cache_dir, offline_home=None):
    env = dict(os.environ, SALT_JAX_CACHE=cache_dir)
    if offline_home:  # (and an empty Hugging Face cache)
        env = {k: v for k, v in env.items() if k.lower() != "no_proxy"}
        env.update(NO_NETWORK, HF_HOME=offline_home, HF_DATASETS_CACHE=os.path.join(offline_home, "datasets"))
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)


def _zst_truncated(data) -> None:
    """a.jsonl.zst whole, b.jsonl.zst cut at two thirds of its bytes."""
    import zstandard

    lines = "".join(json.dumps({"text": f"record {i} " * 20}) + "\n" for i in range(300)).encode()
    for name, keep in (("a.jsonl.zst", 1.0), ("b.jsonl.zst", 2 / 3)):
        packed = zstandard.ZstdCompressor().compress(lines)
        (data / name).write_bytes(packed[:int(len(packed) * keep)])


def _parquet_body(data) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["some text"] * 10, "id": list(range(10))}), str(data / "a.parquet"))


# Rows whose setup writes data files into DATA (a fresh directory) first.
DATA_SETUPS = {"zst-truncated": _zst_truncated, "parquet-column": _parquet_body}


def test_the_catalogue_is_read():
    assert len(ROWS) >= 20 and len({r["id"] for r in ROWS}) == len(ROWS)
    assert {r["area"] for r in ROWS} >= {"config", "mesh", "data", "teacher", "checkpoint", "hf"}


@pytest.mark.parametrize("row", ROWS, ids=[r["id"] for r in ROWS])
def test_error_row(row, tmp_path, cache_dir, request):
    workdir = str(tmp_path / "run")
    args = [a.replace("OUT", str(tmp_path / "out")) for a in row["args"]]
    offline = str(tmp_path / "hf_home") if row["offline"] else None
    if row["area"] == "hf":
        out = _run("salt_jax.hf", args, cache_dir)
    elif row["area"] == "eval":
        if "{finished}" in " ".join(args):
            args = [a.replace("{finished}", request.getfixturevalue("finished_run")) for a in args]
        out = _run("salt_jax.eval", args, cache_dir, offline)
    else:
        if "{teacher}" in " ".join(args):
            teacher = request.getfixturevalue("teacher_dir")
            args = [a.replace("{teacher}", teacher) for a in args]
        base = TINY + [f"--workdir={workdir}"]
        if row["id"] == "no-workdir":
            base = TINY
        elif row["id"] == "teacher-untrained":
            os.makedirs(tmp_path / "empty")
            args = ["--config.salt.method=salt", f"--config.salt.teacher={tmp_path / 'empty'}"]
        elif row["id"] in ("corrupt", "model-changed", "config-drift"):
            shutil.copytree(request.getfixturevalue("finished_run"), workdir)
            if row["id"] == "corrupt":
                for root, _, files in os.walk(os.path.join(workdir, "checkpoints", "6", "state")):
                    for f in files:
                        with open(os.path.join(root, f), "wb") as fh:
                            fh.write(b"garbage")
                args = []
        elif row["id"] in DATA_SETUPS:
            os.makedirs(tmp_path / "data")
            DATA_SETUPS[row["id"]](tmp_path / "data")
            args = [a.replace("DATA", str(tmp_path / "data")) for a in args]
        elif row["id"] == "workdir-file":
            open(workdir, "w").close()
        elif row["id"] == "workdir-entry":
            os.makedirs(os.path.join(workdir, "metrics.jsonl"))
        elif row["id"] == "teacher-inside":
            args = ["--config.salt.method=salt", f"--config.salt.teacher={workdir}/checkpoints"]
        elif row["id"] == "workdir-locked":
            import fcntl
            os.makedirs(workdir)
            holder = open(os.path.join(workdir, ".lock"), "w")  # as a running salt_jax process holds it
            fcntl.flock(holder, fcntl.LOCK_EX)
            holder.write("salt_jax pid 4242 on testhost since 2026-12-01 10:00:00")
            holder.flush()
            request.addfinalizer(holder.close)
        out = _run("salt_jax.main", base + args, cache_dir, offline)
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    assert "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and row["needle"] in last, last
    if row["offline"]:  # nothing before it either (TensorFlow's start-up lines, lm-eval's)
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr[-2000:]
    if row["id"] == "corrupt":  # named, and left where it was
        assert "checkpoints/6" in last and os.path.isdir(os.path.join(workdir, "checkpoints", "6"))


def test_hf_export_without_the_hf_extra_is_one_line(tmp_path, teacher_dir, cache_dir):
    script = ("import sys\n"
              "sys.modules['safetensors'] = sys.modules['safetensors.numpy'] = None  # as if not installed\n"
              "from salt_jax.hf.__main__ import main\n"
              f"main(['export', '--workdir={teacher_dir}', '--out={tmp_path / 'hf'}'])\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, SALT_JAX_CACHE=cache_dir))
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert out.stderr.strip().splitlines()[-1] == (
        'error: safetensors is not installed: Hugging Face interop needs the [hf] extra; run pip install -e ".[hf]" '
        "(or pip install salt_jax[hf])")

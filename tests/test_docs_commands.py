"""The docs are executable: every shell command in a fenced block of README.md and docs/*.md runs as printed
(with size overrides appended: a tiny model, a few steps, a sandbox for runs/), in the docs' order, or is
listed below with the reason it cannot run here and what runs instead (a --dry-run, a check of the
script); and every example command a module docstring (a --help text) prints names a real module, real
config files and real flags. A command added to the docs that is neither run nor listed fails the suite.
"""

import functools
import glob
import os
import re
import shlex
import subprocess
import sys

import pytest

from conftest import REPO

DOCS = ["README.md", *sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "docs", "*.md")))]
SHELL_FENCES = ("bash", "sh", "shell")

# Size overrides for a run config (configs/demo.py, configs/test_tiny.py): a 1-layer model, 4 steps.
TINY = ("--config.train.steps=4 --config.train.heldout_every=2 --config.train.checkpoint_every=2 "
        "--config.train.log_every=2 --config.optim.warmup_steps=1 --config.data.max_files=40 "
        "--config.data.batch_size=8 --config.data.seq_len=32 --config.data.heldout_batches=1 "
        "--config.model.n_layers=1 --config.model.d_model=32 --config.model.mlp_dim=64 --config.model.n_heads=2 "
        "--config.model.n_kv_heads=1 --config.model.head_dim=16")
EXPERIMENT = " ".join([*(f"--config.{run}.{o[len('--config.'):]}" for run in ("teacher", "student")
                         for o in TINY.split()), "--config.student.eval.limit=2"])
# Placeholders the docs use, and what stands for them in the sandbox.
PLACEHOLDERS = {"=RUN ": "=runs/demo/salt-s0 ", " OUTDIR": " bench-out", "$P": "0", " /tmp/": " tmp/", "=/tmp/": "=tmp/"}


def doc_commands() -> list[tuple[str, int, str]]:
    """(doc, line, command) for every command in a fenced shell block: continuation lines joined, comments
    and the comment after a command dropped."""
    found = []
    for doc in DOCS:
        text = open(os.path.join(REPO, doc), encoding="utf-8").read()
        for m in re.finditer(r"^ *```(\w*)\n(.*?)^ *```", text, re.S | re.M):
            if m.group(1) not in SHELL_FENCES:
                continue
            first = text[:m.start(2)].count("\n") + 1
            found += [(doc, first + i, cmd) for i, cmd in _logical_lines(m.group(2))]
    return found


def _logical_lines(block: str) -> list[tuple[int, str]]:
    out, current, start = [], "", 0
    for i, raw in enumerate(block.split("\n")):
        if not current:
            start = i
        current += raw.strip()[:-1] + " " if raw.endswith("\\") else raw.strip()
        if raw.endswith("\\"):
            continue
        cmd = re.sub(r"\s+#\s.*$", "", current).strip()
        current = ""
        if cmd and not cmd.startswith("#"):
            out.append((start, re.sub(r"\s+", " ", cmd)))
    return out


def test_commands_are_in_fenced_shell_blocks():
    """An indented code block with a command would not be collected (and so not run): use ```bash."""
    for doc in DOCS:
        text = open(os.path.join(REPO, doc), encoding="utf-8").read()
        outside = re.sub(r"^ *```.*?^ *```", "", text, flags=re.S | re.M)
        for line in outside.splitlines():
            assert not re.match(r"^ {4,}(python3? |bash |pip |sbatch |salt-|HOSTS=)", line), (
                f"{doc}: {line.strip()!r} is in an indented block; put commands in ```bash blocks")


# ------------------------------------------------------------------------------------------------ the rules
# Each command matches the first rule whose pattern it contains: a way to run it, or the reason it cannot
# run here and what is checked instead.


def _extras() -> set[str]:
    text = open(os.path.join(REPO, "setup.py")).read()
    block = text[text.index("extras_require"):]
    return set(re.findall(r'^\s+"([a-z]+)": ', block, re.M))


def _install(cmd, box):
    """An install line: its extra exists in setup.py; the main job after it (README command 1) runs tiny."""
    for extra in re.findall(r'pip install -e "\.\[(\w+)\]"', cmd):
        assert extra in _extras(), f"{cmd}: setup.py has no extra {extra!r}"
    if "pytest" in cmd:
        return None  # the suite itself: .ci/run runs it verbatim (tests/test_readme.py checks the text)
    tail = cmd.split("&&")[-1].strip()
    return _run(tail, box) if tail.startswith("python") else None


def _not_run(reason, instead=None):
    def handle(cmd, box):
        assert reason
        return instead(cmd, box) if instead else None
    return handle


def _dry(script):
    """A launch script's --dry-run (which prints the commands it would run) in place of the real launch."""
    def handle(cmd, box):
        for part in cmd.split("&&"):
            env_part, _, rest = part.strip().partition(f"bash scripts/{script}")
            dry = f"{env_part}bash scripts/{script} --dry-run{rest}"
            out = _shell(dry, box, env={"TPU_NAME": "docs", "ZONE": "z", "PROJECT": "p", "BUCKET": "b"})
            assert out.returncode == 0, f"{dry}\n{out.stderr[-1500:]}"
            assert out.stdout.strip(), dry
    return handle


def _slurm(cmd, box):
    assert subprocess.run(["bash", "-n", os.path.join(REPO, "scripts", "slurm.sbatch")]).returncode == 0
    assert " scripts/slurm.sbatch configs/" in cmd


def _step_checked(cmd, box):
    """`--step=N` must name a checkpoint the full-size run keeps; the tiny run then evaluates its step 2."""
    step = int(re.search(r"--step=(\d+)", cmd).group(1))
    from salt_jax.recipes import demo_run

    c = demo_run("salt")
    saved = [s for s in range(c.train.checkpoint_every, c.train.steps + 1, c.train.checkpoint_every)]
    assert step in saved[-c.train.keep_checkpoints:], (
        f"{cmd}: the demo keeps checkpoints {saved[-c.train.keep_checkpoints:]}, not {step}")
    return _run(re.sub(r"--step=\d+", "--step=2", cmd), box)


def _compile_small(cmd, box):
    """A paper-scale compile takes 2-4 minutes per program on 2 cores (docs/tpu.md's table): the printed
    config and topology are checked to load and parse, then the same command runs on configs/test_tiny.py
    for a v5e:2x2 slice."""
    from salt_jax.aot import topology

    config = re.search(r"--config=(\S+?)(?::(\S+))?(?=\s|$)", cmd)
    assert os.path.exists(os.path.join(REPO, config.group(1))), cmd
    topology.parse(re.search(r"--topology=(\S+)", cmd).group(1))
    small = cmd.replace(config.group(0), f"--config=configs/test_tiny.py:{config.group(2) or 'baseline'}")
    small = re.sub(r"--topology=\S+", "--topology=v5e:2x2", small)
    return _run(f"{small} --config.salt.teacher_preset=test-tiny-teacher --remats=full --out=compile.json", box)


def _bench_suite(cmd, box):
    """Every case of scripts/bench.sh (its --dry-run lists the CPU and the accelerator cases) names a
    benchmark config that exists; the first CPU case runs at a tiny size."""
    for key, value in PLACEHOLDERS.items():
        cmd = cmd.replace(key, value)
    out = _shell(cmd.replace("bench.sh", "bench.sh --dry-run"), box)
    assert out.returncode == 0, out.stderr[-1500:]
    cases = out.stdout.strip().splitlines()
    assert len(cases) >= 10 and all(c.startswith("python -m salt_jax.bench --config=configs/") for c in cases), cases
    for case in cases:
        assert os.path.exists(os.path.join(REPO, re.search(r"--config=([\w/]+\.py)", case).group(1))), case
    os.makedirs(os.path.join(box, os.path.dirname(re.search(r"--out=(\S+)", cases[0]).group(1))), exist_ok=True)
    return _run(cases[0], box)


def _flags_exist(cmd, box):
    """A command for a Ray cluster or a TPU VM (possibly inside `gcloud ... --command="..."`): each flag it gives
    `ray start` or `python -m salt_jax...` is one that command has (`ray start --help`, the module's --help)."""
    inner = re.search(r'--command="(.*)"', cmd)
    cmd = inner.group(1) if inner else cmd
    for part in cmd.split("&&"):
        part = part.strip()
        if re.search(r"(^|/)ray start ", part):
            out = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ray"), "start", "--help"],
                                 capture_output=True, text=True, timeout=120)
            assert out.returncode == 0, out.stderr[-1500:]
            text = out.stdout
        elif re.search(r"python3? -m (salt_jax[\w.]*)", part):
            text = _help(re.search(r"python3? -m (salt_jax[\w.]*)", part).group(1))
        else:
            continue
        for flag in re.findall(r"(?<![\w-])(--[a-z][\w-]*)(?==|\s|$)", part):
            assert flag in text, f"{part}: {flag} is not a flag of that command"


RULES = [
    ("gcloud compute tpus", _not_run("no Cloud TPU here: the flags of the commands it runs on the TPU VMs are "
                                     "checked instead", instead=_flags_exist)),
    ("ray start ", _not_run("a Ray cluster's machines: `ray start --help` has the flags; tests/test_ray.py runs "
                            "the engine on a local Ray", instead=_flags_exist)),
    ("--ray_address=", _not_run("no Ray cluster here: the same command on a local Ray is the one before it",
                                instead=_flags_exist)),
    ("pip install", _install),
    ("gs://", _not_run("no bucket or credentials here: the same multi-machine build through a fake gs:// "
                       "bucket is tests/test_cloud_store.py")),
    ("--tasks=paper_suite", _not_run("lm-eval downloads these tasks from the Hugging Face hub: no network "
                                     "here; the offline tasks run the same code path")),
    ("sbatch ", _not_run("no SLURM here: the script is checked with bash -n", instead=_slurm)),
    ("scripts/multinode.sh", _not_run("no GPU hosts here", instead=_dry("multinode.sh"))),
    ("scripts/tpu_pod.sh", _not_run("no Cloud TPU here", instead=_dry("tpu_pod.sh"))),
    ("--step=", _step_checked),
    ("--horizons=", lambda cmd, box: _run(cmd + " --dry_run", box)),  # (hours; tests/test_experiment.py has
    #                                                                     the study's configs and table)
    ("scripts/bench.sh", _not_run("minutes on 2 cores, and its accelerator half needs a GPU",
                                  instead=_bench_suite)),
    ("python -m salt_jax.compile", _not_run("paper-scale compiles take minutes each", instead=_compile_small)),
    ("python", lambda cmd, box: _run(cmd, box)),
    ("salt-", lambda cmd, box: _run(cmd, box)),  # the console commands setup.py installs
]


def _overrides(cmd: str) -> str:
    """The size overrides a command gets appended."""
    from salt_jax.cli import COMMANDS

    module = re.search(r"python3? -m ([\w.]+)|^(salt-[\w-]+)", cmd)
    module = (module.group(1) or COMMANDS.get(module.group(2), "")) if module else ""
    if module == "salt_jax.experiment":
        return EXPERIMENT + (" --dry_run" if "experiments/demo.py" not in cmd else "")
    if module in ("salt_jax.main", "salt_jax.prepare", "salt_jax.teacher_cache"):
        return TINY + (" --workers=0" if module == "salt_jax.prepare" and "--engine=ray" not in cmd else "")
    if module == "salt_jax.eval":
        return "--limit=2"
    if module == "salt_jax.sample":
        return "--max_tokens=4"
    if module == "salt_jax.bench":
        return "--repeats=1 --config.data.batch_size=8 --config.data.seq_len=16"  # (8: the suite's devices)
    if "bench_sparse.py" in cmd:  # (the salt_jax.bench sizes, one run of each implementation)
        return ("--rounds=1 --repeats=1 --config.data.batch_size=8 --config.data.seq_len=16 "
                "--config.model.vocab_size=2048")
    if "bench_store.py" in cmd:
        return "--sizes_mb=1 --workers=0" + (" --mixed_mb=4" if "--mixed_mb" in cmd else "")
    return ""


def _shell(cmd: str, box: str, env: dict | None = None):
    """`cmd` in bash in the sandbox, with this interpreter's python and console commands first on PATH."""
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    return subprocess.run(["bash", "-c", cmd], cwd=box, capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, PATH=path, **(env or {})))


def _run(cmd: str, box: str):
    for key, value in PLACEHOLDERS.items():
        cmd = cmd.replace(key, value)
    cmd = cmd.replace("/models/", f"{box}/models/")
    cmd = cmd.replace("'/data/", f"'{box}/data/").replace("=/data/", f"={box}/data/")  # (a mixture's =PATH)
    full = f"{cmd} {_overrides(cmd)}".strip()
    out = _shell(full, box)
    assert out.returncode == 0, f"{full}\nexit {out.returncode}\n{out.stdout[-1500:]}\n{out.stderr[-3000:]}"
    return out


# ---------------------------------------------------------------------------------------------- the sandbox


@pytest.fixture(scope="module")
def box(tmp_path_factory, cache_dir):
    """A directory laid out as a checkout (configs/, scripts/ linked) where the docs' runs/ go, with the
    inputs the docs assume: a small Hugging Face model at models/SmolLM2-135M, and corpora under data/
    written by their own libraries (README "Training on your own large corpus")."""
    root = tmp_path_factory.mktemp("docs")
    for name in ("configs", "scripts"):
        os.symlink(os.path.join(REPO, name), root / name)
    _corpora(root / "data")
    _tiny_hf_model(str(root / "models" / "SmolLM2-135M"))
    _my_task(root)
    return str(root)


def _corpora(data) -> None:
    """The same records (2,000-character pieces of four standard-library files) as the corpora the README
    names: JSONL at pile/, the Pile's zstd-compressed JSON lines (several frames) at pile/train/,
    FineWeb-Edu's Parquet (several row groups) at fineweb-edu/sample/10BT/, Dolma-style gzip-compressed
    JSON lines at dolma/, a Hugging Face save_to_disk directory (300-character records) at my-corpus/, and
    code at code/ (its text in the field "content") for the mixture example."""
    import gzip
    import json

    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    stdlib = os.path.dirname(os.__file__)
    files = []
    for name in ("textwrap.py", "glob.py", "shlex.py", "fnmatch.py"):
        text = open(os.path.join(stdlib, name), encoding="utf-8").read()
        files.append([text[chunk:chunk + 2000] for chunk in range(0, len(text), 2000)])
    lines = lambda texts: "".join(json.dumps({"text": t, "meta": {"pile_set_name": "stdlib"}}) + "\n"  # noqa: E731
                                  for t in texts).encode()
    for sub in ("pile/train", "fineweb-edu/sample/10BT", "dolma"):
        os.makedirs(data / sub)
    for i, texts in enumerate(files):
        (data / "pile" / f"{i:02d}.jsonl").write_bytes(lines(texts))
        with open(data / "pile" / "train" / f"{i:02d}.jsonl.zst", "wb") as fh:
            for half in (texts[:len(texts) // 2], texts[len(texts) // 2:]):
                fh.write(zstandard.ZstdCompressor().compress(lines(half)))
        pq.write_table(pa.table({"text": texts, "id": [f"{i}-{j}" for j in range(len(texts))]}),
                       str(data / "fineweb-edu" / "sample" / "10BT" / f"{i:03d}_00000.parquet"), row_group_size=4)
        with gzip.open(data / "dolma" / f"v1-{i:04d}.json.gz", "wb") as fh:
            fh.write(lines(texts))
    datasets.disable_progress_bars()
    short = [t[i:i + 300] for texts in files for t in texts for i in range(0, len(t), 300)]  # (enough to hold out)
    datasets.Dataset.from_dict({"text": short}).save_to_disk(str(data / "my-corpus"))
    os.makedirs(data / "code")  # the mixture example's second corpus, its text in the field "content"
    for name in ("csv.py", "heapq.py", "calendar.py"):
        text = open(os.path.join(stdlib, name), encoding="utf-8").read()
        (data / "code" / f"{name}.jsonl").write_text(
            "".join(json.dumps({"content": text[chunk:chunk + 500]}) + "\n" for chunk in range(0, len(text), 500)))


def _my_task(root) -> None:
    """docs/evaluation.md's own-task YAML, written as printed, over four documents of stdlib_next_line."""
    text = open(os.path.join(REPO, "docs", "evaluation.md"), encoding="utf-8").read()
    yaml = re.search(r"^```yaml\n# my_tasks/my_task.yaml\n(.*?)^```", text, re.S | re.M).group(1)
    (root / "my_tasks").mkdir()
    (root / "my_tasks" / "my_task.yaml").write_text(yaml)
    from salt_jax.eval.tasks.utils import read_docs

    import json

    lines = [json.dumps({k: d[k] for k in ("context", "choices", "gold")}) for d in read_docs("next_line", "test")[:4]]
    (root / "my_tasks" / "my_task.jsonl").write_text("\n".join(lines) + "\n")


def _tiny_hf_model(directory: str) -> None:
    """A 1-layer Llama with its own byte-level BPE tokenizer, saved as save_pretrained writes a model."""
    import transformers
    from test_hf import _randomize, _train_tokenizer

    fast = _train_tokenizer(directory)
    cfg = transformers.LlamaConfig(vocab_size=288, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                                   tie_word_embeddings=True, eos_token_id=fast.eos_token_id, bos_token_id=None)
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    _randomize(model, seed=3).save_pretrained(directory)


# --------------------------------------------------------------------------------------------- the commands

COMMANDS = doc_commands()


def _unique(commands):
    seen, out = set(), []
    for doc, line, cmd in commands:
        if cmd not in seen:
            seen.add(cmd)
            out.append((doc, line, cmd))
    return out


@pytest.mark.parametrize("doc,line,cmd", _unique(COMMANDS), ids=[f"{d}:{n}" for d, n, _ in _unique(COMMANDS)])
def test_doc_command_runs_as_printed(doc, line, cmd, box):
    for pattern, handle in RULES:
        if pattern in cmd:
            handle(cmd, box)
            return
    pytest.fail(f"{doc}:{line}: {cmd!r} is neither run nor listed with a reason in tests/test_docs_commands.py")


def test_the_docs_show_the_commands_this_test_knows():
    """The collection itself: the walkthrough and the main job are among the commands found."""
    cmds = [c for _, _, c in COMMANDS]
    assert "python -m salt_jax.main --config=configs/demo.py:teacher --workdir=runs/demo-teacher" in cmds
    assert any(c.endswith("python -m salt_jax.experiment --config=configs/experiments/demo.py --workdir=runs/demo")
               for c in cmds)
    assert len(cmds) >= 30


# ------------------------------------------------------------------------------- names in docs and docstrings

ENTRY_MODULES = ["salt_jax.main", "salt_jax.experiment", "salt_jax.prepare", "salt_jax.compile",
                 "salt_jax.teacher_cache", "salt_jax.eval", "salt_jax.sample", "salt_jax.hf", "salt_jax.bench",
                 "salt_jax.model.presets"]


def _module_file(name: str) -> str | None:
    base = os.path.join(REPO, *name.split("."))
    for path in (base + ".py", os.path.join(base, "__main__.py"), os.path.join(base, "__init__.py")):
        if os.path.exists(path):
            return path
    return None


def _texts() -> dict[str, str]:
    """Every doc, and every module under salt_jax/ and configs/ (their docstrings and comments)."""
    files = DOCS + [os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "salt_jax", "**", "*.py"),
                                                                 recursive=True)]
    files += [os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "configs", "**", "*.py"),
                                                          recursive=True)]
    files += [os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "scripts", "*"))]
    return {f: open(os.path.join(REPO, f), encoding="utf-8").read() for f in files}


def test_every_module_and_config_named_exists():
    missing = []
    for where, text in _texts().items():
        for name in set(re.findall(r"python3? -m (salt_jax(?:\.\w+)*)", text)):
            if _module_file(name) is None:
                missing.append(f"{where}: python -m {name}")
        for path in set(re.findall(r"\b(configs/[\w/]+\.py)\b", text)):
            if "no_such" not in path and not os.path.exists(os.path.join(REPO, path)):  # (errors.md's own)
                missing.append(f"{where}: {path}")
    assert not missing, "named but missing: " + "; ".join(sorted(missing))


@functools.lru_cache(maxsize=None)
def _help(module: str) -> str:
    out = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, f"python -m {module} --help: exit {out.returncode}\n{out.stderr[-1500:]}"
    return out.stdout


def _docstring_examples() -> list[tuple[str, str]]:
    """(module, command) for each `python -m salt_jax...` line a module's docstring prints."""
    import ast

    found = []
    for module in ENTRY_MODULES:
        doc = ast.get_docstring(ast.parse(open(_module_file(module), encoding="utf-8").read())) or ""
        for _, cmd in _logical_lines(doc):
            if cmd.startswith("python -m salt_jax"):
                found.append((module, cmd))
    return found


def test_docstring_examples_use_real_flags():
    """Each flag an example in a --help text uses is a flag of that command (or a --config.* field)."""
    from salt_jax.config import base_config

    fields = set()

    def walk(d, prefix=""):
        for k, v in d.items():
            walk(v, f"{prefix}{k}.") if isinstance(v, dict) else fields.add(prefix + k)

    walk(base_config().to_dict())
    examples = _docstring_examples()
    assert len(examples) >= len(ENTRY_MODULES) - 1
    bad = []
    for module, cmd in examples:
        named = re.match(r"python -m ([\w.]+)", cmd).group(1)
        text = _help(named)
        for flag in re.findall(r"(?<![\w-])--(?:no)?([a-z][\w.-]*)", cmd):
            if flag.startswith("config."):
                name = flag[len("config."):]  # a field, or a section as "data." ([--config.data.*])
                if not (name in fields or name.endswith(".") and any(f.startswith(name) for f in fields)):
                    bad.append(f"{module}: {cmd}: --{flag}")
            elif f"--{flag}" not in text and f"--[no]{flag}" not in text:
                bad.append(f"{module}: {cmd}: --{flag}")
    assert not bad, "flags no command defines: " + "; ".join(bad)

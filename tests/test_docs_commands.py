"""The docs are executable, with no way around it.

Collected: every fenced block of README.md and docs/**/*.md (``` or ~~~ fences of any length, any info
string: none, text, console, `bash title=...`) and every indented command outside a fence (a line indented
4 spaces or more that starts like a command). A fenced block's lines are commands when its language is a
shell's (bash, sh, shell, zsh, console) or when they start like a command (COMMAND_START: python, pip,
bash, salt-..., a `$ ` prompt); the other lines (output, tables, YAML, Python) are not, and a line among
them that looks like a command anyway (LOOKS_LIKE: `python -m salt_jax`, a salt- command, scripts/...)
fails the suite instead of being skipped.

Each command matches one row of RULES, the one table of what happens to it: run as printed in the docs'
order, with that row's declared size overrides and sandbox paths appended or substituted; or, listed by
its exact text, the reason it cannot run here and the check that runs instead (its flags through the
command's own parser, config included, tests/flags_parse.py; its dry run; the same command at a smaller
size). A command that no row matches fails, and so does a row that matches no command (stale). Every
example command a module docstring (a --help text) prints names a real module, real configs and flags.
"""

import dataclasses
import functools
import glob
import os
import re
import shlex
import subprocess
import sys
from typing import Callable

import pytest

from conftest import REPO

# ------------------------------------------------------------------------------------------ the collection

SHELLS = {"bash", "sh", "shell", "zsh", "console", "shell-session"}
INDENTED = "(indented)"  # the "info string" of an indented command outside a fence
# How a command starts: optional VAR=value assignments, then a program this project's docs run.
COMMAND_START = re.compile(
    r"^([A-Z_][A-Z0-9_]*=\S*\s+)*(python3?|pip3?|bash|sh|salt-[\w-]+|sbatch|srun|gcloud|ray|hf|huggingface-cli|"
    r"wandb|source|cd|export|git|pytest|jupyter|tensorboard|docker|curl|wget|uv|conda|\.venv/bin/\S+|scripts/\S+|"
    r"\./\S+)(\s|$)")
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")


def _looks_like_command():
    from salt_jax.cli import COMMANDS

    names = "|".join(re.escape(c) for c in COMMANDS)
    return re.compile(rf"python3? -m salt_jax|(?<![\w-])({names})(?![\w-])|\bscripts/[\w.]+\.(sh|py|sbatch)\b|"
                      r"\bpip3? install\b")


LOOKS_LIKE = _looks_like_command()


@dataclasses.dataclass(frozen=True)
class Command:
    doc: str  # relative to the docs' root
    line: int  # of its first line
    fence: str  # how it was written: "```bash", "~~~", "``` (none)", "(indented)", ...
    text: str  # continuation lines joined, the comment after it dropped, `$ ` prompt dropped


def markdown_files(root: str) -> list[str]:
    """README.md and every .md under docs/, recursively (relative to `root`)."""
    found = ["README.md"] if os.path.exists(os.path.join(root, "README.md")) else []
    return found + sorted(os.path.relpath(p, root)
                          for p in glob.glob(os.path.join(root, "docs", "**", "*.md"), recursive=True))


def _blocks(root: str, doc: str) -> tuple[list[tuple[int, str, str, list[str]]], list[str]]:
    """((first line, fence, info string, lines) of every fenced block and indented command, problems)."""
    text = open(os.path.join(root, doc), encoding="utf-8").read().split("\n")
    blocks, problems, i = [], [], 0
    while i < len(text):
        m = FENCE.match(text[i])
        if m and not (m.group("fence")[0] == "`" and "`" in m.group("info")):  # (``` with a backtick: inline)
            fence, indent = m.group("fence"), len(m.group("indent").expandtabs())
            close = re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
            j = i + 1
            while j < len(text) and not close.match(text[j]):
                j += 1
            if j == len(text):
                problems.append(f"{doc}:{i + 1}: the fence {fence} is never closed")
            body = [ln[indent:] if not ln[:indent].strip() else ln.lstrip() for ln in text[i + 1:j]]
            blocks.append((i + 2, fence, m.group("info").strip(), body))
            i = j + 1
            continue
        indented = re.match(r"^( {4,}|\t)(\S.*)$", text[i])
        if indented and COMMAND_START.match(indented.group(2)):
            body, j = [indented.group(2)], i
            while body[-1].endswith("\\") and j + 1 < len(text):
                j += 1
                body.append(text[j].strip())
            blocks.append((i + 1, "", INDENTED, body))
            i = j + 1
            continue
        i += 1
    return blocks, problems


def logical_lines(lines: list[str]) -> list[tuple[int, str]]:
    """(index of its first line, text) of each line, continuation lines (ending in \\) joined."""
    out, current, start = [], [], 0
    for i, raw in enumerate(lines):
        if not current:
            start = i
        current.append(raw.strip()[:-1].strip() if raw.rstrip().endswith("\\") else raw.strip())
        if raw.rstrip().endswith("\\") and i + 1 < len(lines):
            continue
        joined = re.sub(r"\s+", " ", " ".join(current)).strip()
        current = []
        if joined:
            out.append((start, joined))
    return out


def collect(root: str = REPO) -> tuple[list[Command], list[str], list[tuple[str, int, str]]]:
    """(commands, problems, blocks that are not commands as (doc, line, fence)) of the docs under `root`."""
    commands, problems, others = [], [], []
    for doc in markdown_files(root):
        blocks, found = _blocks(root, doc)
        problems += found
        for first, fence, info, lines in blocks:
            lang = (info.split() or [""])[0].strip("{}.").lower()
            shell = lang in SHELLS or info == INDENTED
            where = f"{fence}{info}" if fence else INDENTED
            logical = logical_lines(lines)
            prompted = any(t.startswith("$ ") for _, t in logical)  # a transcript: `$ ` lines, then output
            n = len(commands)
            for i, line in logical:
                bare = re.sub(r"\s+#\s.*$", "", line).strip()
                if prompted:
                    if line.startswith("$ "):
                        commands.append(Command(doc, first + i, where, re.sub(r"\s+#\s.*$", "", line[2:]).strip()))
                    continue  # (output)
                if line.startswith("#") and shell:
                    continue  # a comment
                if shell or COMMAND_START.match(bare):
                    commands.append(Command(doc, first + i, where, bare))
                elif LOOKS_LIKE.search(line):
                    problems.append(f"{doc}:{first + i}: {line!r} (in a {where} block) looks like a command but does "
                                    "not start like one, so it is neither run nor checked: write it as a command "
                                    "line, or reword it")
            if len(commands) == n:
                others.append((doc, first, where))
    return commands, problems, others


# ------------------------------------------------------------------------------------------------ the rules

# Size overrides for a run config (configs/demo.py, configs/test_tiny.py): a 1-layer model, 4 steps.
TINY = ("--config.train.steps=4 --config.train.heldout_every=2 --config.train.checkpoint_every=2 "
        "--config.train.log_every=2 --config.optim.warmup_steps=1 --config.data.max_files=40 "
        "--config.data.batch_size=8 --config.data.seq_len=32 --config.data.heldout_batches=1 "
        "--config.model.n_layers=1 --config.model.d_model=32 --config.model.mlp_dim=64 --config.model.n_heads=2 "
        "--config.model.n_kv_heads=1 --config.model.head_dim=16")
# The same for an experiment's teacher and students, and 2 documents per few-shot task.
EXPERIMENT = " ".join([*(f"--config.{run}.{o[len('--config.'):]}" for run in ("teacher", "student")
                         for o in TINY.split()), "--config.student.eval.limit=2"])
# The docs' placeholders and absolute paths, and what stands for them in the sandbox ({box}: its path).
SANDBOX = (("=RUN ", "=runs/demo/salt-s0 "), (" OUTDIR", " bench-out"), ("=/tmp/", "=tmp/"), (" /tmp/", " tmp/"),
           ("/models/", "{box}/models/"), ("'/data/", "'{box}/data/"), ("=/data/", "={box}/data/"))


@dataclasses.dataclass(frozen=True)
class Rule:
    """One row. how="run": `match` is a regex the command starts with; it runs as printed, after `replace`
    (literal substitutions), with `append` (size overrides) at the end. Otherwise `match` is the command's
    exact text and `reason` says why it does not run as printed: how="dry run" runs it after `replace` with
    `append` (the dry-run flag); how="check" calls check(command, box); how="split" splits it at `&&` (outside
    quotes) and each part is a command of its own, matched against this table."""
    match: str
    how: str
    reason: str = ""
    append: str = ""
    replace: tuple = ()
    check: Callable | None = None


def _split_and(cmd: str) -> list[str]:
    """`cmd`'s parts between `&&`s that are outside quotes."""
    parts, current, quote, i = [], "", None, 0
    while i < len(cmd):
        ch = cmd[i]
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif cmd.startswith("&&", i):
            parts.append(current.strip())
            current, i = "", i + 2
            continue
        current += ch
        i += 1
    return parts + [current.strip()]


def _substitute(cmd: str, rule: Rule, box: str) -> str:
    for old, new in rule.replace:
        cmd = cmd.replace(old, new.format(box=box))
    return f"{cmd} {rule.append}".strip()


def _shell(cmd: str, box: str, env: dict | None = None):
    """`cmd` in bash in the sandbox, with this interpreter's python and console commands first on PATH."""
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    return subprocess.run(["bash", "-c", cmd], cwd=box, capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, PATH=path, **(env or {})))


def _run(cmd: str, box: str, env: dict | None = None):
    out = _shell(cmd, box, env)
    assert out.returncode == 0, f"{cmd}\nexit {out.returncode}\n{out.stdout[-1500:]}\n{out.stderr[-3000:]}"
    return out


# The checks of commands that do not run as printed.


def _parses(cmd: str, box: str) -> None:
    """Each command in `cmd` (split at `&&`; inside a gcloud ssh's --command="..." too) through its own
    parser, nothing run: salt_jax's absl flags with its --config file and --config.* overrides
    (tests/flags_parse.py), pip's option parser and the extras in setup.py, Ray's click parser for `ray start`."""
    inner = re.search(r'--command="(.*)"$', cmd)
    for part in _split_and(inner.group(1) if inner else cmd):
        part = re.sub(r"^\.venv/bin/", "", part)
        if m := re.match(r"python3? -m (salt_jax[\w.]*)(.*)$", part):
            out = subprocess.run([sys.executable, os.path.join(REPO, "tests", "flags_parse.py"), m.group(1),
                                  *shlex.split(m.group(2))], cwd=box, capture_output=True, text=True, timeout=300)
            assert out.returncode == 0 and out.stdout.startswith("ok: "), (
                f"{part}\nexit {out.returncode}: {out.stderr.strip()[-1500:]}")
        elif part.startswith("pip install "):
            from pip._internal.commands import create_command

            try:
                options, _ = create_command("install").parse_args(shlex.split(part)[2:])
            except SystemExit:
                raise AssertionError(f"{part}: pip's parser refuses it") from None
            for target in options.editables:
                path, _, extras = target.partition("[")
                assert os.path.abspath(os.path.join(REPO, path)) == REPO, f"{part}: {path} is not the checkout"
                for extra in filter(None, extras.rstrip("]").split(",")):
                    assert extra in _extras(), f"{part}: setup.py has no extra {extra!r}"
        elif part.startswith("ray start "):
            import click
            from ray.scripts.scripts import start

            try:
                start.make_context("ray start", shlex.split(part)[2:])
            except click.ClickException as e:
                raise AssertionError(f"{part}: {e.format_message()}") from None
        elif part == "cd ~/salt_jax":  # where `scripts/tpu_pod.sh copy` puts the checkout on every worker
            assert '"$TPU_NAME:~/salt_jax"' in open(os.path.join(REPO, "scripts", "tpu_pod.sh")).read(), part
        else:
            raise AssertionError(f"{part!r}: no parser is known for it (add one to _parses)")


def _extras() -> set[str]:
    text = open(os.path.join(REPO, "setup.py")).read()
    block = text[text.index("extras_require"):]
    return set(re.findall(r'^\s+"([a-z]+)": ', block, re.M))


def _in_ci(cmd: str, box: str) -> None:
    """The suite itself: .ci/run runs it verbatim (so a change to it or to the command shows here)."""
    assert f"\n{cmd}\n" in open(os.path.join(REPO, ".ci", "run")).read(), f"{cmd}: not what .ci/run runs"


def _paper_suite(cmd: str, box: str) -> None:
    from salt_jax.eval.tasks import SUITES

    assert "paper_suite" in SUITES
    _parses(cmd, box)  # (--workdir=RUN: any string parses)


def _step_kept(cmd: str, box: str) -> None:
    """`--step=N` names a checkpoint the full-size demo keeps; the tiny run then evaluates its step 2."""
    from salt_jax.recipes import demo_run

    step = int(re.search(r"--step=(\d+)", cmd).group(1))
    c = demo_run("salt")
    saved = list(range(c.train.checkpoint_every, c.train.steps + 1, c.train.checkpoint_every))
    assert step in saved[-c.train.keep_checkpoints:], (
        f"{cmd}: the demo keeps checkpoints {saved[-c.train.keep_checkpoints:]}, not {step}")
    _run(re.sub(r"--step=\d+", "--step=2", cmd) + " --limit=2", box)


def _compile_small(cmd: str, box: str) -> None:
    """The printed config and topology load and parse (the config through salt_jax.compile's own parser),
    then the same command compiles configs/test_tiny.py for a v5e:2x2 slice."""
    from salt_jax.aot import topology

    config = re.search(r"--config=(\S+?)(?::(\S+))?(?=\s|$)", cmd)
    topology.parse(re.search(r"--topology=(\S+)", cmd).group(1))
    _parses(cmd, box)
    small = cmd.replace(config.group(0), f"--config=configs/test_tiny.py:{config.group(2) or 'baseline'}")
    small = re.sub(r"--topology=\S+", "--topology=v5e:2x2", small)
    _run(f"{small} --config.salt.teacher_preset=test-tiny-teacher --remats=full --out=compile.json", box)


def _bench_suite(cmd: str, box: str) -> None:
    """Every case of scripts/bench.sh (its --dry-run lists the CPU and the accelerator cases) names a
    benchmark config that exists; the first CPU case runs at the bench's test size."""
    cmd = _substitute(cmd, Rule("", "", replace=SANDBOX), box)
    out = _run(cmd.replace("bench.sh", "bench.sh --dry-run"), box)
    cases = out.stdout.strip().splitlines()
    assert len(cases) >= 10 and all(c.startswith("python -m salt_jax.bench --config=configs/") for c in cases), cases
    for case in cases:
        assert os.path.exists(os.path.join(REPO, re.search(r"--config=([\w/]+\.py)", case).group(1))), case
    os.makedirs(os.path.join(box, os.path.dirname(re.search(r"--out=(\S+)", cases[0]).group(1))), exist_ok=True)
    _run(f"{cases[0]} {BENCH}", box)


def _slurm(cmd: str, box: str) -> None:
    """The job script is valid bash, and the salt_jax.main command it runs on these arguments parses."""
    script = os.path.join(REPO, "scripts", "slurm.sbatch")
    assert subprocess.run(["bash", "-n", script]).returncode == 0
    config, workdir = re.search(r"scripts/slurm\.sbatch (\S+) (\S+)$", cmd).groups()
    assert '.venv/bin/python -m salt_jax.main --config="$CONFIG" --workdir="$WORKDIR"' in open(script).read()
    _parses(f"python -m salt_jax.main --config={config} --workdir={workdir}", box)


def _dry(script: str, main_flags: str = ""):
    """The launch script's --dry-run (it prints the commands it would run), and the salt_jax.main flags it
    is given through salt_jax.main's parser."""
    def check(cmd: str, box: str) -> None:
        out = _run(cmd.replace(f"bash scripts/{script}", f"bash scripts/{script} --dry-run"), box,
                   env={"TPU_NAME": "docs", "ZONE": "z", "PROJECT": "p", "BUCKET": "b"})
        assert out.stdout.strip(), cmd
        if main_flags is not None and " -- " in cmd:
            _parses(f"python -m salt_jax.main {main_flags} {cmd.split(' -- ', 1)[1]}".replace("  ", " "), box)
    return check


BENCH = "--repeats=1 --config.data.batch_size=8 --config.data.seq_len=16"  # (8: the suite's 8 devices)
NO_CLOUD = "no Cloud TPU here (and no gcloud)"
NO_INSTALL = "an install takes minutes and a package index; this test runs in an install of the checkout"
RAY_CLUSTER = "a Ray cluster's machines; tests/test_ray.py runs the engine (and the experiment's command) on a local Ray"
DRY_RUN = "--dry_run checks every run's config and lists the runs"

RULES = [
    # ---- run as printed (after the substitutions and with the overrides declared here), in the docs' order
    Rule(r"python3 -m venv \.venv$", "run"),  # (in the sandbox: a venv of this interpreter, 5 s)
    Rule(r"source \.venv/bin/activate$", "run"),  # (the venv just made)
    Rule(r"python -m salt_jax\.main ", "run", append=TINY, replace=SANDBOX),
    Rule(r"python -m salt_jax\.prepare .*--engine=ray", "run", append=TINY, replace=SANDBOX),  # (Ray's workers)
    Rule(r"python -m salt_jax\.prepare ", "run", append=f"{TINY} --workers=0", replace=SANDBOX),  # (2 cores)
    Rule(r"python -m salt_jax\.experiment --config=configs/experiments/demo\.py --workdir=runs/demo$", "run",
         append=EXPERIMENT),
    Rule(r"python -m salt_jax\.eval ", "run", append="--limit=2", replace=SANDBOX),
    Rule(r"python -m salt_jax\.sample ", "run", append="--max_tokens=4", replace=SANDBOX),
    Rule(r"python -m salt_jax\.hf ", "run", replace=SANDBOX),
    Rule(r"python -m salt_jax\.bench .*--loop", "run",  # (the loop's store: a slice of the library)
         append=f"{BENCH} --rounds=1 --loop_steps=2 --config.data.max_files=40", replace=SANDBOX),
    Rule(r"python -m salt_jax\.bench ", "run", append=BENCH),
    Rule(r"python scripts/bench_sparse\.py ", "run",  # (the bench's sizes, one run of each implementation)
         append=f"--rounds=1 {BENCH} --config.model.vocab_size=2048"),
    Rule(r"python scripts/bench_store\.py .*--mixed_mb=", "run", append="--sizes_mb=1 --workers=0 --mixed_mb=4",
         replace=SANDBOX),
    Rule(r"python scripts/bench_store\.py ", "run", append="--sizes_mb=1 --workers=0", replace=SANDBOX),
    Rule(r"python scripts/bench_fewshot_share\.py ", "run", append="--limit=4", replace=SANDBOX),
    Rule(r"python scripts/bench_vs_torch\.py", "run", append="--sizes=demo --rounds=1 --loop_steps=1"),
    Rule(r"python scripts/horizon_seeds\.py ", "run", replace=(("--out=docs/", "--out=docs-out/"),)),
    Rule(r"python scripts/bench_alignment\.py ", "run",  # (a slice of the library, a small teacher tokenizer)
         append="--config.data.max_files=40 --config.data.seq_len=32 --config.data.batch_size=8 --steps=2 "
                "--teacher_vocab=400 --teacher_seq_len=0", replace=SANDBOX),
    # ---- chained commands: each part is a command of its own, below
    Rule("python3 -m venv .venv && source .venv/bin/activate && pip install -e . && python -m salt_jax.experiment "
         "--config=configs/experiments/demo.py --workdir=runs/demo", "split",
         "a fresh machine's venv, install and main job, chained"),
    Rule('python3 -m venv .venv && source .venv/bin/activate && pip install -e ".[test]" && python -m pytest -q '
         'tests', "split", "a fresh machine's venv, install and test suite, chained"),
    Rule("bash scripts/tpu_pod.sh create && bash scripts/tpu_pod.sh copy && bash scripts/tpu_pod.sh setup", "split",
         "three steps of the launch script, chained"),
    # ---- not run: the reason, and the check instead
    *(Rule(f"pip install -e {target}", "check", NO_INSTALL, check=_parses)
      for target in (".", '".[test]"', '".[hf]"', '".[ray]"', '".[tpu]"')),
    Rule("python -m pytest -q tests", "check", "the test suite itself", check=_in_ci),
    Rule("python -m salt_jax.experiment --config=configs/experiments/repro.py --workdir=runs/repro", "dry run",
         f"28 runs, hours on 2 cores; {DRY_RUN}", append="--dry_run"),
    Rule("python -m salt_jax.experiment --config=configs/experiments/repro.py --workdir=runs/repro --engine=ray",
         "dry run", f"28 runs, hours on 2 cores; {DRY_RUN}; tests/test_ray.py runs --engine=ray through this command "
         "line on a local Ray", append="--dry_run"),
    Rule("python -m salt_jax.experiment --config=configs/experiments/ablations.py --workdir=runs/ablations",
         "dry run", f"74 runs, 44 minutes on 2 cores; {DRY_RUN}", append="--dry_run"),
    Rule("python -m salt_jax.experiment --config=configs/experiments/demo.py --workdir=runs/demo --config.seeds=0,1,2 "
         "--horizons=1,2,4", "dry run", f"19 runs, hours; {DRY_RUN} (tests/test_experiment.py runs a horizon study)",
         append="--dry_run"),
    Rule("python -m salt_jax.experiment --config=configs/experiments/demo.py --workdir=/work/runs/demo --config.seeds=0 "
         "--horizons=1,2,4", "dry run", "the command that made docs/demo/horizon (as the study writes it, with its "
         f"workdir: here under the sandbox's runs/); 7 runs, hours; {DRY_RUN}", append="--dry_run",
         replace=(("=/work/runs/", "=runs/"),)),
    Rule('python -m salt_jax.experiment --config=configs/experiments/demo.py --workdir=runs/horizon-2x-s12 '
         '--config.seeds=1,2 --config.student.train.steps=1000 --config.student.eval.tasks= "--config.name=demo, 2x '
         'the steps"', "dry run", f"the 2x horizon's seeds 1 and 2 (docs/demo/horizon/2x-seeds12): 5 runs, an hour "
         f"and a half on 2 cores; {DRY_RUN}", append="--dry_run"),
    Rule('python -m salt_jax.experiment --config=configs/experiments/demo.py --workdir=runs/horizon-4x-s12 '
         '--config.seeds=1,2 --config.student.train.steps=2000 --config.student.eval.tasks= '
         '--config.teacher_path=runs/horizon-2x-s12/teacher "--config.name=demo, 4x the steps"', "check",
         "the 4x horizon's seeds 1 and 2 (docs/demo/horizon/4x-seeds12): 4 runs of 2000 steps, over an hour on 2 "
         "cores, with the 2x study's teacher (which its dry run would need trained): its flags and config parse",
         check=_parses),
    Rule("python -m salt_jax.experiment --config=configs/experiments/cross_tokenizer.py --workdir=runs/cross-tokenizer",
         "dry run", f"the cross-tokenizer experiment (docs/demo/cross-tokenizer): 2 teachers and 9 students, about 40 "
         f"minutes on 2 cores; {DRY_RUN}", append="--dry_run"),
    Rule("python -m salt_jax.eval --workdir=RUN --tasks=paper_suite --num_fewshot=1", "check",
         "lm-eval downloads these tasks from the Hugging Face Hub: no network here (the offline tasks run the same "
         "code path); its flags parse, and paper_suite is a suite salt_jax.eval knows", check=_paper_suite),
    Rule("python -m salt_jax.eval --workdir=runs/demo/salt-s0 --step=400 --tasks=stdlib_perplexity", "check",
         "the tiny demo has no step 400: the full-size demo keeps it, and the tiny run's step 2 is evaluated",
         check=_step_kept),
    *(Rule(f"python -m salt_jax.compile --config=configs/paper/student_2p8b.py:salt {flags}", "check",
           "a paper-scale compile takes 2-4 minutes per program on 2 cores (docs/tpu.md's table): its flags and "
           "config parse, and the same command compiles configs/test_tiny.py for a v5e:2x2 slice",
           check=_compile_small)
      for flags in ("--topology=v5p-128", "--topology=v6e-256 --noestimate", "--topology=v5p-128 --search")),
    *(Rule(f"bash scripts/bench.sh {out}", "check", "minutes on 2 cores, and its accelerator half needs a GPU: "
           "every case it lists names a real config, and the first runs at the bench's test size",
           check=_bench_suite) for out in ("OUTDIR", "/tmp/bench")),
    *(Rule(f"bash scripts/tpu_pod.sh {step}", "check", f"{NO_CLOUD}: the script's --dry-run prints the gcloud "
           "commands (and `run`'s salt_jax.main flags parse)", check=_dry("tpu_pod.sh", "--config=configs/demo.py:salt"))
      for step in ("create", "copy", "setup", "run -- --config.train.steps=20000", "logs")),
    Rule("bash scripts/tpu_pod.sh compile", "check", "compiles the demo for a v5p-32 (libtpu, minutes): its "
         "--dry-run prints the compile command", check=_dry("tpu_pod.sh")),
    Rule("sbatch --nodes=4 scripts/slurm.sbatch configs/demo.py:salt /shared/runs/demo", "check",
         "no SLURM here: the job script is checked with bash -n, and the command it runs parses", check=_slurm),
    Rule("HOSTS=gpu0,gpu1 bash scripts/multinode.sh -- --config=configs/demo.py:salt --workdir=/shared/runs/demo",
         "check", "no GPU hosts here: the script's --dry-run prints the ssh commands, and the flags parse",
         check=_dry("multinode.sh")),
    Rule("python -m salt_jax.prepare --config=configs/demo.py --config.data.source=text "
         "--config.data.path='gs://my-bucket/pile/*.jsonl' --config.data.cache_dir=gs://my-bucket/cache "
         "--config.data.max_files=0 --workers=16 --process_index=$P --process_count=8", "check",
         "no bucket or credentials here (tests/test_cloud_store.py builds a store by several machines through a "
         "fake gs:// bucket): the flags and config parse, for machine 0", check=lambda cmd, box: _parses(
             cmd.replace("$P", "0"), box)),
    Rule("ray start --head --port=6379", "check", RAY_CLUSTER, check=_parses),
    Rule("ray start --address=$HEAD:6379", "check", RAY_CLUSTER, check=_parses),
    Rule("python -m salt_jax.prepare --config=configs/demo.py --config.data.source=text "
         "--config.data.path='gs://my-bucket/pile/*.jsonl' --config.data.cache_dir=gs://my-bucket/cache "
         "--config.data.max_files=0 --engine=ray --ray_address=$HEAD:6379", "check",
         f"{RAY_CLUSTER}, and no bucket here: the flags and config parse", check=_parses),
    *(Rule(f"gcloud compute tpus tpu-vm ssh $TPU_NAME --zone=$ZONE --project=$PROJECT --worker={w} "
           f"--command=\"cd ~/salt_jax && {inner}\"", "check", f"{NO_CLOUD}: each command it runs on the workers "
           "goes through its own parser", check=_parses)
      for w, inner in (("all", ".venv/bin/pip install -e '.[ray]'"), ("0", ".venv/bin/ray start --head --port=6379"),
                       ("1-3", ".venv/bin/ray start --address=$HEAD:6379"),
                       ("0", ".venv/bin/python -m salt_jax.prepare --config=configs/demo.py --config.data.source=text "
                             "--config.data.path='gs://$BUCKET/pile/*.jsonl' --config.data.cache_dir=gs://$BUCKET/cache "
                             "--config.data.max_files=0 --engine=ray --ray_address=auto"))),
]


def rule_for(cmd: str) -> Rule | None:
    """The row listing `cmd` by its exact text, else the first "run" row whose pattern it starts with."""
    exact = [rule for rule in RULES if rule.how != "run" and rule.match == cmd]
    return exact[0] if exact else next((rule for rule in RULES if rule.how == "run" and re.match(rule.match, cmd)),
                                       None)


def check_command(cmd: str, box: str, done: set | None = None) -> None:
    """Runs or checks `cmd` by its rule; AssertionError (naming the command) when it fails or has no rule."""
    rule = rule_for(cmd)
    assert rule is not None, f"{cmd!r} is neither run nor listed with a reason in tests/test_docs_commands.py RULES"
    if rule.how == "split":
        for part in _split_and(cmd):
            if done is None or part not in done:
                check_command(part, box, done)
                if done is not None:
                    done.add(part)
        return
    assert len(_split_and(cmd)) == 1, f"{cmd!r}: a chained command is listed by its exact text as split"
    if rule.how == "check":
        rule.check(cmd, box)
    else:  # run, dry run
        _run(_substitute(cmd, rule, box), box)


# ---------------------------------------------------------------------------------------------- the sandbox


@pytest.fixture(scope="module")
def box(tmp_path_factory, cache_dir):
    """A directory laid out as a checkout (configs/, scripts/ linked) where the docs' runs/ go, with the
    inputs the docs assume: a small Hugging Face model at models/SmolLM2-135M, and corpora under data/
    written by their own libraries (docs/data.md "Training on your own large corpus")."""
    root = tmp_path_factory.mktemp("docs")
    for name in ("configs", "scripts", "docs"):  # (docs: the committed reports a command reads)
        os.symlink(os.path.join(REPO, name), root / name)
    _corpora(root / "data")
    _tiny_hf_model(str(root / "models" / "SmolLM2-135M"))
    _my_task(root)
    return str(root)


def _corpora(data) -> None:
    """The same records (2,000-character pieces of four standard-library files) as the corpora docs/data.md
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
    from test_hf import tiny_hf_teacher

    tiny_hf_teacher(directory, seed=3)


# --------------------------------------------------------------------------------------------- the commands

COMMANDS, PROBLEMS, NOT_COMMANDS = collect()


def _unique(commands: list[Command]) -> list[Command]:
    seen, out = set(), []
    for c in commands:
        if c.text not in seen:
            seen.add(c.text)
            out.append(c)
    return out


def _parts(commands: list[Command]) -> list[str]:
    """Every command and every part of a split one (what the rules are matched against)."""
    out = []
    for c in commands:
        out.append(c.text)
        rule = rule_for(c.text)
        if rule is not None and rule.how == "split":
            out += _split_and(c.text)
    return out


def test_every_block_is_read_and_every_command_has_exactly_its_rule():
    """The collection and the table, nothing run: no unclosed fence or command-looking line outside a command;
    every command (and part of a split one) matches a row; every row matches a command (no stale rows); every
    not-run row gives its reason and its check; every sandbox substitution is used."""
    assert not PROBLEMS, "\n".join(PROBLEMS)
    texts = _parts(COMMANDS)
    unmatched = [t for t in texts if rule_for(t) is None]
    chained = [t for t in texts if rule_for(t) and rule_for(t).how != "split" and len(_split_and(t)) > 1]
    assert not chained, "chained commands (&&) must be listed by their exact text as split:\n" + "\n".join(chained)
    assert not unmatched, "no rule in tests/test_docs_commands.py RULES for:\n" + "\n".join(unmatched)
    used = {id(rule_for(t)) for t in texts}
    stale = [r.match for r in RULES if id(r) not in used]
    assert not stale, "rules that match no command in the docs (stale: remove or update them):\n" + "\n".join(stale)
    for rule in RULES:
        assert rule.how in ("run", "dry run", "check", "split"), rule
        assert rule.how == "run" or rule.reason, f"{rule.match}: a command not run as printed needs its reason"
        assert (rule.how == "check") == (rule.check is not None), rule.match
        assert rule.how != "dry run" or "dry" in rule.append, rule.match
    unused = [old for old, _ in SANDBOX if not any(old in t for t in texts)]
    assert not unused, f"sandbox substitutions no command needs: {unused}"


def test_the_docs_show_the_commands_this_test_knows():
    """The collection itself: the walkthrough and the main job are among the commands found, from fences
    of several kinds and an indented command in a docs subfolder; the YAML task and the sample output are
    blocks that are not commands."""
    cmds = [c.text for c in COMMANDS]
    assert "python -m salt_jax.main --config=configs/demo.py:teacher --workdir=runs/demo-teacher" in cmds
    assert any(c.endswith("python -m salt_jax.experiment --config=configs/experiments/demo.py --workdir=runs/demo")
               for c in cmds)
    assert {c.fence for c in COMMANDS} >= {"```bash", INDENTED}
    assert any(c.doc.startswith("docs/demo/") and c.fence == INDENTED for c in COMMANDS)
    assert len(cmds) >= 50
    assert {f"{d}:{f}" for d, _, f in NOT_COMMANDS} >= {"docs/evaluation.md:```", "docs/evaluation.md:```yaml"}


@pytest.mark.parametrize("command", _unique(COMMANDS), ids=[f"{c.doc}:{c.line}" for c in _unique(COMMANDS)])
def test_doc_command_runs_as_printed(command, box, chain_parts_done):
    try:
        check_command(command.text, box, chain_parts_done)
    except AssertionError as e:
        pytest.fail(f"{command.doc}:{command.line} (a {command.fence} block): {e}", pytrace=False)


@pytest.fixture(scope="module")
def chain_parts_done():
    """The parts of split commands already run or checked in this sandbox (the README's two install lines
    share their first two)."""
    return set()


# ---------------------------------------------------------------------------------- a planted bogus command

PLANTED = "python -m salt_jax.main --config=configs/test_tiny.py --nonexistent_flag=1"
SPLIT = PLANTED.replace(" --n", " \\\n    --n")  # (on two lines)
FENCES = {  # how the planted command is written, and where
    "none": ("docs/a.md", f"Run:\n\n```\n{PLANTED}\n```\n"),
    "text": ("docs/a.md", f"Run:\n\n```text\n{PLANTED}\n```\n"),
    "console": ("docs/a.md", f"Run:\n\n```console\n$ {PLANTED}\nsome output\n```\n"),
    "bash title": ("docs/a.md", f"Run:\n\n```bash title=run.sh\n{PLANTED}\n```\n"),
    "tilde": ("docs/a.md", f"Run:\n\n~~~\n{PLANTED}\n~~~\n"),
    "4 backticks": ("docs/a.md", f"Run:\n\n````text\n```bash\n{PLANTED}\n```\n````\n"),
    "indented": ("docs/a.md", f"Run:\n\n    {PLANTED}\n"),
    "docs subfolder": ("docs/deep/er/b.md", f"Run:\n\n```bash\n{SPLIT}\n```\n"),
}


@pytest.mark.parametrize("kind", FENCES)
def test_a_planted_bogus_command_is_collected_and_fails(kind, tmp_path):
    """A bogus command in a temporary docs tree, under each kind of fence: the collector finds it, at its
    line, and the checker reports it failing."""
    doc, text = FENCES[kind]
    os.makedirs(os.path.dirname(tmp_path / doc), exist_ok=True)
    (tmp_path / doc).write_text(text)
    os.symlink(os.path.join(REPO, "configs"), tmp_path / "configs")
    commands, problems, _ = collect(str(tmp_path))
    assert not problems
    assert [(c.doc, c.text) for c in commands] == [(doc, PLANTED)]
    assert commands[0].line == text.split("\n").index(next(ln for ln in text.split("\n") if "salt_jax.main" in ln)) + 1
    with pytest.raises(AssertionError, match=r"(?s)--nonexistent_flag=1.*exit 2.*Unknown command line flag "
                                             r"'nonexistent_flag'") as failed:
        check_command(commands[0].text, str(tmp_path))
    print(f"{commands[0].doc}:{commands[0].line} ({commands[0].fence}): {failed.value}")


def test_lines_that_look_like_commands_are_never_skipped(tmp_path):
    """A command-looking line that does not start like a command (in prose-like text of a block), an
    unclosed fence, and an unknown command in a shell block each fail."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("```text\nthen run: python -m salt_jax.main --config=x\n```\n"
                                            "```bash\nmake all\n```\n~~~~\nopen")
    commands, problems, _ = collect(str(tmp_path))
    assert [c.text for c in commands] == ["make all"]
    assert rule_for("make all") is None
    assert len(problems) == 2, problems
    assert problems[0] == "docs/a.md:7: the fence ~~~~ is never closed"
    assert problems[1].startswith("docs/a.md:2: 'then run: python -m salt_jax.main --config=x' (in a ```text block) "
                                  "looks like a command but does not start like one")


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
    files = markdown_files(REPO) + [os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "salt_jax", "**", "*.py"),
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
        for _, cmd in logical_lines(doc.split("\n")):
            cmd = re.sub(r"\s+#\s.*$", "", cmd)
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

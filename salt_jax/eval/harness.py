"""lm-evaluation-harness over a salt_jax model: the `LM` adapter and `evaluate(...)`.

`SaltLM` implements lm-eval's three request types on an `Engine`:
`loglikelihood` (lm-eval's own context/continuation encoding, from
TemplateLM, then exact per-token log-probabilities of the continuation and
whether it is the greedy one), `loglikelihood_rolling` (lm-eval's disjoint
rolling windows of the model's context length) and `generate_until` (KV-cache
decoding, lm-eval's stop-sequence handling). Requests are sorted by length
and batched as lm-eval's HF backend does, so scores agree with it on the same
model.

lm-eval is imported here only: `import salt_jax` and training without
`config.eval.tasks` never load it.
"""

from __future__ import annotations

import contextlib
import difflib
import io
import logging
import os
from typing import Any, Iterator

import numpy as np
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.models.utils import Collator, handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text

from salt_jax import paths
from salt_jax.errors import UserError
from salt_jax.eval.engine import Engine, bucket


class SaltLM(TemplateLM):
    """A salt_jax model as an lm-eval model. Only process 0 drives lm-eval (rank 0 of world 1 to it);
    the other processes run the engine's `serve()` loop meanwhile."""

    def __init__(self, engine: Engine, tokenizer, seed: int = 1234, max_gen_toks: int = 256,
                 share_contexts: bool = True):
        super().__init__()
        self.engine, self.tok, self.seed, self._max_gen_toks = engine, tokenizer, seed, max_gen_toks
        # Run a context shared by several loglikelihood requests once (False: each request whole, as before).
        self.share_contexts = share_contexts
        self.max_length = engine.max_len
        self.batch_size = engine.batch_size

    # ---------------------------------------------------------------- tokenizer
    @property
    def eot_token_id(self) -> int:
        return int(self.tok.eos_id)

    @property
    def prefix_token_id(self) -> int:
        """What an empty context conditions on: BOS when the tokenizer has one, else EOS (as lm-eval's hf)."""
        bos = getattr(self.tok, "bos_id", None)
        return int(bos) if bos is not None and bos >= 0 else self.eot_token_id

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return list(self.tok.encode([string])[0])

    def tok_decode(self, tokens: list[int]) -> str:
        return self.tok.decode(tokens)

    # ---------------------------------------------------------------- scoring
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """(sum of log p(continuation | context), greedy?) per ((context, continuation), ctx ids, cont ids).

        Like lm-eval's hf backend: the last max_length + 1 tokens of context + continuation, the
        continuation scored at the end of the window. With `share_contexts`, requests scored after the same
        context tokens (the choices of a multiple-choice question) run that context once (`score_shared`);
        the others, and all of them without it, run whole (`_score_each`). Both give the same numbers."""
        groups, alone = shared_contexts(requests, self.max_length) if self.share_contexts else (
            [], list(range(len(requests))))
        results: list[tuple[float, bool]] = [(0.0, False)] * len(requests)
        for i, answer in zip(alone, self._score_each([requests[i] for i in alone])):
            results[i] = answer
        for i, answer in self._score_groups(requests, groups):
            results[i] = answer
        for req, answer in zip(requests, results):
            if req[0] is not None:
                self.cache_hook.add_partial("loglikelihood", req[0], answer)
        return results

    def _score_each(self, requests) -> list[tuple[float, bool]]:
        """Each request's window run whole, longest first, batch_size at a time (lm-eval's hf order)."""
        def length(req):
            return -len(req[1] + req[2]), tuple(req[1] + req[2])

        order = Collator(requests, sort_fn=length)
        results = []
        for chunk in order.get_batched(n=self.batch_size):
            windows = [(ctx + cont)[-(self.max_length + 1):] for _, ctx, cont in chunk]
            width = bucket(max(len(w) - 1 for w in windows), hi=self.max_length)
            tokens = np.zeros((len(chunk), width), np.int32)
            targets = np.zeros_like(tokens)
            weights = np.zeros((len(chunk), width), np.float32)
            for i, ((_, _, cont), w) in enumerate(zip(chunk, windows)):
                n = len(w) - 1
                tokens[i, :n], targets[i, :n] = w[:-1], w[1:]
                weights[i, n - min(len(cont), n):n] = 1.0
            logprobs, greedy = self.engine.score(tokens, targets, weights)
            results += [(float(lp), bool(g)) for lp, g in zip(logprobs, greedy)]
        return order.get_original(results)

    def _score_groups(self, requests, groups: list[list[int]]) -> list[tuple[int, tuple[float, bool]]]:
        """(request index, answer) for groups of requests sharing their scored context: the context but its
        last token is the group's prefix, run once; each request's row is that last token and its
        continuation but the last, predicting the continuation (the window `_score_each` runs, split)."""
        prefixes, rows = [], []
        for members in groups:
            context = scored_context(requests[members[0]], self.max_length)
            rows += [(len(prefixes), [context[-1]] + requests[i][2][:-1], requests[i][2]) for i in members]
            prefixes.append(context[:-1])
        if not rows:
            return []
        logprobs, greedy = self.engine.score_shared(prefixes, rows)
        indices = [i for members in groups for i in members]
        return [(i, (float(lp), bool(g))) for i, lp, g in zip(indices, logprobs, greedy)]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Total log-likelihood of each document, scored in lm-eval's disjoint windows of max_length."""
        windows, owner = [], []
        for i, req in enumerate(requests):
            (string,) = req.args
            for ctx, cont in map(lm_utils.make_disjoint_window, lm_utils.get_rolling_token_windows(
                    token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)):
                windows.append((None, ctx, cont))
                owner.append(i)
        scores = self._loglikelihood_tokens(windows)
        totals = [0.0] * len(requests)
        for i, (lp, _) in zip(owner, scores):
            totals[i] += lp
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # ---------------------------------------------------------------- generation
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy or sampled continuations, cut at the first stop sequence (lm-eval's `until`) or EOS."""
        def longest_first(args):
            ids = self.tok_encode(args[0])
            return -len(ids), args[0]

        order = Collator([r.args for r in requests], sort_fn=longest_first, group_by="gen_kwargs",
                         group_fn=lambda args: args[1])
        results = []
        for chunk in order.get_batched(n=self.batch_size):
            contexts, all_kwargs = zip(*chunk)
            kwargs = normalize_gen_kwargs(dict(all_kwargs[0]), self._max_gen_toks)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=None)  # EOS ends a row by its id
            max_new = int(kwargs.pop("max_gen_toks"))
            if max_new >= self.max_length:
                raise UserError(f"max_gen_toks={max_new} leaves no room for the prompt in the model's context of "
                                f"{self.max_length} tokens; lower it in the task's generation_kwargs")
            temperature = float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample") else 0.0
            if kwargs.get("do_sample") and temperature == 0.0:
                temperature = 1.0
            stops = [s for s in until if s]

            def stopped(new_ids, stops=stops):
                text = self.tok_decode(new_ids)
                return any(s in text for s in stops)

            outputs = self.engine.generate(
                [self.tok_encode(c) or [self.prefix_token_id] for c in contexts], max_new, temperature=temperature,
                top_k=int(kwargs.get("top_k") or 0), top_p=float(kwargs.get("top_p") or 1.0), seed=self.seed,
                eos_id=self.eot_token_id, stop=stopped if stops else None)
            for context, gen_kwargs, ids in zip(contexts, all_kwargs, outputs):
                text = postprocess_generated_text(generation=self.tok_decode(ids), stop=until, think_end_token=None)
                results.append(text)
                self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
        return order.get_original(results)


def scored_context(request, max_length: int) -> list[int]:
    """The context tokens a request's continuation is scored after: the part of its window (the last
    max_length + 1 tokens of context + continuation, lm-eval's left truncation) before the continuation.
    Empty when the continuation fills the window."""
    _, ctx, cont = request
    window = (ctx + cont)[-(max_length + 1):]
    return window[:max(len(window) - len(cont), 0)]


def shared_contexts(requests, max_length: int) -> tuple[list[list[int]], list[int]]:
    """(groups, alone): indices of the requests scored after the same context tokens, in groups of two or more
    (with at least two context tokens, so there is a prefix to share), and the indices of the rest.

    Grouping by the context as scored, after truncation, keeps sharing exact: a context cut differently for
    continuations of different lengths is a different context, and those requests run alone, as before."""
    by_context: dict[tuple[int, ...], list[int]] = {}
    for i, req in enumerate(requests):
        by_context.setdefault(tuple(scored_context(req, max_length)), []).append(i)
    groups = [m for context, m in by_context.items() if len(m) > 1 and len(context) > 1]
    alone = sorted(i for context, m in by_context.items() if not (len(m) > 1 and len(context) > 1) for i in m)
    return groups, alone


def task_requests(name: str, num_fewshot: int = 0, limit: int | None = None, seed: int = 1234, manager=None):
    """lm-eval's requests (Instances) for the first `limit` documents of task `name`, as `simple_evaluate`
    builds them (few-shot examples drawn with `seed`), to score directly: `lm.loglikelihood(requests)` (or
    the method named by their `request_type`). For measuring and comparing scoring paths, not for scores."""
    from lm_eval.tasks import get_task_dict

    with quiet(None):
        task = get_task_dict([name], manager or task_manager(tasks=[name]))[name]
        task.set_config(key="num_fewshot", value=num_fewshot)
        task.set_fewshot_seed(seed=seed)
        task.build_all_requests(limit=limit, rank=0, world_size=1)
    return task.instances


def expand(names: list[str]) -> list[str]:
    """Task names with the suites of salt_jax.eval.tasks.SUITES (paper_suite, stdlib_offline) spelled out."""
    from salt_jax.eval.tasks import SUITES

    return [t for name in names for t in SUITES.get(name, (name,))]


def task_manager(include_path: str | list[str] | None = None, tasks: list[str] | None = None,
                 field: str = "--include_path"):
    """lm-eval's TaskManager over the offline tasks shipped here, `include_path` and lm-eval's own tasks.

    When every name in `tasks` is found without lm-eval's own catalogue (thousands of YAML files,
    seconds to index), that catalogue is left out. An include path that is not a directory of task YAML
    files is a UserError naming `field` (lm-eval would skip it without a word)."""
    from lm_eval.tasks import TaskManager

    from salt_jax.eval.tasks import TASKS_DIR

    extra = [include_path] if isinstance(include_path, str) else list(include_path or [])
    for path in filter(None, extra):
        check_include_path(path, field)
    dirs = [TASKS_DIR] + [p for p in extra if p]
    tasks = expand(tasks or [])
    if tasks:
        small = TaskManager(include_path=dirs, include_defaults=False)
        if all(t in _known(small) for t in tasks):
            return small
    return TaskManager(include_path=dirs)


def check_include_path(path: str, field: str = "--include_path") -> None:
    """A directory holding lm-eval task YAML files (at any depth), or a UserError saying what it is."""
    if not os.path.isdir(path):
        raise UserError(f"{field}={path}: no such directory; give a directory of lm-eval task YAML files"
                        if not os.path.exists(path) else
                        f"{field}={path}: is a file; give the directory that holds the task YAML files")
    for _, _, files in os.walk(path):
        if any(f.endswith(".yaml") for f in files):  # (lm-eval reads *.yaml only)
            return
    raise UserError(f"{field}={path}: has no .yaml files, so no lm-eval tasks; give the directory that holds "
                    "your task YAML files")


def _known(manager) -> set[str]:
    return set(manager.all_subtasks) | set(manager.all_groups) | set(manager.all_tags)


def check_tasks(names: list[str], manager, field: str = "--tasks") -> None:
    """An unknown task name is one line naming it and the closest known ones."""
    known = _known(manager)
    for name in expand(names):
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise UserError(f"{field}: unknown lm-eval task {name!r}{hint} (offline tasks: "
                            "salt_jax/eval/tasks; others: lm-eval's list, or --include_path for your own YAML)")


def evaluate(lm: SaltLM, tasks: list[str], *, num_fewshot: int | None = None, limit: float | None = None,
             include_path: str | list[str] | None = None, seed: int = 1234, manager=None,
             log: str | None = None) -> dict[str, Any]:
    """lm-eval's `simple_evaluate` with our model; returns lm-eval's results dict (as eval_results.json).

    lm-eval's log lines and progress bars go to the file `log` (appended; None: dropped), not the console
    (see `quiet`). A task whose data must come from the Hugging Face Hub, unreachable here, is a UserError."""
    from lm_eval import simple_evaluate

    from lm_eval import evaluator

    tasks = expand(tasks)
    manager = manager or task_manager(include_path, tasks)
    check_tasks(tasks, manager)
    # lm-eval records the git commit of the working directory by running git, which prints "fatal: not a
    # git repository" outside a checkout; record salt_jax's own commit instead, quietly.
    evaluator.get_git_commit_hash = _source_commit
    try:
        with quiet(log):
            return simple_evaluate(model=lm, tasks=tasks, num_fewshot=num_fewshot, limit=limit,
                                   task_manager=manager, random_seed=seed, numpy_random_seed=seed,
                                   torch_random_seed=None, fewshot_random_seed=seed, log_samples=False,
                                   bootstrap_iters=100)
    except Exception as e:  # noqa: BLE001 -- only an unreachable Hub is turned into a UserError
        if not _unreachable_hub(e):
            raise
        raise UserError(f"lm-eval task {_task_of(e) or ', '.join(tasks)!r} needs its data downloaded from the "
                        f"Hugging Face Hub, which cannot be reached ({_first_line(e)}); use the offline stdlib_* "
                        "tasks, or download the data where there is network and point HF_DATASETS_CACHE at "
                        "the copy") from None


# The loggers of the libraries lm-eval runs on; during an evaluation they write to its log file only.
LIBRARY_LOGGERS = ("lm_eval", "datasets", "evaluate", "huggingface_hub", "fsspec", "filelock", "urllib3")


@contextlib.contextmanager
def quiet(log: str | None) -> Iterator[None]:
    """lm-eval without its console chatter for the block: the records of LIBRARY_LOGGERS (lm-eval's info
    lines and warnings: "Building contexts ...", "Custom kwargs can be passed to `--metadata`", ...) go to
    the file `log` (appended; a gs:// path is rewritten at the end; None: dropped) and not to the console,
    except errors; and every tqdm progress bar is off (lm-eval's, datasets', the Hub's). TQDM_DISABLE does
    not do this: tqdm reads it once, when it is first imported."""
    import tqdm.std

    buffer = io.StringIO() if log is None or paths.is_remote(log) else None
    if buffer is None:
        paths.makedirs(os.path.dirname(log) or ".")
    handler = logging.StreamHandler(buffer) if buffer is not None else logging.FileHandler(log, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S"))
    console = _ToConsole(logging.ERROR)
    saved = []
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, logger.handlers[:], logger.level, logger.propagate))
        logger.handlers, logger.propagate = [handler, console], False
        logger.setLevel(logging.INFO)
    bar_init = tqdm.std.tqdm.__dict__["__init__"]  # (a partialmethod when TQDM_* variables are set)
    init = tqdm.std.tqdm.__init__

    def no_bar(self, *args, **kwargs):
        kwargs["disable"] = True
        init(self, *args, **kwargs)

    tqdm.std.tqdm.__init__ = no_bar
    try:
        yield
    finally:
        tqdm.std.tqdm.__init__ = bar_init
        for logger, handlers, level, propagate in saved:
            logger.handlers, logger.propagate = handlers, propagate
            logger.setLevel(level)
        handler.close()
        if buffer is not None and log is not None and buffer.getvalue():
            old = paths.open(log).read() if paths.exists(log) else ""
            paths.write_atomic(log, old + buffer.getvalue())


class _ToConsole(logging.Handler):
    """Passes records on to the root logger's handlers (the console), as propagation would."""

    def emit(self, record: logging.LogRecord) -> None:
        logging.getLogger().handle(record)


def _causes(e: BaseException) -> Iterator[BaseException]:
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


# The libraries a task's download goes through, and the names of their "cannot get there" errors.
_HUB_LIBRARIES = ("huggingface_hub", "datasets", "requests", "httpx", "httpcore", "urllib3", "fsspec", "aiohttp")
_UNREACHABLE = ("OfflineModeIsEnabled", "LocalEntryNotFoundError", "ConnectError", "ConnectTimeout", "ReadTimeout",
                "ProxyError", "SSLError", "ClientConnectorError")


def _unreachable_hub(e: BaseException) -> bool:
    """Whether `e` is a download that failed for want of network (or with HF_HUB_OFFLINE set): datasets'
    ConnectionError("Couldn't reach ... on the Hub"), or a connection error or timeout of the libraries under
    it (huggingface_hub's offline and local-entry errors, requests', httpx's)."""
    for c in _causes(e):
        if "Couldn't reach" in str(c):
            return True
        if type(c).__module__.split(".")[0] in _HUB_LIBRARIES and (
                isinstance(c, (ConnectionError, TimeoutError)) or type(c).__name__ in _UNREACHABLE
                or "Connection" in type(c).__name__):
            return True
    return False


def _task_of(e: BaseException) -> str | None:
    """The lm-eval task being built when `e` was raised (from the traceback's frames)."""
    from lm_eval.api.task import Task

    tb, name = e.__traceback__, None
    while tb is not None:
        owner = tb.tb_frame.f_locals.get("self")
        if isinstance(owner, Task) and getattr(getattr(owner, "config", None), "task", None):
            name = owner.config.task
        tb = tb.tb_next
    return name


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return (lines[0] if lines else type(e).__name__)[:200]


def _source_commit() -> str | None:
    """The git commit of salt_jax's source tree (None when it is not a checkout)."""
    import os
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=os.path.dirname(os.path.abspath(__file__)),
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def scores(results: dict[str, Any]) -> dict[str, float]:
    """Flat {"task/metric": value} of an lm-eval results dict (with "task/metric_stderr"; filter names
    dropped), for metrics.jsonl."""
    flat = {}
    for task, metrics in results.get("results", {}).items():
        for key, value in metrics.items():
            metric, _, _filter = key.partition(",")
            if metric in ("alias", "sample_len") or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            flat[f"{task}/{metric}"] = float(value)
    return flat

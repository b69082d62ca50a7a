"""The training loop's helpers: periodic hooks, the step meter (timing), and the non-finite check.

`Hooks.add(fn, every=N)` registers periodic work: `fn(done, metrics)` runs
after step `done` when done % N == 0 and after the last step, in the order
added. `StepMeter` keeps the training clock (compiling steps and evaluation
off it) and the metrics of the current log interval. `NonFiniteCheck`
enforces config.train.nan_policy before every checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Callable

import jax
import numpy as np

from salt_jax.errors import UserError


@dataclasses.dataclass
class _Hook:
    fn: Callable[[int, Any], None]
    every: int


class Hooks:
    """Periodic work after each step, in the order added."""

    def __init__(self, total_steps: int):
        self.total_steps, self._hooks = total_steps, []

    def add(self, fn: Callable[[int, Any], None], every: int = 1) -> None:
        """Run `fn(done, step_metrics)` after every `every`-th step and after the last one."""
        self._hooks.append(_Hook(fn, every))

    def run(self, done: int, step_metrics) -> None:
        for hook in self._hooks:
            if done % hook.every == 0 or done == self.total_steps:
                hook.fn(done, step_metrics)


def fmt_time(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"


class TrainClock:
    """Seconds spent in training steps, carried across resumes.

    Evaluation and the steps that compile a program (a process's first step,
    the first step without the teacher) are left out. Call `lap` only after
    blocking on the work it should count.
    """

    def __init__(self, already: float = 0.0):
        self.total, self._mark = already, time.time()

    def lap(self) -> float:
        """Adds the time since the last lap/skip to the total and returns it."""
        now = time.time()
        dt, self._mark = now - self._mark, now
        self.total += dt
        return dt

    def skip(self) -> float:
        """Forgets (and returns) the time since the last lap/skip."""
        now = time.time()
        dt, self._mark = now - self._mark, now
        return dt


class StepMeter:
    """Timing of the steps of one log interval; steps that compile a program are kept off the clock.

    Steps run asynchronously: `lap(*arrays)` blocks on them before reading the
    clock. `compiles()` marks the next step as one that builds a program (the
    process's first, the first without the teacher).
    """

    def __init__(self, already_seconds: float = 0.0):
        self.clock = TrainClock(already_seconds)
        self.pending: list = []  # per-step metrics since the last log line
        self.interval = 0.0  # timed seconds of the current log interval
        self.untimed = 0  # steps of the interval that compiled
        self.steps_timed, self.rate_start = 0, time.time()
        self._compile_next, self._compiling, self._t_compile = True, False, 0.0

    def compiles(self) -> None:
        self._compile_next = True

    def lap(self, *block_on) -> None:
        jax.block_until_ready(block_on)
        self.interval += self.clock.lap()

    def before_step(self) -> None:
        self._compiling, self._compile_next = self._compile_next, False
        if self._compiling:
            self.lap(self.pending)
            self._t_compile = time.time()

    def after_step(self, done: int, step_metrics) -> None:
        self.pending.append(step_metrics)
        if self._compiling:
            jax.block_until_ready(step_metrics)
            logging.info("step %d compiled and ran in %.1fs", done, self.clock.skip())
            self.untimed += 1
            self.rate_start += time.time() - self._t_compile

    def interval_done(self) -> tuple[list, float, int]:
        """(the interval's step metrics, its timed seconds, its timed steps); starts the next interval."""
        self.lap(self.pending)
        out = (self.pending, self.interval, len(self.pending) - self.untimed)
        self.steps_timed += out[2]
        self.pending, self.interval, self.untimed = [], 0.0, 0
        return out

    def steps_per_sec(self) -> float:
        """Timed steps per wall second since the start (for the ETA)."""
        return self.steps_timed / max(time.time() - self.rate_start, 1e-9)


class NonFiniteCheck:
    """Host side of the non-finite-step policy (config.train.nan_policy), checked before every checkpoint.

    stop: the first non-finite loss or gradient ends the run with a UserError,
    before the poisoned state can be saved (the last good checkpoint is kept).
    skip: the step already dropped its update in-graph (salt_jax.train.step.Guard);
    each one is logged, and `max_skipped` in a row ends the run the same way.
    """

    def __init__(self, policy: str, max_skipped: int, ckpt):
        self.policy, self.max_skipped, self.ckpt, self.in_a_row = policy, max_skipped, ckpt, 0
        self.unchecked: list = []

    def add(self, done: int, step_metrics) -> None:
        self.unchecked.append(step_metrics)

    def check(self, done: int) -> None:
        host = jax.device_get([(m["loss"], m["grad_norm"]) for m in self.unchecked])
        self.unchecked = []
        for i, (loss, grad) in enumerate(host):
            step = done - len(host) + i + 1
            if np.isfinite(loss) and np.isfinite(grad):
                self.in_a_row = 0
                continue
            self.in_a_row += 1
            if self.policy == "skip" and self.in_a_row < self.max_skipped:
                logging.warning("step %d: non-finite loss or gradients; update skipped (config.train.nan_policy="
                                "skip)", step)
                continue
            self.ckpt.wait()
            last = self.ckpt.latest_step()
            what = (f"{self.in_a_row} steps in a row (config.train.max_skipped_steps={self.max_skipped})"
                    if self.policy == "skip" else f"step {step}")
            kept = f"the last good checkpoint, step {last}, is kept" if last is not None else "no checkpoint yet"
            raise UserError(f"training diverged: non-finite loss or gradients at {what}; lower "
                            f"config.optim.learning_rate or set config.train.nan_policy=skip ({kept})")

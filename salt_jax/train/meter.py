"""The training clock: seconds spent in training steps, and the timing of each log interval.

`StepMeter` keeps the training clock (steps that compile a program, and
evaluation, are kept off it) and the metrics of the current log interval;
`TrainClock` is the clock itself, carried across resumes.
"""

from __future__ import annotations

import logging
import time

import jax


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

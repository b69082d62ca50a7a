"""Surviving faults: the preemption notice (SIGTERM), Ctrl-C (SIGINT) and the fault-injection hooks.

Preemptible TPU VMs and GPU nodes send SIGTERM some seconds before they go
away. `Preemption` turns it into a request the training loop sees between
steps: the loop checkpoints the step it reached and exits 0, and re-running
the same command resumes there. If that takes longer than the grace period a
watchdog ends the process with status 3 (the last complete checkpoint is
still there; a half-written one is never picked up). Ctrl-C is the same
request (the run exits 130, the shell's status for an interrupted command,
after the checkpoint); a second Ctrl-C exits at once with 130.

`KillHooks` (config.train.debug_kill) sends SIGKILL to the process at named
points, so tests and drills can crash a run exactly mid-KD-phase, at the phase
switch, in phase two or while a checkpoint is being written, without editing code.

`NonFiniteCheck` enforces config.train.nan_policy before every checkpoint, so
a diverged run never saves its poisoned state.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

import jax
import numpy as np

from salt_jax.errors import INTERRUPTED_STATUS, UserError

GRACE_EXCEEDED_STATUS = 3


class Preempted(Exception):
    """A run stopped on a preemption notice after checkpointing (not an error: exit status 0). The training
    loop raises it (or Interrupted) once the step reached is on disk: the one way a stop is reported."""


class Interrupted(Preempted):
    """A run stopped by Ctrl-C after checkpointing (exit status 130)."""


class Preemption:
    """SIGTERM or Ctrl-C -> a stop request, agreed on by every process, answered within a grace period."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, grace_s: float):
        self.grace_s = grace_s
        self.requested_at: float | None = None
        self.signal: str | None = None  # "SIGTERM" or "SIGINT", once one arrived
        self._previous: dict = {}
        self._done = threading.Event()

    def __enter__(self) -> "Preemption":
        if threading.current_thread() is threading.main_thread():  # signals can only be set there
            self._previous = {s: signal.signal(s, self._on_signal) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _on_signal(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.requested_at is not None:
            if signum == signal.SIGINT:  # the second Ctrl-C: no waiting
                logging.warning("second Ctrl-C: exiting now (the last complete checkpoint is kept)")
                os._exit(INTERRUPTED_STATUS)
            return
        self.requested_at, self.signal = time.monotonic(), name
        what = "Ctrl-C" if signum == signal.SIGINT else name
        logging.warning("%s received: checkpointing the step reached and exiting within %.0fs%s", what,
                        self.grace_s, " (Ctrl-C again to exit at once)" if signum == signal.SIGINT else "")
        threading.Thread(target=self._watchdog, daemon=True).start()

    def _watchdog(self) -> None:
        if not self._done.wait(self.grace_s):
            logging.error("preemption: the checkpoint did not finish within config.train.preemption_grace_s=%.0fs; "
                          "exiting (the last complete checkpoint is kept)", self.grace_s)
            os._exit(GRACE_EXCEEDED_STATUS)

    def finished(self) -> None:
        """The checkpoint is written: the watchdog stands down."""
        self._done.set()

    def should_stop(self, sync: bool) -> bool:
        """Whether to stop now. With several processes every one must agree, so they
        exchange their flags (a host sync) when `sync` is true and keep going otherwise."""
        local = self.requested_at is not None
        if jax.process_count() == 1:
            return local
        if not sync:
            return False
        from jax.experimental import multihost_utils

        return bool(np.max(multihost_utils.process_allgather(np.int32(local))))


def parse_steps(spec: str, field: str) -> tuple[int, ...]:
    """"3,7" -> (3, 7): the steps named by a comma-separated config field."""
    try:
        return tuple(int(x) for x in spec.split(",") if x.strip())
    except ValueError:
        raise UserError(f"{field}={spec!r}: give comma-separated step numbers, e.g. '3,7'") from None


class KillHooks:
    """SIGKILL at "step:N" (after step N has run, once earlier checkpoints are on disk), "save:N"
    (while checkpoint N is being written, before it is complete) or "cache:N" (after the teacher cache's
    file of step N is written, salt_jax.kd.teacher_cache)."""

    POINTS = ("step", "save", "cache")

    def __init__(self, spec: str):
        self.points = set()
        for item in filter(None, (x.strip() for x in spec.split(","))):
            kind, _, n = item.partition(":")
            if kind not in self.POINTS or not n.isdigit():
                raise UserError(f"config.train.debug_kill={spec!r}: use comma-separated step:N, save:N or cache:N")
            self.points.add((kind, int(n)))

    def wants(self, kind: str, step: int) -> bool:
        return (kind, step) in self.points

    def maybe_kill(self, kind: str, step: int) -> None:
        if self.wants(kind, step):
            logging.warning("debug_kill: SIGKILL at %s:%d", kind, step)
            for h in logging.getLogger().handlers:
                h.flush()
            os.kill(os.getpid(), signal.SIGKILL)


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

    def add(self, step_metrics) -> None:
        """Keeps a step's metrics (its loss and gradient norm) for the next check."""
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

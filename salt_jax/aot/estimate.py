"""What a compiled TPU program tells before it runs: memory per chip, and the compiler's cost estimate.

Everything here is a compiler estimate, not a measurement. The memory numbers
are the compiler's own accounting (a program that does not fit fails to
compile with RESOURCE_EXHAUSTED), so "fits" is as reliable as the compiler.
The step time is XLA's cost model (`optimal_seconds`), with three corrections:

1. Loops. The cost model counts a while-loop body once, whatever its trip
   count: the scanned layer stacks (student forward and backward, teacher
   forward) and the chunked loss's scan. For each loop i with n_i trips we
   also compile the program with that loop's body unrolled twice; the body
   costs C_i - C_0 per extra counted iteration, so the step costs
   C_0 + sum_i (n_i - 1) (C_i - C_0) / (counted_i - 1), counted_i being the
   iterations the unrolled program's cost counts (2, or 3 for an odd n_i).
2. Kernels. Splash attention is a custom call the cost model prices at
   nearly nothing. We add causal attention's FLOPs at the chip's peak
   (forward, backward and the remat recomputation for the student, forward
   for the teacher): a lower bound on its time.
3. Negative entries. On some generations some ConcatBitcast custom calls and
   collective-permutes enter optimal_seconds as -1 s each (not all of them:
   on a v5e the same instructions often cost nothing). So the true value is
   the reported one plus j seconds, 0 <= j <= the number of such
   instructions; we take the smallest j that brings it up to the program's
   compute bound (its FLOPs at the chip's peak, below which no estimate can
   be), and report the estimate as unavailable when no j does. This assumes
   the cost model's time is within 1 s above the compute bound, true of the
   matmul-bound steps here (e.g. 566 ms against a 300 ms bound for the 2.8B
   step on a v5p-128).
"""

from __future__ import annotations

import dataclasses
import math
import re

from salt_jax.model.flops import attended_keys, flops_per_token, layer_windows, train_flops_per_token

LABEL = "compiler estimate, not a measurement"
# Instructions libtpu's cost model prices at -1 s each (see correction 3).
_NEGATIVE = (re.compile(r'custom_call_target="ConcatBitcast"'), re.compile(r" collective-permute(-start)?\("))


@dataclasses.dataclass(frozen=True)
class Cost:
    """One compiled program's cost-analysis numbers, per chip."""

    flops: float
    bytes_accessed: float
    seconds: float | None  # optimal_seconds with correction 3 applied; None when libtpu gave none
    kernels: bool = False  # the program calls a Pallas TPU kernel (splash attention) the cost model cannot price

    def __sub__(self, other: "Cost") -> "Cost":
        return Cost(self.flops - other.flops, self.bytes_accessed - other.bytes_accessed,
                    None if self.seconds is None or other.seconds is None else self.seconds - other.seconds,
                    self.kernels)

    def scaled(self, k: float) -> "Cost":
        return Cost(self.flops * k, self.bytes_accessed * k, None if self.seconds is None else self.seconds * k,
                    self.kernels)

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.flops + other.flops, self.bytes_accessed + other.bytes_accessed,
                    None if self.seconds is None or other.seconds is None else self.seconds + other.seconds,
                    self.kernels or other.kernels)


def negative_entries(hlo_text: str) -> int:
    """How many instructions of the compiled HLO the cost model prices at -1 s."""
    return sum(len(p.findall(hlo_text)) for p in _NEGATIVE)


def cost_of(compiled, peak: float) -> Cost:
    """The compiled program's cost analysis per chip, its seconds corrected for -1 s entries (correction 3)."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older jax: one dict per program
        analysis = analysis[0]
    text = compiled.as_text()
    flops = float(analysis.get("flops", 0.0))
    seconds = analysis.get("optimal_seconds")
    if seconds is not None:
        seconds = corrected_seconds(float(seconds), negative_entries(text), flops / peak)
    return Cost(flops, float(analysis.get("bytes accessed", 0.0)), seconds,
                'custom_call_target="tpu_custom_call"' in text)


def corrected_seconds(reported: float, negatives: int, compute_bound: float) -> float | None:
    """reported + j for the smallest j in [0, negatives] reaching the compute bound; None if none does."""
    j = max(0, math.ceil(compute_bound - reported - 1e-12))
    return reported + j if j <= negatives else None


def counted_iterations(trips: int, unroll: int) -> int:
    """Iterations a loop of `trips` trips unrolled `unroll`-fold contributes to the cost model: one body of
    `unroll` iterations, plus the `trips % unroll` left over (jax runs those outside the loop)."""
    return unroll + trips % unroll


def extrapolate(base: Cost, unrolled: dict[str, Cost], trips: dict[str, int], unroll: int = 2) -> Cost:
    """The whole step's cost from the rolled program and one program per loop with that loop unrolled."""
    total = base
    for loop, n in trips.items():
        if n <= 1 or loop not in unrolled:
            continue  # a one-trip loop is counted exactly
        per_iteration = (unrolled[loop] - base).scaled(1.0 / (counted_iterations(n, unroll) - 1))
        total = total + per_iteration.scaled(n - 1)
    return total


def memory_of(compiled) -> dict:
    """Per-chip bytes: arguments, outputs, aliased (donated) bytes, temporaries, code, and their peak."""
    m = compiled.memory_analysis()
    out = {"argument": m.argument_size_in_bytes, "output": m.output_size_in_bytes, "alias": m.alias_size_in_bytes,
           "temp": m.temp_size_in_bytes, "code": m.generated_code_size_in_bytes}
    out["peak"] = out["argument"] + out["output"] - out["alias"] + out["temp"] + out["code"]
    return out


def attention_flops_per_token(cfg, seq_len: int) -> float:
    """Forward FLOPs of causal attention's two matmuls per token (QK^T and AV), summed over layers."""
    return 4.0 * cfg.n_heads * cfg.head_dim * sum(attended_keys(seq_len, w) for w in layer_windows(cfg))


def kernel_attention_flops(program: str, student_cfg, teacher_cfg, seq_len: int) -> float:
    """Attention FLOPs per token that run inside a kernel the cost model does not price (correction 2).

    Counts the models configured for splash; `step_estimate` applies it only when the compiled program
    does call a kernel (splash falls back to XLA for lengths that are not a multiple of its block).
    """
    total = 0.0
    if program in ("kd", "baseline") and student_cfg.attention == "splash":
        passes = 3 + (0 if student_cfg.remat == "none" else 1)  # forward, backward (2x), remat's recompute
        total += passes * attention_flops_per_token(student_cfg, seq_len)
    if program in ("kd", "scoring") and teacher_cfg is not None and teacher_cfg.attention == "splash":
        total += attention_flops_per_token(teacher_cfg, seq_len)
    return total


def model_flops_per_token(program: str, student_cfg, teacher_cfg, seq_len: int) -> float:
    """Model FLOPs per token (salt_jax.model.flops: 3 F_S, + F_T in the KD step; F_T for scoring)."""
    if program == "scoring":
        return flops_per_token(teacher_cfg, seq_len)
    return train_flops_per_token(student_cfg, seq_len, teacher_cfg if program == "kd" else None)


def step_estimate(total: Cost, program: str, student_cfg, teacher_cfg, batch: int, seq_len: int, chips: int,
                  peak: float | None) -> dict:
    """Seconds per step and the MFU they imply, corrections applied; None where the estimate is unusable."""
    tokens = batch * seq_len
    kernel_s = 0.0
    if total.kernels:
        kernel_s = kernel_attention_flops(program, student_cfg, teacher_cfg, seq_len) * tokens / chips / peak
    compute_bound = total.flops / peak  # the compiler's own FLOPs at peak: no estimate can be faster
    usable = total.seconds is not None and total.seconds >= 0.99 * compute_bound
    seconds = total.seconds + kernel_s if usable else None
    model = model_flops_per_token(program, student_cfg, teacher_cfg, seq_len) * tokens
    return {"flops_per_chip": total.flops, "bytes_accessed_per_chip": total.bytes_accessed,
            "compiler_seconds": total.seconds, "kernel_attention_seconds": kernel_s,
            "step_seconds": seconds, "model_flops": model,
            "mfu": model / (seconds * chips * peak) if seconds else None,
            "unavailable": None if usable else ("libtpu gave no optimal_seconds" if total.seconds is None else
                                                f"optimal_seconds {total.seconds:.3g} s is below the compute "
                                                f"bound {compute_bound:.3g} s"),
            "label": LABEL}

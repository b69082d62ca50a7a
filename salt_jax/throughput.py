"""Throughput accounting: FLOPs per training token, and MFU against a device's peak.

FLOPs per token of a forward pass are `salt_jax.model.flops_per_token`
(2 x matmul parameters incl. the output projection, plus causal attention
2 * n_layers * n_heads * head_dim * seq_len). A training step costs 3x that
(forward + backward: the backward is two matmuls per forward matmul). A KD
step adds the frozen teacher's forward once:

    step FLOPs / token = 3 F_S + F_T

so the KD/baseline cost ratio is 1 + F_T / (3 F_S) ~ 1 + N_T / (3 N_S), the
FLOP model of docs/salt-method.md. Remat recomputation is not counted (MFU,
not hardware FLOP utilisation).

MFU = achieved model FLOP/s / (devices x peak FLOP/s per device). Peaks are
dense bf16 matmul numbers (no sparsity) from the vendors' data sheets; a run
in float32 is still measured against the bf16 peak, as is usual.
"""

from __future__ import annotations

import jax

from salt_jax.model import flops_per_token

# device_kind substring -> peak dense bf16 FLOP/s per JAX device; first match wins.
PEAK_FLOPS = (
    # NVIDIA data sheets (SXM parts, dense Tensor Core bf16, without sparsity).
    ("H200", 989e12),  # H200 SXM: 989 TFLOP/s (same Hopper core as H100 SXM)
    ("H100 PCIe", 756e12),  # H100 PCIe: 756 TFLOP/s
    ("H100", 989e12),  # H100 SXM: 989 TFLOP/s
    ("A100", 312e12),  # A100: 312 TFLOP/s
    ("L4", 121e12),  # L4: 121 TFLOP/s
    # Google Cloud TPU system-architecture pages (bf16 per chip; one JAX device per chip
    # from v4 on, one per core on v2/v3).
    ("TPU v6 lite", 918e12),  # v6e (Trillium)
    ("TPU v5 lite", 197e12),  # v5e
    ("TPU v5", 459e12),  # v5p
    ("TPU v4", 275e12),
    ("TPU v3", 61.5e12),  # 123 TFLOP/s per chip, 2 cores
)


def peak_flops(device_kind: str | None = None, override_tflops: float = 0.0) -> float | None:
    """Peak FLOP/s of one device: the override (TFLOP/s) if given, else the table; None when unknown."""
    if override_tflops > 0:
        return override_tflops * 1e12
    kind = device_kind if device_kind is not None else jax.devices()[0].device_kind
    for key, peak in PEAK_FLOPS:
        if key in kind:
            return peak
    return None


def train_flops_per_token(student_cfg, seq_len: int, teacher_cfg=None) -> float:
    """Model FLOPs per trained token: 3 F_S, plus F_T when a teacher forward runs in the step."""
    flops = 3.0 * flops_per_token(student_cfg, seq_len)
    if teacher_cfg is not None:
        flops += flops_per_token(teacher_cfg, seq_len)
    return flops


def mfu(tokens_per_sec: float, flops_per_tok: float, n_devices: int, peak: float | None) -> float | None:
    """Model FLOP utilisation in [0, 1]: achieved model FLOP/s over the devices' total peak."""
    if peak is None or not tokens_per_sec:
        return None
    return tokens_per_sec * flops_per_tok / (n_devices * peak)

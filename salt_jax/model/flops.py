"""FLOP accounting, in one place: parameters, FLOPs per token, the KD step's cost model, and MFU.

FLOPs per token of a forward pass are `flops_per_token`
(2 x matmul parameters incl. the output projection, plus causal attention
2 * n_layers * n_heads * head_dim * seq_len). A training step costs 3x that
(forward + backward: the backward is two matmuls per forward matmul). A KD
step adds the frozen teacher's forward once:

    step FLOPs / token = 3 F_S + F_T

so the KD/baseline cost ratio is 1 + F_T / (3 F_S) ~ 1 + N_T / (3 N_S), the
FLOP model of SALT (Rawat et al. 2024). Remat recomputation is not counted (MFU,
not hardware FLOP utilisation).

MFU = achieved model FLOP/s / (devices x peak FLOP/s per device). Peaks are
dense bf16 matmul numbers (no sparsity) from the vendors' data sheets; a run
in float32 is still measured against the bf16 peak, as is usual.
"""

from __future__ import annotations

import dataclasses

import jax
import ml_collections

from salt_jax.model.transformer import local_layer_flags, option


def embedding_params(cfg: ml_collections.ConfigDict) -> int:
    """The parameters of the token embedding and output head (once when tied) and learned positions."""
    embed = cfg.vocab_size * cfg.d_model * (1 if cfg.tie_embeddings else 2)
    return embed + (cfg.max_len * cfg.d_model if option(cfg, "positions") == "learned" else 0)


def param_count(cfg: ml_collections.ConfigDict) -> int:
    """Closed-form parameter count of a model config (architecture options included)."""
    d, f, h = cfg.d_model, cfg.mlp_dim, cfg.head_dim
    attn = d * h * (2 * cfg.n_heads + 2 * cfg.n_kv_heads)
    attn += h * (cfg.n_heads + 2 * cfg.n_kv_heads) if option(cfg, "qkv_bias") else 0
    attn += d if option(cfg, "o_bias") else 0
    attn += 2 * h if option(cfg, "qk_norm") else 0
    gated = option(cfg, "mlp") == "gated"
    mlp = (3 if gated else 2) * d * f + ((2 if gated else 1) * f + d if option(cfg, "mlp_bias") else 0)
    norm_size = d * (2 if option(cfg, "norm") == "layer" else 1)  # scale (+ bias)
    per_layer = (4 if option(cfg, "post_norms") else 2) * norm_size + attn + mlp
    return embedding_params(cfg) + cfg.n_layers * per_layer + norm_size


def flops_per_token(cfg: ml_collections.ConfigDict, seq_len: int) -> float:
    """Forward FLOPs per token: 2 * (matmul params) + causal attention scores and mix.

    2 * N_matmul counts every weight matmul including the output projection (the
    input embedding is a gather and costs nothing); attention adds
    2 * 2 * n_heads * head_dim * (mean keys per query) per layer (QK^T and AV), the
    keys capped by the layer's sliding window (`attended_keys`).
    A training step costs 3x this (forward + backward).
    """
    d, f = cfg.d_model, cfg.mlp_dim
    mlp = (3 if option(cfg, "mlp") == "gated" else 2) * d * f
    matmul = cfg.n_layers * (d * cfg.head_dim * (2 * cfg.n_heads + 2 * cfg.n_kv_heads) + mlp)
    matmul += d * cfg.vocab_size
    keys = sum(attended_keys(seq_len, w) for w in layer_windows(cfg))  # keys per query, summed over layers
    attn = 4 * cfg.n_heads * cfg.head_dim * keys
    return 2.0 * matmul + attn


def layer_windows(cfg: ml_collections.ConfigDict) -> list[int]:
    """Per layer, the keys a query may attend to at most: the sliding window, or 0 (all earlier positions)."""
    window = option(cfg, "sliding_window")
    if not window:
        return [0] * cfg.n_layers
    flags = local_layer_flags(cfg) or [True] * cfg.n_layers
    return [window if local else 0 for local in flags]


def attended_keys(seq_len: int, window: int = 0) -> float:
    """Mean keys per query of causal attention over `seq_len` positions, within `window` (0 = unlimited).

    The continuous count used for FLOPs: T/2 for full causal attention, and
    W - W^2 / (2T) when a window W < T caps it (T*W - W^2/2 query-key pairs).
    """
    if not window or window >= seq_len:
        return seq_len / 2
    return window - window * window / (2 * seq_len)


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


@dataclasses.dataclass(frozen=True)
class RunFlops:
    """What MFU needs of a run: FLOPs per trained token of the student (3 F_S) and of the teacher's
    forward (F_T, 0 without one), the device count, and the per-device peak (None when unknown)."""

    student: float
    teacher: float
    devices: int
    peak: float | None

    @classmethod
    def of(cls, student_cfg, seq_len: int, teacher_cfg, devices: int, override_tflops: float = 0.0,
           teacher_seq_len: int = 0) -> "RunFlops":
        """`teacher_seq_len`: the teacher's tokens per student window when it tokenizes otherwise (its forward
        per student token is then its FLOPs per token at that length times teacher_seq_len / seq_len)."""
        t_len = teacher_seq_len or seq_len
        return cls(train_flops_per_token(student_cfg, seq_len),
                   flops_per_token(teacher_cfg, t_len) * t_len / seq_len if teacher_cfg is not None else 0.0,
                   devices, peak_flops(override_tflops=override_tflops))

    def throughput(self, tokens_per_sec: float | None, kd_share: float) -> dict:
        """Model TFLOP/s (teacher forward included, on the `kd_share` of steps that ran it) and MFU of the
        student alone and with the teacher."""
        if not tokens_per_sec:
            return {"model_tflops_per_sec": None, "mfu": None, "mfu_with_teacher": None}
        per_tok = self.student + kd_share * self.teacher
        return {"model_tflops_per_sec": tokens_per_sec * per_tok / 1e12,
                "mfu": mfu(tokens_per_sec, self.student, self.devices, self.peak),
                "mfu_with_teacher": mfu(tokens_per_sec, per_tok, self.devices, self.peak)}


def kd_cost_ratio(student_cfg, teacher_cfg, seq_len: int) -> float:
    """The FLOP model of a KD step over a baseline step: (3 F_S + F_T) / (3 F_S) = 1 + r."""
    return train_flops_per_token(student_cfg, seq_len, teacher_cfg) / train_flops_per_token(student_cfg, seq_len)

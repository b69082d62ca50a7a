"""NumPy float64 reference implementations, written independently of salt_jax."""

import numpy as np


def rms_norm(x, scale, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * scale


def rope(x, base):
    """x [t, n, h] -> rotated, pairing dimension i with i + h/2 (rotate-half convention)."""
    t, _, h = x.shape
    half = h // 2
    inv = base ** (-np.arange(half) / half)
    ang = np.arange(t)[:, None] * inv[None, :]
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    a, b = x[..., :half], x[..., half:]
    return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)


def softmax(z, axis=-1):
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def log_softmax(z, axis=-1):
    z = z - z.max(axis=axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))


def transformer_logits(params, cfg, tokens):
    """Logits [b, t, V] of the Llama-style decoder for one batch of token ids."""
    p = {k: v for k, v in params.items()}
    f64 = lambda a: np.asarray(a, np.float64)  # noqa: E731
    embed = f64(p["embed"])
    out = []
    for seq in np.asarray(tokens):
        x = embed[seq]
        t = len(seq)
        layers = p["layers"]
        for i in range(cfg.n_layers):
            g = lambda *path: f64(_get(layers, path))[i]  # noqa: E731
            h = rms_norm(x, g("attn_norm", "scale"), cfg.norm_eps)
            q = rope(np.einsum("td,dnh->tnh", h, g("attn", "q")), cfg.rope_base)
            k = rope(np.einsum("td,dnh->tnh", h, g("attn", "k")), cfg.rope_base)
            v = np.einsum("td,dnh->tnh", h, g("attn", "v"))
            rep = cfg.n_heads // cfg.n_kv_heads
            k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
            scores = np.einsum("qnh,knh->nqk", q, k) / np.sqrt(cfg.head_dim)
            scores = np.where(np.tril(np.ones((t, t), bool))[None], scores, -np.inf)
            y = np.einsum("nqk,knh->qnh", softmax(scores), v)
            x = x + np.einsum("tnh,nhd->td", y, g("attn", "o"))
            h = rms_norm(x, g("mlp_norm", "scale"), cfg.norm_eps)
            gate, up = h @ g("mlp", "gate"), h @ g("mlp", "up")
            x = x + (gate / (1 + np.exp(-gate)) * up) @ g("mlp", "down")
        x = rms_norm(x, f64(p["final_norm"]["scale"]), cfg.norm_eps)
        head = embed.T if cfg.tie_embeddings else f64(p["lm_head"])
        out.append(x @ head)
    return np.stack(out)


def _get(tree, path):
    for k in path:
        tree = tree[k]
    return tree


def next_token_ce(logits, targets):
    """Per-position -log softmax(logits)[target], float64."""
    lp = log_softmax(np.asarray(logits, np.float64))
    return -np.take_along_axis(lp, np.asarray(targets)[..., None], axis=-1)[..., 0]

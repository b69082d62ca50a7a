"""The cached-KD step with the fused sparse KD against the earlier implementation, in one process.

    python scripts/bench_sparse.py --config=configs/bench.py [--config.* overrides] [--rounds=2] [--repeats=N]

Runs `salt_jax.bench.bench_steps` (baseline, online KD and cached-KD steps, same shapes) `rounds` times for
each implementation, alternating: "old" traces the loss with the earlier sparse KD (a second log-softmax,
[.., V] masks and scatters: `sparse.sparse_kd_value_and_grad`, and autodiff through `sparse.sparse_kd_per_token` in the
dense loss), "new" with the fused one. Prints each run's medians and the median over runs of the cached
step's ratio to the baseline step.
"""

import statistics
import sys

import jax
import jax.numpy as jnp
from absl import app

from salt_jax import bench, cli
from salt_jax.kd import losses, sparse

_ROUNDS = bench._ROUNDS  # salt_jax.bench's --rounds (absl has one flag of a name): runs per implementation here


def _old_chunk_terms(s, y, t, tau, kind, ce_w, kd_w, unit_tau=False):
    log_q1 = jax.nn.log_softmax(s, axis=-1)
    ce = -jnp.take_along_axis(log_q1, y[..., None], axis=-1)[..., 0]
    d_ce = jnp.exp(log_q1) - jax.nn.one_hot(y, s.shape[-1], dtype=jnp.float32)
    kd, d_kd = sparse.sparse_kd_value_and_grad(s, t, tau, kind)
    return ce, kd, ce_w[..., None] * d_ce + kd_w[..., None] * d_kd


def _old_dense_terms(s, y, t, tau, kind, unit_tau=False):
    return losses.token_ce(s, y), sparse.sparse_kd_per_token(s, t, tau, kind)


def main(argv):
    del argv
    cli.keep_jax_off_an_absent_tpu()  # (a host with libtpu and no TPU: the CPU, quietly)
    config, t_cfg = bench.model_configs(bench.load_config(bench._CONFIG))  # bench's --config
    new = (sparse.ce_kd_value_and_grad, sparse.ce_and_kd)
    runs = {"old": [], "new": []}
    for _ in range(_ROUNDS.value):
        for name in ("old", "new"):
            sparse.ce_kd_value_and_grad, sparse.ce_and_kd = (_old_chunk_terms, _old_dense_terms) if name == "old" \
                else new
            try:
                s = bench.bench_steps(config, t_cfg, bench._REPEATS.value, config.salt.cache_k)
            finally:
                sparse.ce_kd_value_and_grad, sparse.ce_and_kd = new
            runs[name].append(s)
            print(f"{name}: baseline {s['baseline_step_s'] * 1e3:.1f} ms | online KD {s['kd_step_s'] * 1e3:.1f} ms "
                  f"({s['measured_ratio']:.3f}x) | cached top-{s['cache_k']} {s['cached_kd_step_s'] * 1e3:.1f} ms "
                  f"({s['cached_ratio']:.3f}x)", flush=True)
    for name, rs in runs.items():
        print(f"{name}: median over {len(rs)} runs: baseline "
              f"{statistics.median(r['baseline_step_s'] for r in rs) * 1e3:.1f} ms, cached "
              f"{statistics.median(r['cached_kd_step_s'] for r in rs) * 1e3:.1f} ms, cached/baseline "
              f"{statistics.median(r['cached_ratio'] for r in rs):.3f}")


if __name__ == "__main__":
    sys.exit(app.run(main))

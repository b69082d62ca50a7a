"""Step-indexed batches: the batch of step s is a pure function of (token store, seed, s).

Global example index i = s*B + j maps to epoch i // n_rows and to position
i % n_rows of that epoch's shuffle, seeded by (seed, epoch). The shuffle is a
bijection computed per index (grain's `index_shuffle`, a keyed Feistel
network), so no permutation of all rows is ever built: a step's indices cost
O(B) time and memory whatever the corpus size (the Pile at 2048 tokens is
~150M rows, a 1.2 GB permutation per epoch). Resuming needs
only s, on any number of hosts; each host reads only its own rows of the
global batch (`host_rows`). A `Prefetcher` reads the coming steps' rows in a
background thread. The held-out set is read in order (`heldout_batches`).

A mixture of corpora (salt_jax.data.mixture) draws each example's corpus by
weight, still per index (`mixture_indices`): the batch of step s is a pure
function of (the stores, the weights, seed, s).
"""

from __future__ import annotations

import bisect
import functools
import itertools
import queue
import threading
from typing import Callable

import jax
import numpy as np

from salt_jax.data.store import Store, TokenSplit
from salt_jax.errors import UserError


# Feistel rounds. 8, not grain's example value of 4: with 4 rounds, consecutive positions of a
# 1M-row shuffle land on rows whose indices correlate at r = 0.42 (8 rounds: |r| < 0.02), i.e.
# neighbouring examples of a batch would come from nearby parts of the corpus.
SHUFFLE_ROUNDS = 8


@functools.lru_cache(maxsize=64)
def _epoch_seed(seed: int, epoch: int, *stream: int) -> int:
    """A 31-bit key per (seed, epoch[, stream]), so every epoch (of every mixture component) is shuffled
    differently."""
    return int(np.random.SeedSequence([seed, epoch, *stream]).generate_state(1)[0] >> 1)


def batch_indices(step: int, batch_size: int, n_rows: int, seed: int, part: slice = slice(None)) -> np.ndarray:
    """Row indices of the global batch for `step` (only its positions `part`, e.g. this host's): a pure
    function of its arguments, O(batch_size)."""
    from grain.experimental import index_shuffle  # noqa: PLC0415 -- 1.2 s to import; only runs that train pay it

    positions = range(step * batch_size, (step + 1) * batch_size)[part]
    out = np.empty(len(positions), np.int64)
    for k, i in enumerate(positions):
        epoch, pos = divmod(i, n_rows)
        out[k] = index_shuffle(pos, n_rows - 1, _epoch_seed(seed, epoch), SHUFFLE_ROUNDS)
    return out


_MIXTURE_STREAM = 0x4D4958  # keys the mixture's slot shuffles apart from its components' row shuffles


def mixture_indices(step: int, batch_size: int, counts: np.ndarray, n_rows: np.ndarray, seed: int,
                    part: slice = slice(None)) -> tuple[np.ndarray, np.ndarray]:
    """(component, row of that component) of each example of step's global batch (its positions `part`): a
    pure function of its arguments, O(batch_size), no permutation of any corpus built.

    Stratified by weight. Global example i is slot i mod P of period i div P
    (P = sum(counts), salt_jax.data.mixture.PERIOD); each period's P slots are
    shuffled (index_shuffle keyed by (seed, period)) and slot r belongs to
    component c when starts[c] <= r < starts[c] + counts[c]. So every period
    holds exactly counts[c] examples of component c, in random positions, and
    the k-th example of c (k = period * counts[c] + r - starts[c]) is known
    without counting earlier draws: it is position k mod n_c of c's own
    epoch-shuffle of its n_c rows (keyed by (seed, k div n_c, c)), exactly as a
    single corpus draws its rows. A component visits each of its rows once per
    its own epoch, its share over whole periods is its weight (quantised to
    1/P), and within a period the batch's mix is a draw without replacement,
    whose spread is at most a multinomial's. A per-index hash choice (i.i.d. by
    weight) would need a count of earlier hits to find a component's k, i.e. a
    scan, or would give up one-visit-per-epoch.
    """
    from grain.experimental import index_shuffle  # noqa: PLC0415 -- as in batch_indices

    counts, n_rows = [int(x) for x in counts], [int(x) for x in n_rows]
    starts = [0, *itertools.accumulate(counts)]
    period = starts[-1]
    positions = range(step * batch_size, (step + 1) * batch_size)[part]
    comp, row = np.empty(len(positions), np.int64), np.empty(len(positions), np.int64)
    for k, i in enumerate(positions):
        block, slot = divmod(i, period)
        r = index_shuffle(slot, period - 1, _epoch_seed(seed, block, _MIXTURE_STREAM), SHUFFLE_ROUNDS)
        c = bisect.bisect_right(starts, r) - 1
        epoch, pos = divmod(block * counts[c] + r - starts[c], n_rows[c])
        comp[k], row[k] = c, index_shuffle(pos, n_rows[c] - 1, _epoch_seed(seed, epoch, c), SHUFFLE_ROUNDS)
    return comp, row


def host_rows(global_batch: int) -> slice:
    """This process's contiguous slice of a global batch's rows."""
    n, p = jax.process_count(), jax.process_index()
    per = global_batch // n
    return slice(p * per, (p + 1) * per)


class Batches:
    """Step-indexed training batches of one split (or of a subset of its rows), sharded onto the mesh."""

    def __init__(self, split: TokenSplit, batch_size: int, seed: int, rows: np.ndarray | None = None):
        if split.n_rows < 1:
            raise UserError(f"config.data.seq_len={split.seq_len}: the training split has fewer tokens than "
                            "one sequence; lower seq_len or add data")
        self.split, self.batch_size, self.seed = split, batch_size, seed
        self.rows = None if rows is None else np.asarray(rows, np.int64)
        self.n_rows = split.n_rows if rows is None else len(self.rows)

    def indices(self, step: int, part: slice = slice(None)) -> np.ndarray:
        """Row indices (into the split) of the global batch for `step` (its positions `part`)."""
        idx = batch_indices(step, self.batch_size, self.n_rows, self.seed, part)
        return idx if self.rows is None else self.rows[idx]

    def numpy(self, step: int) -> np.ndarray:
        """This host's rows of the global batch for `step`, [rows, seq_len + 1] int32."""
        return self.split.rows(self.indices(step, host_rows(self.batch_size)))

    def device(self, step: int, sharding, rows: np.ndarray | None = None) -> jax.Array:
        """The global batch of `step` on the mesh; `rows`: this host's rows, if already read (Prefetcher)."""
        return jax.make_array_from_process_local_data(sharding, self.numpy(step) if rows is None else rows,
                                                      (self.batch_size, self.split.seq_len + 1))


class MixtureBatches(Batches):
    """Step-indexed training batches of a mixture: each example's corpus drawn by weight (`mixture_indices`),
    its row read from the concatenated split (salt_jax.data.mixture.ConcatSplit)."""

    def __init__(self, split, batch_size: int, seed: int, counts: np.ndarray):
        super().__init__(split, batch_size, seed)
        self.counts = np.asarray(counts, np.int64)

    def indices(self, step: int, part: slice = slice(None)) -> np.ndarray:
        comp, row = mixture_indices(step, self.batch_size, self.counts, self.split.sizes, self.seed, part)
        return self.split.offsets[comp] + row


def training_batches(cache: Store, batch_size: int, seed: int) -> Batches:
    """The training batches of a token store, or of a mixture's stores (a MixtureStore: its `counts`)."""
    if cache.counts is None:
        return Batches(cache.train, batch_size, seed)
    return MixtureBatches(cache.train, batch_size, seed, cache.counts)


class Prefetcher:
    """Reads this host's rows of the coming steps in a background thread, `depth` steps ahead.

    `source(step)` names the Batches a step reads (the KD phase's or the rest's).
    `take(step, batches)` returns step `step`'s rows as read by the thread, or
    reads them now when the thread read another source for that step (the
    adaptive switch can end the KD phase after the thread has read past it).
    With `place(step, batches, rows)` the thread also puts each step's rows on
    the device (e.g. `Batches.device` with the step's input sharding) and
    `take` returns what it made: the host-to-device copies of the coming steps
    are issued ahead, off the training loop's critical path. Batches are pure
    functions of the step, so the run sees the same batches as without it;
    steps must be taken in order.
    """

    def __init__(self, source: Callable[[int], "Batches"], start: int, stop: int, depth: int,
                 place: Callable[[int, "Batches", np.ndarray], object] | None = None):
        self._place = place
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(source, start, stop), daemon=True,
                                        name="salt_jax-prefetch")
        self._thread.start()

    def _read(self, source, start: int, stop: int) -> None:
        try:
            for step in range(start, stop):
                if self._closed.is_set():
                    return
                batches = source(step)
                self._put((step, batches, self._made(step, batches, batches.numpy(step))))
        except BaseException as e:  # noqa: BLE001 -- handed to the training loop, which raises it
            self._put((None, None, e))

    def _put(self, item) -> None:
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _made(self, step: int, batches: "Batches", rows: np.ndarray):
        return rows if self._place is None else self._place(step, batches, rows)

    def take(self, step: int, batches: "Batches"):
        """Step `step`'s rows (with `place`: what it made of them) from `batches`."""
        got, read_from, item = self._queue.get()
        if got is None:
            raise item
        if got != step:
            raise RuntimeError(f"prefetch: step {got} read, step {step} asked for (steps must be taken in order)")
        return item if read_from is batches else self._made(step, batches, batches.numpy(step))

    def close(self) -> None:
        """Stops the thread and waits for it: no reader may still run when the interpreter exits (a thread
        inside a C extension then aborts the process)."""
        self._closed.set()
        self._thread.join(timeout=60)


def heldout_batches(split: TokenSplit, batch_size: int, max_batches: int, pad_id: int) -> list[np.ndarray]:
    """The held-out set in order, as full batches (the last padded with pad rows, which are masked)."""
    n = split.n_rows if max_batches <= 0 else min(split.n_rows, max_batches * batch_size)
    if n == 0:
        raise UserError(f"config.data: the held-out split has fewer tokens than one sequence of "
                        f"{split.seq_len}; raise config.data.heldout_fraction or lower config.data.seq_len")
    rows = split.rows(np.arange(n))
    n_batches = -(-n // batch_size)
    padded = np.full((n_batches * batch_size, split.seq_len + 1), pad_id, np.int32)
    padded[:n] = rows
    return [padded[b * batch_size:(b + 1) * batch_size][host_rows(batch_size)] for b in range(n_batches)]


def eval_sets(cache: Store, batch_size: int, max_batches: int, pad_id: int) -> dict[str, list[np.ndarray]]:
    """The held-out batches of each corpus: {"": ...} for one store; {name: ...} for each corpus of a mixture,
    each its own split's first `max_batches` batches."""
    return {name: heldout_batches(split, batch_size, max_batches, pad_id)
            for name, split in cache.heldout_splits.items()}

"""Batching for recurrent training: offset streams over one long sequence, whole sequences.

Everything here runs on the host in NumPy (slicing is cheap there) and yields
``numpy.ndarray`` batches; a jitted step moves them to the device when it is called.

* :func:`offset_batches` / :class:`OffsetBatches`: ``B`` parallel streams over one long
  sequence for TBPTT (language modelling). Stream ``b`` starts at offset
  ``b · (N // B)``; consecutive segments of ``T`` steps continue where the last ended,
  so the carry of row ``b`` stays the true state of stream ``b``. Its position can be
  saved and restored.
* :func:`sequence_batches` / :class:`SequenceBatches`: shuffled minibatches of whole
  sequences from an ``(N, L, ...)`` dataset, for full BPTT.
* :func:`split_segments`: ``(B, L, ...) -> (L // T, B, T, ...)``, to train long sequences
  with TBPTT (step by step, or all at once with :func:`jaxrnn.tbptt.make_epoch`).

Example::

  >>> import numpy as np, jaxrnn as jr
  >>> batches = jr.data.offset_batches(np.arange(1000), batch_size=2, seq_len=10)
  >>> x, y = next(batches)
  >>> x[:, :4].tolist(), y[:, :4].tolist()
  ([[0, 1, 2, 3], [500, 501, 502, 503]], [[1, 2, 3, 4], [501, 502, 503, 504]])
  >>> x, y = next(batches)
  >>> x[:, 0].tolist(), batches.position
  ([10, 510], 20)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Callable

import jax
import numpy as np

from jaxrnn import _validate
from jaxrnn._checks import shape_str

__all__ = ["OffsetBatches", "offset_batches", "SequenceBatches", "sequence_batches", "split_segments"]


_positive_int = _validate.positive_int


def _epochs_arg(epochs: Any) -> int | None:
    return _validate.optional(_validate.number, "epochs", epochs, integer=True, low=0,
                              note="(or None: endless)")


def _host_array(name: str, a: Any) -> np.ndarray:
    if isinstance(a, (list, tuple)):
        a = np.asarray(a)
    if not hasattr(a, "shape") or not hasattr(a, "dtype"):
        raise TypeError(f"{name} must be an array, got {type(a).__name__}")
    a = np.asarray(a)
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_ or a.dtype.kind == "V"):
        raise TypeError(f"{name} must hold numbers, got dtype {a.dtype}")
    return a


# --------------------------------------------------------------------------- offset streams


class OffsetBatches(Iterator):
    """``B`` streams over one long sequence, yielding ``(x, y)`` segments of ``T`` steps.

    With ``N`` steps and ``S = N // B``, after ``t`` steps stream ``b`` is at position
    ``p = (b·S + t) mod N``. A segment covers ``t, ..., t + T - 1``::

        x[b, i] = inputs[(b·S + t + i) mod N]
        y[b, i] = inputs[(b·S + t + i + 1) mod N]      (token ids: next-step targets)
        y[b, i] = targets[(b·S + t + i) mod N]          (with separate ``targets``)

    so each stream continues where its last segment ended and wraps to the start of the
    sequence after its end. With next-step targets the pair at the wrap point predicts
    ``inputs[0]`` from ``inputs[N - 1]`` (a corpus usually ends with an end-of-text token,
    which makes that pair a document boundary).

    **One epoch** is ``S`` steps per stream: stream ``b`` reads its own slice
    ``[b·S, (b+1)·S)`` once, and together the streams read every one of the first ``B·S``
    positions exactly once (the last ``N mod B`` positions are read in later epochs). It
    holds ``S // T`` full segments; the last ``S mod T`` steps form a shorter segment
    that is dropped (``drop_remainder=True``) or yielded (``False``). With ``epochs=E``
    iteration stops once every stream has read ``E·S`` steps counted from position 0, so
    a run resumed with ``start=`` stops where the uninterrupted run would; with
    ``epochs=None`` (default) it never stops, and later epochs continue the streams
    (stream ``b`` reads slice ``b + 1`` in epoch 2, and so on, modulo ``N``).

    Attributes:
      position: ``t``, the number of steps each stream has read; the next segment starts
        there. ``state_dict()`` / ``load_state_dict()`` save and restore it.
      steps_per_epoch: ``S = N // B``.
      num_steps: ``N``.
      batch_size, seq_len: ``B``, ``T``.
    """

    def __init__(
        self,
        inputs: Any,
        batch_size: int,
        seq_len: int,
        *,
        targets: Any = None,
        start: int = 0,
        epochs: int | None = None,
        drop_remainder: bool = True,
    ):
        self.batch_size = _positive_int("batch_size", batch_size)
        self.seq_len = _positive_int("seq_len", seq_len)
        self.epochs = _epochs_arg(epochs)
        self.drop_remainder = bool(drop_remainder)
        inputs = _host_array("tokens", inputs)
        if inputs.ndim < 1:
            raise ValueError("tokens must have a time axis: shape (N,) token ids or (N, F) features, got a scalar")
        if targets is None:
            if inputs.ndim == 1 and not np.issubdtype(inputs.dtype, np.integer):
                raise TypeError(
                    f"1-D tokens must be integer token ids (targets are the next ids), got dtype {inputs.dtype}; "
                    "for a real-valued series pass features of shape (N, F) or explicit targets="
                )
            if inputs.ndim > 1 and (np.issubdtype(inputs.dtype, np.integer) or inputs.dtype == np.bool_):
                raise ValueError(
                    f"tokens of shape {shape_str(inputs.shape)} with the integer dtype {inputs.dtype} and no "
                    "targets: token ids must be one 1-D stream (N,) (for several sequences, concatenate them: "
                    "tokens.reshape(-1)); features (N, F) must be floating (tokens.astype(np.float32)), or pass "
                    "targets= explicitly"
                )
        else:
            targets = _host_array("targets", targets)
            if targets.ndim < 1 or targets.shape[0] != inputs.shape[0]:
                raise ValueError(
                    f"targets must have the length of tokens on axis 0 ({inputs.shape[0]}), "
                    f"got shape {shape_str(targets.shape)}"
                )
        n = inputs.shape[0]
        if self.batch_size * self.seq_len > n:
            raise ValueError(
                f"batch_size * seq_len must be at most the sequence length N={n} (each stream needs one full "
                f"segment), got {self.batch_size} * {self.seq_len} = {self.batch_size * self.seq_len}"
            )
        self.inputs, self.targets = inputs, targets
        self.num_steps = n
        self.steps_per_epoch = n // self.batch_size
        self.position = self._check_start(start)
        self._offsets = np.arange(self.batch_size, dtype=np.int64) * self.steps_per_epoch

    @staticmethod
    def _check_start(start: Any) -> int:
        return _validate.number("start", start, integer=True, low=0, note="(the steps each stream has read)")

    # -- iteration

    @property
    def epoch(self) -> int:
        """The number of whole epochs read so far, ``position // steps_per_epoch``."""
        return self.position // self.steps_per_epoch

    @property
    def end(self) -> int | None:
        """The position where iteration stops (``None``: never)."""
        return None if self.epochs is None else self.epochs * self.steps_per_epoch

    def _next_len(self) -> int:
        if self.end is None:
            return self.seq_len
        left = self.end - self.position
        if left >= self.seq_len:
            return self.seq_len
        if left > 0 and not self.drop_remainder:
            return left
        return 0

    def __len__(self) -> int:
        """The number of segments left (finite streams only)."""
        if self.end is None:
            raise TypeError("an endless OffsetBatches has no length; pass epochs= for a finite one")
        left = max(self.end - self.position, 0)
        full, rest = divmod(left, self.seq_len)
        return full + (1 if rest and not self.drop_remainder else 0)

    def __iter__(self) -> "OffsetBatches":
        return self

    def segment(self, position: int, length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The segment of ``length`` (default ``seq_len``) steps at ``position``, without moving."""
        length = self.seq_len if length is None else length
        idx = (self._offsets[:, None] + (position + np.arange(length, dtype=np.int64))[None, :]) % self.num_steps
        x = self.inputs[idx]
        y = self.inputs[(idx + 1) % self.num_steps] if self.targets is None else self.targets[idx]
        return x, y

    def __next__(self) -> tuple[np.ndarray, np.ndarray]:
        """The next ``(x, y)``: ``(B, T)`` ids or ``(B, T, F...)`` features, NumPy arrays."""
        length = self._next_len()
        if length == 0:
            raise StopIteration
        out = self.segment(self.position, length)
        self.position += length
        return out

    def take(self, num_segments: int) -> tuple[np.ndarray, np.ndarray]:
        """The next ``num_segments`` segments stacked: ``(S, B, T, ...)`` each, for
        :func:`jaxrnn.tbptt.make_epoch`. Raises ``ValueError`` if fewer full segments are
        left (nothing is consumed then)."""
        return take_segments(self, self.segment, num_segments)

    # -- save / restore

    def state_dict(self) -> dict:
        """A JSON-able dict with the position and the layout it belongs to."""
        return {
            "position": self.position,
            "batch_size": self.batch_size,
            "seq_len": self.seq_len,
            "num_steps": self.num_steps,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore the position saved by :meth:`state_dict`.

        Raises ``ValueError`` if the saved layout (``batch_size``, ``num_steps``) differs
        from this one, since the position would then point at other data. ``seq_len`` may
        differ (the position counts steps, not segments).
        """
        if not isinstance(state, dict) or "position" not in state:
            raise TypeError(f"state must be a dict from OffsetBatches.state_dict(), got {state!r}")
        for key in ("batch_size", "num_steps"):
            if key in state and int(state[key]) != getattr(self, key):
                raise ValueError(
                    f"the saved position belongs to {key}={state[key]}, but these batches have "
                    f"{key}={getattr(self, key)}"
                )
        self.position = self._check_start(state["position"])

    def __repr__(self) -> str:
        return (
            f"OffsetBatches(num_steps={self.num_steps}, batch_size={self.batch_size}, seq_len={self.seq_len}, "
            f"position={self.position}, epochs={self.epochs})"
        )


def take_segments(batches: OffsetBatches, segment: Callable[[int], tuple], num_segments: int):
    """The next ``num_segments`` segments of ``batches``, each read by ``segment(position)``,
    stacked ``(S, ...)``; advances ``batches.position``. Raises ``ValueError`` (consuming
    nothing) if fewer full segments are left. Shared by :meth:`OffsetBatches.take` and
    the per-process reader of :mod:`jaxrnn.parallel`."""
    num_segments = _positive_int("num_segments", num_segments)
    b = batches
    if b.end is not None and b.end - b.position < num_segments * b.seq_len:
        raise ValueError(
            f"num_segments={num_segments} full segments of {b.seq_len} steps are not left: "
            f"{max(b.end - b.position, 0)} steps remain before the end of epoch {b.epochs}"
        )
    xs, ys = zip(*(segment(b.position + i * b.seq_len) for i in range(num_segments)))
    b.position += num_segments * b.seq_len
    return np.stack(xs), np.stack(ys)


def offset_batches(
    tokens: Any,
    batch_size: int,
    seq_len: int,
    *,
    targets: Any = None,
    start: int = 0,
    epochs: int | None = None,
    drop_remainder: bool = True,
) -> OffsetBatches:
    """Offset minibatches over one long sequence (see :class:`OffsetBatches`).

    Args:
      tokens: ``(N,)`` integer token ids, or ``(N, F...)`` features (NumPy, JAX or a list).
      batch_size: ``B``, the number of parallel streams; stream ``b`` starts at
        ``b · (N // B)``.
      seq_len: ``T``, the steps per segment. ``B · T <= N`` is required.
      targets: ``(N, ...)`` targets aligned with ``tokens`` (``y`` reads them at the same
        positions as ``x``); ``None``: the next step of ``tokens``.
      start: the initial position (steps each stream has read), e.g. a saved
        ``batches.position``.
      epochs: ``None`` for an endless stream, or stop after ``epochs`` epochs (each stream
        has read ``epochs · (N // B)`` steps counted from 0).
      drop_remainder: at the end of a finite stream, drop a last segment shorter than
        ``seq_len`` (``True``) or yield it.

    Returns:
      An :class:`OffsetBatches` iterator of NumPy ``(x, y)`` pairs, ``x`` of shape
      ``(B, T)`` for token ids or ``(B, T, F...)`` for features.
    """
    return OffsetBatches(
        tokens, batch_size, seq_len, targets=targets, start=start, epochs=epochs, drop_remainder=drop_remainder
    )


# --------------------------------------------------------------------------- whole sequences


def _leading(name: str, data: Any) -> tuple[list[np.ndarray], Any, int]:
    leaves, treedef = jax.tree_util.tree_flatten(data)
    if not leaves:
        raise ValueError(f"{name} must hold at least one array, got {data!r}")
    leaves = [_host_array(f"{name} leaf {i}", a) for i, a in enumerate(leaves)]
    sizes = {a.shape[0] if a.ndim else None for a in leaves}
    if None in sizes or len(sizes) != 1:
        got = ", ".join(shape_str(a.shape) for a in leaves)
        raise ValueError(f"every array in {name} must have the same leading (example) axis, got shapes {got}")
    return leaves, treedef, sizes.pop()


class SequenceBatches(Iterator):
    """Shuffled minibatches of whole sequences, for full BPTT.

    ``data`` is a pytree of arrays sharing the leading axis ``N`` (e.g. ``(xs, ys)`` with
    ``xs: (N, L, F)``); each batch is the same pytree with ``batch_size`` examples. Epoch
    ``e`` visits the examples in the order ``permutation_e`` (drawn from
    ``numpy.random.default_rng((seed, e))``, or ``0..N-1`` without shuffling), so the
    order depends only on ``(seed, epoch)`` and a saved position resumes exactly.

    Attributes:
      position: ``{"epoch": e, "batch": i}``, the next batch to yield.
    """

    def __init__(
        self,
        data: Any,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        epochs: int | None = 1,
        drop_remainder: bool = False,
    ):
        self._leaves, self._treedef, self.num_examples = _leading("data", data)
        self.batch_size = _positive_int("batch_size", batch_size)
        if drop_remainder and self.batch_size > self.num_examples:
            raise ValueError(
                f"batch_size ({self.batch_size}) is larger than the number of examples ({self.num_examples}); "
                "with drop_remainder=True no batch would be yielded"
            )
        self.shuffle, self.seed = bool(shuffle), int(seed)
        self.epochs = _epochs_arg(epochs)
        self.drop_remainder = bool(drop_remainder)
        self.position = {"epoch": 0, "batch": 0}

    @property
    def batches_per_epoch(self) -> int:
        full, rest = divmod(self.num_examples, self.batch_size)
        return full + (1 if rest and not self.drop_remainder else 0)

    def order(self, epoch: int) -> np.ndarray:
        """The example order of ``epoch``."""
        if not self.shuffle:
            return np.arange(self.num_examples)
        return np.random.default_rng((self.seed, int(epoch))).permutation(self.num_examples)

    def __len__(self) -> int:
        if self.epochs is None:
            raise TypeError("an endless SequenceBatches has no length; pass epochs= for a finite one")
        done = self.position["epoch"] * self.batches_per_epoch + self.position["batch"]
        return max(self.epochs * self.batches_per_epoch - done, 0)

    def __iter__(self) -> "SequenceBatches":
        return self

    def __next__(self) -> Any:
        epoch, batch = self.position["epoch"], self.position["batch"]
        if batch >= self.batches_per_epoch:
            epoch, batch = epoch + 1, 0
        if self.epochs is not None and epoch >= self.epochs:
            raise StopIteration
        idx = self.order(epoch)[batch * self.batch_size:(batch + 1) * self.batch_size]
        self.position = {"epoch": epoch, "batch": batch + 1}
        return jax.tree_util.tree_unflatten(self._treedef, [a[idx] for a in self._leaves])

    def state_dict(self) -> dict:
        """A JSON-able dict with the position and what it depends on."""
        return {**self.position, "seed": self.seed, "shuffle": self.shuffle,
                "batch_size": self.batch_size, "num_examples": self.num_examples}

    def load_state_dict(self, state: dict) -> None:
        """Restore a position saved by :meth:`state_dict` (same data, batch size, seed)."""
        if not isinstance(state, dict) or "epoch" not in state or "batch" not in state:
            raise TypeError(f"state must be a dict from SequenceBatches.state_dict(), got {state!r}")
        for key in ("batch_size", "num_examples", "seed", "shuffle"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(f"the saved position belongs to {key}={state[key]!r}, these batches have {getattr(self, key)!r}")
        epoch, batch = int(state["epoch"]), int(state["batch"])
        if epoch < 0 or not 0 <= batch <= self.batches_per_epoch:
            raise ValueError(f"invalid saved position epoch={epoch}, batch={batch}")
        self.position = {"epoch": epoch, "batch": batch}


def sequence_batches(
    data: Any,
    batch_size: int,
    *,
    shuffle: bool = True,
    seed: int = 0,
    epochs: int | None = 1,
    drop_remainder: bool = False,
) -> SequenceBatches:
    """Minibatches of whole sequences (see :class:`SequenceBatches`).

    Args:
      data: a pytree of arrays with a common leading axis ``N``, e.g. ``(xs, ys)`` or
        ``{"x": xs, "y": ys, "lengths": lengths}``.
      batch_size: examples per batch.
      shuffle: a fresh permutation every epoch (from ``seed`` and the epoch number).
      seed: the shuffling seed.
      epochs: the number of passes; ``None`` for endless.
      drop_remainder: drop the last, smaller batch of each epoch.

    Returns:
      A :class:`SequenceBatches` iterator of NumPy batches with the structure of ``data``.

    Example::

      >>> import numpy as np, jaxrnn as jr
      >>> xs, ys = np.zeros((10, 7, 3), np.float32), np.arange(10)
      >>> [y.shape for _, y in jr.data.sequence_batches((xs, ys), 4)]
      [(4,), (4,), (2,)]
    """
    return SequenceBatches(data, batch_size, shuffle=shuffle, seed=seed, epochs=epochs, drop_remainder=drop_remainder)


def split_segments(data: Any, seq_len: int, *, drop_remainder: bool = False) -> Any:
    """Cut ``(B, L, ...)`` sequences into ``L // T`` consecutive segments: ``(L // T, B, T, ...)``.

    ``out[k, b, i] = data[b, k·T + i]``. ``data`` may be one array or a pytree of arrays
    with the same ``(B, L)`` leading axes (e.g. ``(x, y)``); NumPy stays NumPy and JAX
    arrays stay JAX arrays. Iterate over the leading axis for a TBPTT loop, or pass the
    stacked segments to :func:`jaxrnn.tbptt.make_epoch`.

    Args:
      data: an array or a pytree of arrays of shape ``(B, L, ...)``.
      seq_len: ``T``.
      drop_remainder: drop the last ``L mod T`` steps; otherwise ``L`` must be a multiple
        of ``T``.

    Example::

      >>> import numpy as np, jaxrnn as jr
      >>> x = np.arange(12).reshape(2, 6)
      >>> jr.data.split_segments(x, 3)[1].tolist()
      [[3, 4, 5], [9, 10, 11]]
    """
    seq_len = _positive_int("seq_len", seq_len)
    leaves, treedef = jax.tree_util.tree_flatten(data)
    if not leaves:
        raise ValueError("data must hold at least one array")
    for i, a in enumerate(leaves):
        if not hasattr(a, "shape") or a.ndim < 2:
            raise ValueError(f"data leaf {i} must have shape (batch, time, ...), got {getattr(a, 'shape', type(a).__name__)}")
    lengths = {a.shape[1] for a in leaves}
    if len(lengths) != 1:
        raise ValueError(f"every array in data must have the same time length (axis 1), got {sorted(lengths)}")
    length = lengths.pop()
    n, rest = divmod(length, seq_len)
    if n == 0:
        raise ValueError(f"seq_len ({seq_len}) is longer than the sequences (time length {length})")
    if rest and not drop_remainder:
        raise ValueError(
            f"the time length {length} is not a multiple of seq_len={seq_len}; pass drop_remainder=True to drop "
            f"the last {rest} steps"
        )

    def split(a):
        a = a[:, : n * seq_len]
        a = a.reshape((a.shape[0], n, seq_len) + a.shape[2:])
        return a.swapaxes(0, 1)

    return jax.tree_util.tree_unflatten(treedef, [split(a) for a in leaves])

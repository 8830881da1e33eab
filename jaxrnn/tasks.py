"""Seeded synthetic tasks for long-range dependencies: copy, adding, delayed recall.

Each generator is a pure function of a PRNG key (or an int seed) and static sizes, so it
runs under ``jax.jit`` and the same key always gives the same batch. Each returns a
:class:`Batch` ``(inputs, targets, mask)``:

* ``inputs``: ``(B, L, F)`` floating, ready for :func:`jaxrnn.unroll`;
* ``targets``: integer class ids ``(B, L)`` for the sequence tasks, floats ``(B,)`` for
  the adding problem;
* ``mask``: boolean, the shape of ``targets``; ``True`` where a target counts (for loss
  and accuracy).

==================  =============================================  ==========================
task                target                                         chance level
==================  =============================================  ==========================
``copy_task``       the ``length`` data symbols, repeated after    accuracy ``1/num_symbols``
                    ``delay`` steps and a delimiter                on the masked positions
``adding_problem``  sum of the two marked values                   MSE 1/6 (predict 1)
``delayed_recall``  the input symbol ``lag`` steps earlier         accuracy ``1/num_symbols``
==================  =============================================  ==========================

Example::

    >>> import jax, jaxrnn as jr
    >>> b = jr.tasks.delayed_recall(jax.random.key(0), batch_size=2, length=6, lag=2)
    >>> b.inputs.shape, b.targets.shape
    ((2, 6, 4), (2, 6))
    >>> bool((b.targets[:, 2:] == b.inputs.argmax(-1)[:, :-2]).all())
    True
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxrnn._checks import check_floating, check_integer, shape_str

Array = jax.Array

__all__ = ["Batch", "copy_task", "adding_problem", "delayed_recall", "accuracy"]


class Batch(NamedTuple):
    """One batch of a synthetic task.

    Attributes:
      inputs: ``(B, L, F)`` floating inputs.
      targets: ``(B, L)`` int32 class ids (sequence tasks) or ``(B,)`` floats (adding).
      mask: bool, ``targets.shape``; ``True`` where the target counts.
    """

    inputs: Array
    targets: Array
    mask: Array


def _key(key: Any) -> Array:
    if isinstance(key, int) and not isinstance(key, bool):
        return jax.random.key(key)
    if isinstance(key, jax.Array) and (
        jnp.issubdtype(key.dtype, jax.dtypes.prng_key) or (key.dtype == jnp.uint32 and key.shape == (2,))
    ):
        return key
    raise TypeError(f"key must be a jax PRNG key or an int seed, got {type(key).__name__}")


def _pos_int(name: str, v: Any, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {v!r}")
    return v


def _float_dtype(dtype) -> Any:
    dtype = jnp.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"dtype must be a floating dtype, got {dtype}")
    return dtype


def copy_task(
    key: Any, batch_size: int, length: int = 10, delay: int = 20, num_symbols: int = 8, dtype=jnp.float32
) -> Batch:
    """The copy task (Hochreiter & Schmidhuber, 1997; Arjovsky et al., 2016).

    The network reads ``length`` random data symbols, then blanks; ``delay`` steps after
    the last data symbol a delimiter arrives, and from the next step on it must write
    the data symbols back in order, one per step. Symbol ``i`` (read at step ``i``) is
    due at step ``i + length + delay``. Sequence length ``L = 2 * length + delay``.

    Input classes (one-hot, ``F = num_symbols + 2``): ``0 .. num_symbols-1`` data,
    ``num_symbols`` blank, ``num_symbols + 1`` delimiter (at step ``length + delay - 1``).
    Target classes: the data symbols at the last ``length`` steps, ``num_symbols``
    (blank) elsewhere. ``mask`` is ``True`` at the last ``length`` steps; train on
    ``mask=None`` (all steps, blanks included) for the usual formulation, whose
    memoryless baseline predicts blank and then a uniform guess.

    Args:
      key: PRNG key or int seed.
      batch_size: ``B``.
      length: number of data symbols to remember.
      delay: steps from the last data symbol to the delimiter (``>= 1``).
      num_symbols: size of the data alphabet (``>= 2``).
      dtype: floating dtype of ``inputs``.

    Returns:
      :class:`Batch` with ``inputs (B, L, num_symbols + 2)``, ``targets (B, L)`` int32 in
      ``[0, num_symbols]`` and ``mask (B, L)``.

    Example::

      >>> import jax, jaxrnn as jr
      >>> b = jr.tasks.copy_task(0, batch_size=1, length=2, delay=3, num_symbols=4)
      >>> ids = b.inputs.argmax(-1)[0].tolist()
      >>> ids[2:], b.targets[0, :5].tolist()       # blanks (4), delimiter (5); blank targets
      ([4, 4, 5, 4, 4], [4, 4, 4, 4, 4])
      >>> bool((b.targets[0, 5:] == b.inputs.argmax(-1)[0, :2]).all())
      True
    """
    key = _key(key)
    _pos_int("batch_size", batch_size)
    _pos_int("length", length)
    _pos_int("delay", delay)
    _pos_int("num_symbols", num_symbols, 2)
    return _copy_task(key, batch_size, length, delay, num_symbols, _float_dtype(dtype))


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4, 5))
def _copy_task(key, batch_size, length, delay, num_symbols, dtype) -> Batch:
    blank, delim = num_symbols, num_symbols + 1
    total = 2 * length + delay
    data = jax.random.randint(key, (batch_size, length), 0, num_symbols, dtype=jnp.int32)
    ids = jnp.full((batch_size, total), blank, jnp.int32)
    ids = ids.at[:, :length].set(data)
    ids = ids.at[:, length + delay - 1].set(delim)
    targets = jnp.full((batch_size, total), blank, jnp.int32)
    targets = targets.at[:, length + delay :].set(data)
    mask = jnp.broadcast_to(jnp.arange(total) >= length + delay, (batch_size, total))
    return Batch(jax.nn.one_hot(ids, num_symbols + 2, dtype=dtype), targets, mask)


def adding_problem(key: Any, batch_size: int, length: int = 50, dtype=jnp.float32) -> Batch:
    """The adding problem (Hochreiter & Schmidhuber, 1997; Le et al., 2015).

    Each step carries two numbers: a value drawn uniformly from ``[0, 1)`` and a marker.
    Exactly two markers are 1: one at a uniformly random step of the first half
    (``[0, length // 2)``) and one in the second half (``[length // 2, length)``). The
    target is the sum of the two marked values, read from the last step (many-to-one).
    Predicting the mean, 1, gives mean squared error 1/6.

    Args:
      key: PRNG key or int seed.
      batch_size: ``B``.
      length: ``L`` (``>= 2``).
      dtype: floating dtype of ``inputs`` and ``targets``.

    Returns:
      :class:`Batch` with ``inputs (B, L, 2)`` (``[..., 0]`` values, ``[..., 1]``
      markers), ``targets (B,)`` and ``mask (B,)`` all ``True``.

    Example::

      >>> import jax, jax.numpy as jnp, jaxrnn as jr
      >>> b = jr.tasks.adding_problem(0, batch_size=3, length=10)
      >>> b.inputs[..., 1].sum(-1).tolist()
      [2.0, 2.0, 2.0]
      >>> bool(jnp.allclose((b.inputs[..., 0] * b.inputs[..., 1]).sum(-1), b.targets))
      True
    """
    key = _key(key)
    _pos_int("batch_size", batch_size)
    _pos_int("length", length, 2)
    return _adding_problem(key, batch_size, length, _float_dtype(dtype))


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _adding_problem(key, batch_size, length, dtype) -> Batch:
    k_v, k_a, k_b = jax.random.split(key, 3)
    half = length // 2
    values = jax.random.uniform(k_v, (batch_size, length), dtype)
    first = jax.random.randint(k_a, (batch_size,), 0, half)
    second = jax.random.randint(k_b, (batch_size,), half, length)
    steps = jnp.arange(length)
    markers = ((steps == first[:, None]) | (steps == second[:, None])).astype(dtype)
    targets = jnp.sum(values * markers, axis=1)
    inputs = jnp.stack([values, markers], axis=-1)
    return Batch(inputs, targets, jnp.ones((batch_size,), bool))


def delayed_recall(
    key: Any, batch_size: int, length: int, lag: int, num_symbols: int = 4, dtype=jnp.float32
) -> Batch:
    """Delayed recall: the target at step ``t`` is the input symbol at step ``t - lag``.

    Inputs are i.i.d. uniform symbols, one-hot. To answer at step ``t`` the network must
    hold the last ``lag`` symbols (a delay line), so a gradient must reach ``lag`` steps
    back: truncated BPTT with segments of ``T <= lag`` steps never sees the dependency.
    For ``t < lag`` there is nothing to recall: the target is the extra "blank" class
    ``num_symbols`` and ``mask`` is ``False``. Chance accuracy is ``1 / num_symbols``.

    For truncated BPTT over a stream, draw one long ``length`` and cut it into segments
    along the time axis, passing the carry from segment to segment.

    Args:
      key: PRNG key or int seed.
      batch_size: ``B``.
      length: ``L``.
      lag: ``k >= 1``.
      num_symbols: alphabet size (``>= 2``).
      dtype: floating dtype of ``inputs``.

    Returns:
      :class:`Batch` with ``inputs (B, L, num_symbols)``, ``targets (B, L)`` int32 and
      ``mask (B, L)`` (``t >= lag``).

    Example::

      >>> import jax, jaxrnn as jr
      >>> b = jr.tasks.delayed_recall(3, batch_size=1, length=5, lag=2, num_symbols=3)
      >>> x = b.inputs.argmax(-1)[0].tolist()
      >>> b.targets[0].tolist() == [3, 3] + x[:3], b.mask[0].tolist()
      (True, [False, False, True, True, True])
    """
    key = _key(key)
    _pos_int("batch_size", batch_size)
    _pos_int("length", length)
    _pos_int("lag", lag)
    _pos_int("num_symbols", num_symbols, 2)
    return _delayed_recall(key, batch_size, length, lag, num_symbols, _float_dtype(dtype))


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4, 5))
def _delayed_recall(key, batch_size, length, lag, num_symbols, dtype) -> Batch:
    ids = jax.random.randint(key, (batch_size, length), 0, num_symbols, dtype=jnp.int32)
    blank = jnp.full((batch_size, min(lag, length)), num_symbols, jnp.int32)
    targets = jnp.concatenate([blank, ids[:, : max(length - lag, 0)]], axis=1)
    mask = jnp.broadcast_to(jnp.arange(length) >= lag, (batch_size, length))
    return Batch(jax.nn.one_hot(ids, num_symbols, dtype=dtype), targets, mask)


def accuracy(logits: Array, targets: Array, mask: Array | None = None) -> Array:
    """Fraction of positions where ``argmax(logits) == targets``, over ``mask``.

    Args:
      logits: ``(..., V)``.
      targets: integer ids, ``logits.shape[:-1]``.
      mask: optional bool, broadcastable to ``targets.shape``; ``None`` counts all.

    Returns:
      A scalar in ``[0, 1]`` (0 when the mask is empty).

    Example::

      >>> import jax.numpy as jnp, jaxrnn as jr
      >>> logits = jnp.array([[0., 1.], [1., 0.], [1., 0.]])
      >>> float(jr.tasks.accuracy(logits, jnp.array([1, 1, 0]), jnp.array([True, False, True])))
      1.0
    """
    check_floating("logits", logits)
    check_integer("targets", targets)
    if logits.ndim < 1 or targets.shape != logits.shape[:-1]:
        raise ValueError(
            f"targets must have shape {shape_str(logits.shape[:-1])} (logits.shape[:-1]), "
            f"got {shape_str(targets.shape)}"
        )
    hit = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    if mask is None:
        return jnp.mean(hit)
    try:
        w = jnp.broadcast_to(mask, hit.shape).astype(jnp.float32)
    except ValueError:
        raise ValueError(
            f"mask must be broadcastable to targets' shape {shape_str(hit.shape)}, got {shape_str(jnp.shape(mask))}"
        ) from None
    return jnp.sum(hit * w) / jnp.maximum(jnp.sum(w), 1.0)

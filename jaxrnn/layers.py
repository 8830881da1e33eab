"""Time-distributed layers: pure ``init`` / ``apply`` pairs over ``(B, T, ...)`` arrays.

Each layer works on any number of leading dimensions, so the same function serves one
time step ``(B, F)``, a sequence ``(B, T, F)`` or an unbatched sequence ``(T, F)``.

    emb = jr.layers.embedding(vocab_size=65, embed_size=32)
    head = jr.layers.affine(out_size=65)
    e_params = emb.init(key1)                      # {"table": (65, 32)}
    h_params = head.init(key2, in_size=256)        # {"w": (256, 65), "b": (65,)}
    xs = emb.apply(e_params, tokens)               # (B, T) int -> (B, T, 32)
    logits = head.apply(h_params, ys)              # (B, T, 256) -> (B, T, 65)
    loss = jr.layers.softmax_cross_entropy(logits, targets, mask=None, reduction="mean")
    # the same loss without the (B, T, 65) logits at once, 128 positions at a time:
    loss = jr.layers.affine_cross_entropy(ys, h_params["w"], h_params["b"], targets, chunk=128)
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from jaxrnn._checks import check_array, check_floating, check_integer, concrete_values, shape_str

Array = jax.Array

__all__ = ["Layer", "embedding", "affine", "softmax_cross_entropy", "affine_cross_entropy", "dropout"]


class Layer(NamedTuple):
    """A stateless layer: ``init(key, ...) -> params`` and ``apply(params, x) -> y``."""

    init: Callable
    apply: Callable


def _positive_int(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return v


def embedding(vocab_size: int, embed_size: int, scale: float = 1.0) -> Layer:
    """Token embedding: ``y[..., :] = table[ids[...], :]``.

    ``init(key, dtype=float32)`` draws ``table: (vocab_size, embed_size)`` from
    ``N(0, scale^2)``. ``apply(params, ids)`` takes integer ids of any shape and returns
    ``ids.shape + (embed_size,)``. Ids out of ``[0, vocab_size)`` raise ``ValueError``
    when their values are known (outside ``jit``); inside ``jit`` they are clamped, as
    ``jnp.take`` does.
    """
    _positive_int("vocab_size", vocab_size)
    _positive_int("embed_size", embed_size)

    def init(key: Array, dtype=jnp.float32) -> dict:
        return {"table": (scale * jax.random.normal(key, (vocab_size, embed_size), jnp.float32)).astype(dtype)}

    def apply(params: dict, ids: Array) -> Array:
        table = params["table"]
        if table.shape != (vocab_size, embed_size):
            raise ValueError(
                f"params['table'] must have shape {shape_str((vocab_size, embed_size))}, got {shape_str(table.shape)}"
            )
        check_integer("ids", ids)
        values = concrete_values(ids)
        if values is not None and values.size:
            lo, hi = int(values.min()), int(values.max())
            if lo < 0 or hi >= vocab_size:
                raise ValueError(f"ids must lie in [0, {vocab_size}) (vocab_size), got values in [{lo}, {hi}]")
        return jnp.take(table, ids, axis=0, mode="clip")

    return Layer(init, apply)


def affine(out_size: int) -> Layer:
    """Time-distributed affine map ``y = x w + b``.

    ``init(key, in_size, dtype=float32)`` draws ``w: (in_size, out_size)`` from
    ``N(0, 1/in_size)`` and sets ``b = 0``. ``apply(params, x)`` maps ``(..., in_size)``
    to ``(..., out_size)``.
    """
    _positive_int("out_size", out_size)

    def init(key: Array, in_size: int, dtype=jnp.float32) -> dict:
        _positive_int("in_size", in_size)
        w = jax.random.normal(key, (in_size, out_size), jnp.float32) / jnp.sqrt(in_size)
        return {"w": w.astype(dtype), "b": jnp.zeros((out_size,), dtype)}

    def apply(params: dict, x: Array) -> Array:
        w = params["w"]
        check_floating("x", x)
        if x.ndim < 1 or x.shape[-1] != w.shape[0]:
            raise ValueError(f"x must have shape (..., {w.shape[0]}) to match params['w'], got {shape_str(x.shape)}")
        return x @ w + params["b"]

    return Layer(init, apply)


def softmax_cross_entropy(
    logits: Array, labels: Array, mask: Array | None = None, reduction: str = "mean"
) -> Array:
    """Cross-entropy ``-log softmax(logits)[label]`` per position, reduced.

    Args:
      logits: ``(..., V)`` floating, e.g. ``(B, T, V)``.
      labels: integer ids of shape ``logits.shape[:-1]``, in ``[0, V)`` (checked when
        their values are known, outside ``jit``; inside ``jit`` an out-of-range label
        gives a NaN loss).
      mask: optional, broadcastable to ``labels.shape``; positions where it is 0/False
        are ignored (padding). ``None`` keeps every position.
      reduction: ``"mean"`` (over kept positions; 0 when none is kept), ``"sum"``, or
        ``"none"`` (per-position losses, zero where masked).

    Returns:
      A scalar, or an array of ``labels.shape`` for ``reduction="none"``. Computed in at
      least float32 for stability.
    """
    check_floating("logits", logits)
    check_integer("labels", labels)
    if logits.ndim < 1 or labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"labels must have shape {shape_str(logits.shape[:-1])} (logits.shape[:-1]), got {shape_str(labels.shape)}"
        )
    _check_reduction(reduction)
    _check_labels(labels, logits.shape[-1], "logits.shape[-1]")
    return _reduce(_nll(logits, labels), mask, reduction)


def _check_reduction(reduction: str) -> None:
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def _check_labels(labels: Array, classes: int, where: str) -> None:
    values = concrete_values(labels)
    if values is not None and values.size and (values.min() < 0 or values.max() >= classes):
        raise ValueError(
            f"labels must lie in [0, {classes}) ({where}), "
            f"got values in [{int(values.min())}, {int(values.max())}]"
        )


def _nll(logits: Array, labels: Array) -> Array:
    """``logsumexp(logits) - logits[label]`` per position, in at least float32."""
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    logz = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return logz - picked


def _reduce(nll: Array, mask: Array | None, reduction: str) -> Array:
    """Weight the per-position losses by ``mask`` and reduce them."""
    if mask is None:
        weight = jnp.ones_like(nll)
    else:
        check_array("mask", mask)
        try:
            weight = jnp.broadcast_to(mask, nll.shape).astype(nll.dtype)
        except ValueError:
            raise ValueError(
                f"mask must be broadcastable to labels' shape {shape_str(nll.shape)}, got {shape_str(mask.shape)}"
            ) from None
    nll = nll * weight
    if reduction == "none":
        return nll
    if reduction == "sum":
        return jnp.sum(nll)
    return jnp.sum(nll) / jnp.maximum(jnp.sum(weight), 1.0)


def affine_cross_entropy(
    x: Array, w: Array, b: Array | None, labels: Array, mask: Array | None = None, reduction: str = "mean",
    chunk: int | None = None,
) -> Array:
    """``softmax_cross_entropy(x @ w + b, labels, mask, reduction)`` without all the logits at once.

    The output layer and the loss of a language model over ``N`` positions make
    ``(N, V)`` logits, and the backward pass keeps them (and builds their gradient): for
    a large vocabulary that is where the memory goes. Here the ``N`` positions (all
    leading dimensions of ``x`` flattened) are cut into chunks of ``chunk`` rows; a
    ``lax.scan`` over the chunks computes each chunk's logits and per-position losses
    under :func:`jax.checkpoint`, so forward and backward hold one chunk's ``(chunk, V)``
    logits at a time and recompute them in the backward pass::

        nll_n = logsumexp(x_n w + b) - (x_n w + b)[label_n]        # chunk by chunk

    The weight gradient ``dw = sum_chunks x_c^T dlogits_c`` is accumulated over the
    chunks. Values and gradients equal the unchunked computation to float tolerance.

    Args:
      x: ``(..., F)`` floating inputs, e.g. hidden states ``(B, T, H)``.
      w: ``(F, V)`` output weights.
      b: ``(V,)`` output bias, or ``None``.
      labels: integer ids of shape ``x.shape[:-1]``, in ``[0, V)``.
      mask: as in :func:`softmax_cross_entropy`.
      reduction: ``"mean"``, ``"sum"`` or ``"none"``, as in :func:`softmax_cross_entropy`.
      chunk: rows (positions) per chunk; ``None`` computes all logits at once (then this
        is exactly ``softmax_cross_entropy(x @ w + b, ...)``). The last chunk is padded
        with masked rows.

    Returns:
      As :func:`softmax_cross_entropy`.

    Example::

      >>> import jax, jax.numpy as jnp, jaxrnn as jr
      >>> x = jax.random.normal(jax.random.key(0), (2, 7, 4))
      >>> w, b = jnp.ones((4, 5)), jnp.zeros(5)
      >>> labels = jnp.zeros((2, 7), jnp.int32)
      >>> full = jr.layers.softmax_cross_entropy(x @ w + b, labels)
      >>> bool(jnp.allclose(jr.layers.affine_cross_entropy(x, w, b, labels, chunk=3), full))
      True
    """
    check_floating("x", x)
    check_floating("w", w)
    check_integer("labels", labels)
    if w.ndim != 2 or x.ndim < 1 or x.shape[-1] != w.shape[0]:
        raise ValueError(f"w must have shape ({x.shape[-1] if x.ndim else '?'}, V) to match x's last axis, "
                         f"got w {shape_str(w.shape)} and x {shape_str(x.shape)}")
    if b is not None and tuple(b.shape) != (w.shape[1],):
        raise ValueError(f"b must have shape {shape_str((w.shape[1],))} (w.shape[1:]), got {shape_str(b.shape)}")
    if labels.shape != x.shape[:-1]:
        raise ValueError(
            f"labels must have shape {shape_str(x.shape[:-1])} (x.shape[:-1]), got {shape_str(labels.shape)}"
        )
    _check_reduction(reduction)
    _check_labels(labels, w.shape[1], "w.shape[1]")
    if chunk is not None:
        _positive_int("chunk", chunk)

    def logits(rows: Array) -> Array:
        return rows @ w if b is None else rows @ w + b

    n = labels.size
    if chunk is None or chunk >= n:
        return _reduce(_nll(logits(x), labels), mask, reduction)
    pad = -n % chunk
    rows = jnp.pad(x.reshape(n, x.shape[-1]), ((0, pad), (0, 0)))
    ids = jnp.pad(labels.reshape(n), (0, pad))

    @jax.checkpoint
    def body(_, inp):
        return None, _nll(logits(inp[0]), inp[1])

    _, nll = jax.lax.scan(body, None, (rows.reshape(-1, chunk, rows.shape[-1]), ids.reshape(-1, chunk)))
    return _reduce(nll.reshape(-1)[:n].reshape(labels.shape), mask, reduction)


def dropout(x: Array, rate: float, key: Array | None, deterministic: bool = False) -> Array:
    """Inverted dropout: keep each entry with probability ``1 - rate`` and scale by ``1/(1-rate)``.

    The expectation is unchanged, so nothing needs rescaling at evaluation time. With
    ``deterministic=True``, ``rate == 0`` or ``key=None`` it returns ``x`` unchanged.
    """
    if not 0.0 <= float(rate) < 1.0:
        raise ValueError(f"rate must be in [0, 1), got {rate}")
    if deterministic or rate == 0.0 or key is None:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))

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
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from jaxrnn._checks import check_array, check_floating, check_integer, concrete_values, shape_str

Array = jax.Array

__all__ = ["Layer", "embedding", "affine", "softmax_cross_entropy", "dropout"]


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
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    values = concrete_values(labels)
    if values is not None and values.size and (values.min() < 0 or values.max() >= logits.shape[-1]):
        raise ValueError(
            f"labels must lie in [0, {logits.shape[-1]}) (logits.shape[-1]), "
            f"got values in [{int(values.min())}, {int(values.max())}]"
        )
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    logz = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
    nll = logz - picked
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

"""Linear recurrences over a whole sequence at once: ``jax.lax.associative_scan``.

A cell whose recurrence is linear in its state (``Cell.linear``, e.g. ``jr.mingru``,
``jr.minlstm``) has ``h_t = a_t * h_{t-1} + b_t`` with ``a_t``, ``b_t`` computed from
``x_t`` alone, for every step at once. Composing two steps gives another step of the
same form::

    (a_1, b_1) then (a_2, b_2)  =  (a_1 * a_2, a_2 * b_1 + b_2)

an associative operation, so ``jax.lax.associative_scan`` computes every ``h_t`` in
``O(log T)`` dependent rounds (``O(T)`` work) instead of ``T`` dependent steps. Those
rounds are written out in the program, so unlike a step loop its compile time grows
with ``T`` (logarithmically). With
coefficients in log space (:class:`~jaxrnn.cells.LogLinear`) the same composition reads
``(log_a_1 + log_a_2, logaddexp(log_b_1 + log_a_2, log_b_2))``.

How :func:`jaxrnn.unroll` uses it (its ``scan=`` option):

* ``lengths``: a padded step gets ``a = 1``, ``b = 0`` (log space: ``log_a = 0``,
  ``log_b`` a very negative finite number, not ``-inf``, so no gradient sees
  ``inf - inf``), which holds the state; its inputs were zeroed before, and the
  coefficients are selected with ``jnp.where``, so the gradient of a padded step is
  exactly zero;
* the initial state ``h_0`` enters linearly: ``b_1 += a_1 * h_0`` (log space:
  ``h_t = exp(log h_t|h_0=0) + exp(sum_{s<=t} log_a_s) * h_0``, so ``h_0`` may have any
  sign and its gradient is exact), which is how a TBPTT segment continues the last;
* ``reverse``: :func:`jaxrnn.unroll` reverses each row's valid steps before the scan
  and the outputs after it, as for every cell;
* ``remat``: any value but ``None`` wraps the coefficients and the scan in one
  ``jax.checkpoint``: the backward pass keeps only the inputs and recomputes the rest
  (the per-step and per-block variants have no meaning without a step loop);
  ``unroll`` is ignored.

``scan="auto"`` (:func:`auto_associative`) takes the sequential scan on a CPU and the
associative scan on an accelerator (GPU, TPU). On a CPU the associative scan was slower
at every measured size, and slower to compile (T = 256 to 4096, forward + backward,
both cells, both variants; ``benchmarks/results/parallel_scan.md``). It does about
twice the arithmetic of the step loop, a CPU's few cores gain nothing from its shorter
critical path, and XLA's CPU loop costs little per step. On an accelerator each of the T steps
of a sequential scan is at least one kernel launch, which the associative scan's
``O(log T)`` rounds avoid; that is the method of Feng et al., not yet measured in this
project (``benchmarks/parallel_scan.py`` runs there unchanged).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxrnn._checks import shape_str
from jaxrnn.cells.protocol import LogLinear, _fn_name, linear_space

Array = jax.Array

__all__ = ["SCANS", "auto_associative", "use_associative", "check_linear", "coefficients", "associative"]

#: The values of :func:`jaxrnn.unroll`'s ``scan`` option.
SCANS = ("auto", "sequential", "associative")



def auto_associative(steps: int) -> bool:
    """What ``scan="auto"`` does for a linear cell over ``steps`` steps: ``True`` (the
    associative scan) on an accelerator backend when there are at least two steps,
    ``False`` (the sequential scan) on a CPU, where it measured faster (see the module
    docstring)."""
    return steps >= 2 and jax.default_backend() != "cpu"


def _describe(cell: Any) -> str:
    kind = getattr(cell, "kind", None)
    return f"kind {kind!r}" if kind else f"a {type(cell).__name__} of your own"


def use_associative(scan: str, cell: Any, steps: int, name: str = "cell") -> bool:
    """Whether ``scan`` (already validated) runs ``cell`` with the associative scan.

    Raises ``ValueError`` for ``scan="associative"`` on a cell without ``linear``.
    """
    linear = getattr(cell, "linear", None)
    if scan == "associative" and linear is None:
        raise ValueError(
            f"scan='associative' needs a cell whose recurrence is linear in h (h_t = a_t * h_{{t-1}} + b_t, given "
            f"by Cell.linear, as jr.mingru and jr.minlstm have); {name} ({_describe(cell)}) has linear=None: its "
            "recurrence is not linear in h. Use scan='sequential' or 'auto'"
        )
    return linear is not None and (scan == "associative" or (scan == "auto" and auto_associative(steps)))


def check_scan(scan: Any) -> None:
    if not isinstance(scan, str) or scan not in SCANS:
        raise ValueError(f"scan must be one of {', '.join(repr(s) for s in SCANS)}, got {scan!r}")


def check_linear(cell: Any, params: Any, xs_tm: Array, name: str = "cell") -> None:
    """Trace ``cell.linear`` abstractly on time-major ``xs_tm`` and check what it returns:
    a pair or :class:`LogLinear` of two arrays of shape ``xs_tm.shape[:-1] + (H,)``."""
    fn = _fn_name(cell.linear)
    x = jax.ShapeDtypeStruct(xs_tm.shape, xs_tm.dtype)
    try:
        out = jax.eval_shape(cell.linear, params, x)
    except Exception as e:
        if hasattr(e, "add_note"):
            e.add_note(f"(raised inside {name}.linear = {fn}, called with xs of shape {shape_str(x.shape)})")
        raise
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise TypeError(f"{fn} must return a pair (a, b) or jr.cells.LogLinear(log_a, log_b), got {type(out).__name__}")
    want = tuple(xs_tm.shape[:-1]) + (int(cell.hidden_size),)
    for what, v in zip(("log_a", "log_b") if isinstance(out, LogLinear) else ("a", "b"), out):
        if not hasattr(v, "shape") or tuple(v.shape) != want:
            got = shape_str(v.shape) if hasattr(v, "shape") else type(v).__name__
            raise ValueError(
                f"{fn} returned {what} of shape {got}, expected {shape_str(want)} (the leading dimensions of xs "
                f"and hidden_size={int(cell.hidden_size)})"
            )


def check_state(carry: Any, name: str = "cell") -> None:
    """A linear cell's carry is one array ``h``."""
    if not hasattr(carry, "shape") or not hasattr(carry, "dtype"):
        raise TypeError(
            f"{name} has linear set, so its carry must be one array h of shape (*batch, hidden_size); "
            f"got {type(carry).__name__}"
        )


def _neg(dtype) -> Array:
    """A finite stand-in for ``log 0``: far below any real ``log b``, far from overflow."""
    return jnp.asarray(jnp.finfo(dtype).min / 4, dtype)


def coefficients(linear, params: Any, xs_tm: Array, mask: Array | None):
    """``linear(params, xs_tm)`` with padded steps (``mask`` False) turned into the
    identity step: ``(1, 0)``, or ``(0, log 0)`` in log space."""
    out = linear(params, xs_tm)
    if mask is None:
        return out
    m = mask[..., None]
    if isinstance(out, LogLinear):
        return LogLinear(jnp.where(m, out.log_a, 0), jnp.where(m, out.log_b, _neg(out.log_b.dtype)))
    a, b = out
    return jnp.where(m, a, 1), jnp.where(m, b, 0)


def _combine(first, second):
    a1, b1 = first
    a2, b2 = second
    return a1 * a2, a2 * b1 + b2


def _combine_log(first, second):
    la1, lb1 = first
    la2, lb2 = second
    return la1 + la2, jnp.logaddexp(lb1 + la2, lb2)


def associative(linear, params: Any, xs_tm: Array, h0: Array, mask: Array | None, remat: Any):
    """Every state of ``h_t = a_t * h_{t-1} + b_t`` with ``jax.lax.associative_scan``
    along axis 0: ``(h_T, hs)``, ``hs`` of shape ``(T, *batch, H)``, zero at padded steps."""
    if xs_tm.shape[0] == 0:
        return h0, jnp.zeros((0,) + h0.shape, h0.dtype)

    def run(params, xs_tm, h0):
        coef = coefficients(linear, params, xs_tm, mask)
        if isinstance(coef, LogLinear):
            cum_a, log_h = jax.lax.associative_scan(_combine_log, tuple(coef), axis=0)
            hs = jnp.exp(log_h) + jnp.exp(cum_a) * h0
        else:
            a, b = coef
            b = b.at[0].add(a[0] * h0)
            _, hs = jax.lax.associative_scan(_combine, (a, b), axis=0)
        return hs.astype(h0.dtype)

    if remat is not None:
        run = jax.checkpoint(run)
    hs = run(params, xs_tm, h0)
    if mask is not None:
        hs_out = jnp.where(mask[..., None], hs, jnp.zeros((), hs.dtype))
    else:
        hs_out = hs
    return hs[-1], hs_out


def sequential_inputs(linear, params: Any, xs_tm: Array) -> Array:
    """``concat([a, b], -1)`` over all steps, in linear space, for a step loop
    (:func:`sequential_step`)."""
    a, b = linear_space(linear(params, xs_tm))
    return jnp.concatenate([a, b], axis=-1)


def sequential_step(_params, h: Array, ab_t: Array):
    """``h' = a_t * h + b_t`` from ``ab_t = concat([a_t, b_t], -1)``; ``(h', h')``."""
    hs = h.shape[-1]
    h_new = (ab_t[..., :hs] * h + ab_t[..., hs:]).astype(h.dtype)
    return h_new, h_new

"""Truncated backpropagation through time (TBPTT).

A long stream is cut into segments of ``T`` steps. Each segment is one jitted step::

    (loss, c_k), g = value_and_grad(loss_fn)(params, c_{k-1}, x_k, y_k)   # params only
    params, opt_state <- tx.update(g, opt_state, params)
    c_k <- stop_gradient(c_k)

The next segment starts from the true forward state ``c_k`` (computed with the
parameters before the update), but the carry is a constant input to the gradient, so no
gradient crosses the cut: dependencies longer than ``T`` steps are not learned from
gradients. Memory depends on ``T``, not on the stream length.

Contents:

* :func:`init_state`, :func:`make_step`: one segment per call (``TrainState`` and
  ``init_state`` are shared with :mod:`jaxrnn.bptt`).
* :func:`make_epoch`: the fused mode, many segments inside one jitted ``lax.scan``; the
  same results as calling the step in a Python loop.
* :func:`reset_carry`: zero the carry of chosen rows (a new document starts there).
* :func:`init_k1k2_state`, :func:`make_k1k2_step`: TBPTT(k1, k2), an update every
  ``k1`` steps that backpropagates ``k2 >= k1`` steps.

Example::

  >>> import jax, jax.numpy as jnp, numpy as np, optax, jaxrnn as jr
  >>> cell, emb, head = jr.lstm(16), jr.layers.embedding(50, 8), jr.layers.affine(50)
  >>> k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  >>> params = {"rnn": cell.init(k1, 8), "emb": emb.init(k2), "head": head.init(k3, 16)}
  >>> def loss_fn(params, carry, x, y):
  ...     carry, hs = jr.unroll(cell, params["rnn"], emb.apply(params["emb"], x), carry)
  ...     logits = head.apply(params["head"], hs)
  ...     return jr.layers.softmax_cross_entropy(logits, y), carry
  >>> tx = jr.clipped(optax.adam(1e-3), max_norm=5.0)
  >>> batches = jr.data.offset_batches(np.arange(1000) % 50, batch_size=4, seq_len=10)
  >>> state = jr.tbptt.init_state(params, tx, cell.initial_carry(4))
  >>> step = jr.tbptt.make_step(loss_fn, tx)
  >>> for _, (x, y) in zip(range(3), batches):
  ...     state, metrics = step(state, x, y)
  >>> int(state.step), step.trace_count
  (3, 1)
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxrnn import optim
from jaxrnn._checks import shape_str
from jaxrnn._step import (  # the training core shared with jaxrnn.bptt
    LossFn,
    Step,
    TrainState,
    _check_state,
    _copy,
    apply_gradients,
    check_fn,
    init_state,
    input_check,
    value_and_grad,
)

__all__ = [
    "TrainState", "init_state", "make_step", "make_epoch", "reset_carry",
    "K1K2State", "init_k1k2_state", "make_k1k2_step", "Step",
]


# --------------------------------------------------------------------------- carry


def reset_carry(carry: Any, mask: Any, initial: Any = None) -> Any:
    """Reset the rows of ``carry`` selected by ``mask``; the other rows are unchanged.

    ``carry'[b] = initial[b] if mask[b] else carry[b]`` for every floating leaf
    (``initial`` defaults to zeros). Use it where a new document starts in row ``b`` of
    the batch, so the state of the previous document does not leak into it. The reset
    rows are constants: no gradient flows through them. Leaves that are not floating
    (e.g. the PRNG key data a dropout model keeps in its carry) pass through unchanged.

    Args:
      carry: a pytree whose floating leaves all have the batch as their leading axis
        ``(B, ...)``.
      mask: bool array of shape ``(B,)``.
      initial: ``None`` (zeros) or a pytree like ``carry`` (e.g. ``cell.initial_carry(B)``).

    Returns:
      A pytree like ``carry``.

    Example::

      >>> import jax.numpy as jnp, jaxrnn as jr
      >>> h, c = jr.tbptt.reset_carry((jnp.ones((2, 3)), jnp.ones((2, 3))), jnp.array([True, False]))
      >>> h.tolist()
      [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]
    """
    if not hasattr(mask, "shape") or mask.ndim != 1:
        raise ValueError(f"mask must be a bool array of shape (batch,), got {getattr(mask, 'shape', type(mask).__name__)}")
    if mask.dtype != jnp.bool_:
        raise TypeError(f"mask must have dtype bool, got {mask.dtype}")
    batch = mask.shape[0]
    leaves, treedef = jax.tree_util.tree_flatten(carry)
    for i, leaf in enumerate(leaves):
        if not _is_float(leaf):
            continue
        if leaf.ndim < 1 or leaf.shape[0] != batch:
            raise ValueError(
                f"every carry leaf must have the batch ({batch}, the length of mask) as its leading axis; "
                f"leaf {i} has shape {shape_str(leaf.shape)}"
            )
    if initial is None:
        init_leaves = [None] * len(leaves)
    else:
        init_leaves, init_def = jax.tree_util.tree_flatten(initial)
        if init_def != treedef:
            raise ValueError(f"initial must have the tree structure of carry {treedef}, got {init_def}")
    out = []
    for leaf, init in zip(leaves, init_leaves):
        if not _is_float(leaf):
            out.append(leaf)
            continue
        m = mask.reshape((batch,) + (1,) * (leaf.ndim - 1))
        fill = jnp.zeros_like(leaf) if init is None else jnp.broadcast_to(jnp.asarray(init, leaf.dtype), leaf.shape)
        out.append(jnp.where(m, jax.lax.stop_gradient(fill), leaf))
    return jax.tree_util.tree_unflatten(treedef, out)


def _is_float(x: Any) -> bool:
    return jnp.issubdtype(x.dtype, jnp.inexact)


def _check_new_carry(old: Any, new: Any) -> None:
    old_leaves, old_def = jax.tree_util.tree_flatten(old)
    new_leaves, new_def = jax.tree_util.tree_flatten(new)
    if old_def != new_def:
        raise ValueError(
            "loss_fn must return a carry with the tree structure of the carry it was given "
            f"(the next segment starts from it): expected {old_def}, got {new_def}"
        )
    for i, (a, b) in enumerate(zip(old_leaves, new_leaves)):
        if a.shape != b.shape or a.dtype != b.dtype:
            raise ValueError(
                f"loss_fn must return a carry like the one it was given: leaf {i} went in as "
                f"{shape_str(a.shape)} {a.dtype} and came out as {shape_str(b.shape)} {b.dtype}"
            )


def _all_finite(tree: Any) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree) if _is_float(x)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def _guard_carry(opt_state: Any, old: Any, new: Any) -> Any:
    """With a skipping optimizer, a non-finite forward state does not replace the carry."""
    if not optim.has_skipping(opt_state):
        return new
    ok = _all_finite(new)
    return jax.tree_util.tree_map(lambda n, o: jnp.where(ok, n, o) if _is_float(n) else n, new, old)


# --------------------------------------------------------------------------- TBPTT(k, k)


def _segment_step(loss_fn: LossFn, tx: optax.GradientTransformation, state: TrainState, x, y, reset):
    _check_state(state)
    carry = state.carry
    if reset is not None:
        carry = reset_carry(carry, reset)
    carry = jax.lax.stop_gradient(carry)
    (loss, new_carry), grads = value_and_grad(loss_fn, state.params, carry, x, y)
    _check_new_carry(carry, new_carry)
    params, opt_state, metrics = apply_gradients(tx, state.params, state.opt_state, grads, loss)
    new_carry = _guard_carry(opt_state, carry, jax.lax.stop_gradient(new_carry))
    return TrainState(params, opt_state, new_carry, state.step + 1), metrics


def make_step(loss_fn: LossFn, tx: optax.GradientTransformation, *, donate: bool = True, mesh: Any = None) -> Step:
    """A jitted TBPTT step over one segment: ``state, metrics = step(state, x, y, reset=None)``.

    One call = forward over the segment from ``state.carry``, gradient with respect to the
    parameters only, optax update; the new ``state.carry`` is the forward state at the
    end of the segment, passed through ``lax.stop_gradient``.

    Args:
      loss_fn: ``loss_fn(params, carry, x, y) -> (loss, carry)``: the loss of one
        segment (a floating scalar) and the carry at its end, with the same tree
        structure, shapes and dtypes as the carry it was given. ``x``/``y`` may be arrays
        or pytrees.
      tx: the optax transformation that ``state.opt_state`` belongs to.
      donate: donate the state's buffers to the new state (the state passed in must not
        be used again).
      mesh: a ``jax.sharding.Mesh`` (:func:`jaxrnn.parallel.data_mesh`) to split the
        batch (axis 0 of ``x``, ``y``, ``reset`` and the carry) over, with the parameters
        and optimizer state replicated: data parallelism with the same results as one
        device. ``None``: one device. The batch size must be a multiple of the number of
        devices (else ``ValueError``).

    Returns:
      A :class:`~jaxrnn.bptt.Step` ``step(state, x, y, reset=None) -> (state, metrics)``.
      ``reset``, a bool array ``(B,)``, zeroes the carry of those rows before the segment
      (:func:`reset_carry`; a call with ``reset`` is traced once more than one without).
      ``metrics = {"loss", "grad_norm"}``: the segment's loss and the global norm of the
      gradient before clipping; plus ``"skipped"`` (total skipped steps) when ``tx`` skips
      non-finite gradients, in which case a non-finite forward state does not replace the
      carry either. ``step.trace_count`` counts traces: it stays 1 over a stream of
      equally shaped segments.
    """
    check_fn(loss_fn, tx)

    def tbptt_step(state: TrainState, x: Any, y: Any, reset: Any = None):
        """One TBPTT segment."""
        return _segment_step(loss_fn, tx, state, x, y, reset)

    return Step(tbptt_step, donate=donate, name="tbptt_step", mesh=mesh, check_inputs=input_check(loss_fn))


def make_epoch(loss_fn: LossFn, tx: optax.GradientTransformation, *, donate: bool = True, mesh: Any = None) -> Step:
    """The fused mode: many TBPTT segments inside one jitted ``lax.scan``.

    ``state, metrics = epoch(state, xs, ys, resets=None)`` with ``xs``/``ys`` holding
    ``S`` stacked segments along a new leading axis (``(S, B, T, ...)``, e.g. from
    ``OffsetBatches.take(S)`` or :func:`jaxrnn.data.split_segments`) gives the same
    result as ``S`` calls of :func:`make_step` in a Python loop, without a round trip to
    Python between segments. ``metrics`` holds each segment's metrics stacked, ``(S,)``.

    Args:
      loss_fn, tx, donate: as for :func:`make_step`.
      mesh: as for :func:`make_step`; the batch is axis 1 of ``xs``, ``ys``, ``resets``.

    Returns:
      A :class:`~jaxrnn.bptt.Step` ``epoch(state, xs, ys, resets=None)``; ``resets``, if
      given, is a bool array ``(S, B)``: the rows reset before each segment.
    """
    check_fn(loss_fn, tx)

    def tbptt_epoch(state: TrainState, xs: Any, ys: Any, resets: Any = None):
        """``S`` TBPTT segments in one ``lax.scan``."""
        lengths = {int(a.shape[0]) for a in jax.tree_util.tree_leaves((xs, ys, resets)) if a.ndim >= 1}
        if len(lengths) != 1:
            raise ValueError(
                f"xs, ys (and resets) must stack the same number of segments on their leading axis, got {sorted(lengths)}"
            )

        def body(st, seg):
            x, y, r = seg
            return _segment_step(loss_fn, tx, st, x, y, r)

        return jax.lax.scan(body, state, (xs, ys, resets))

    return Step(tbptt_epoch, donate=donate, name="tbptt_epoch", mesh=mesh, batch_axis=1,
                check_inputs=input_check(loss_fn))


# --------------------------------------------------------------------------- TBPTT(k1, k2)


class K1K2State(NamedTuple):
    """The state of TBPTT(k1, k2).

    Attributes:
      params, opt_state, step: as in :class:`~jaxrnn.bptt.TrainState`.
      carry: the forward state at the current time (after the last ``k1`` inputs).
      history_carry: the forward state ``h`` steps back, where the next window starts.
      history_x, history_y: the last ``h = min(k2 - k1, steps seen)`` inputs and targets
        (time axis 1), or ``None`` while ``h = 0``.
    """

    params: Any
    opt_state: Any
    carry: Any
    step: jax.Array
    history_carry: Any
    history_x: Any
    history_y: Any


def init_k1k2_state(params: Any, tx: optax.GradientTransformation, carry: Any = None) -> K1K2State:
    """A fresh :class:`K1K2State` with an empty history (arguments as :func:`init_state`)."""
    s = init_state(params, tx, carry)
    return K1K2State(s.params, s.opt_state, s.carry, s.step, _copy(s.carry), None, None)


def _time_len(tree: Any) -> int:
    lengths = {int(a.shape[1]) for a in jax.tree_util.tree_leaves(tree)}
    if len(lengths) != 1:
        raise ValueError(f"every leaf of x and y must have the same time length on axis 1, got {sorted(lengths)}")
    return lengths.pop()


def _slice_t(tree: Any, a: int, b: int) -> Any:
    return jax.tree_util.tree_map(lambda v: v[:, a:b], tree)


def _concat_t(old: Any, new: Any) -> Any:
    if old is None:
        return new
    return jax.tree_util.tree_map(lambda o, n: jnp.concatenate([o, n], axis=1), old, new)


def make_k1k2_step(
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    k1: int,
    k2: int,
    *,
    reduction: str = "mean",
    donate: bool = True,
    mesh: Any = None,
) -> Step:
    """TBPTT(k1, k2): an update every ``k1`` steps, backpropagating ``k2 >= k1`` steps.

    Williams & Peng (1990), "An efficient gradient-based algorithm for on-line training
    of recurrent network trajectories"; the notation of Sutskever (2013, PhD thesis,
    section 2.8.6). Each call reads ``k1`` new steps ``x_new, y_new`` (time axis 1). The
    window is the last ``W = h + k1`` steps, ``h = min(k2 - k1, steps seen before)``
    history steps followed by the new ones. With ``c_s`` the stored forward state at the
    window start (a constant)::

        loss(params) = mean over the last k1 steps of the window of the per-step loss,
                       unrolled with ``params`` from c_s over all W steps
        params, opt_state <- tx.update(grad loss, ...)

    so the error at each of the ``k1`` new steps is backpropagated ``k2`` steps or fewer
    (to the window start), and every target is used in exactly one update. The history
    steps are recomputed with the current parameters from ``c_s``; the state at window
    offset ``W - h'`` (``h' = min(k2 - k1, W)``) is stored as the next window's start.
    With ``k1 == k2`` this is :func:`make_step` exactly.

    The window is cut into pieces at the offsets where the loss starts and where the next
    window will start, and ``loss_fn`` runs on each piece in turn, passing the carry on.
    The losses of the pieces inside the last ``k1`` steps are combined as
    ``Σ (len_i / k1) · loss_i`` (``reduction="mean"``: ``loss_fn`` returns a mean over
    the time steps of its segment) or ``Σ loss_i`` (``reduction="sum"``).

    Args:
      loss_fn: ``loss_fn(params, carry, x, y) -> (loss, carry)``, as for :func:`make_step`.
      tx: the optax transformation that ``state.opt_state`` belongs to.
      k1: steps between updates (the time length of each ``x``).
      k2: steps backpropagated, ``k2 >= k1``.
      reduction: ``"mean"`` or ``"sum"``, how ``loss_fn`` reduces over time (see above).
      donate: donate the state's buffers.
      mesh: as for :func:`make_step` (the history is split over the batch like the carry).

    Returns:
      A :class:`~jaxrnn.bptt.Step` ``step(state, x, y) -> (state, metrics)`` over a
      :class:`K1K2State` from :func:`init_k1k2_state`, with the metrics of
      :func:`make_step` (``"loss"``: the loss over the ``k1`` new steps; ``"grad_norm"``:
      the norm of its gradient through the whole window, before clipping). It is traced once per distinct history length: ``ceil((k2 -
      k1) / k1) + 1`` times while the history fills, then never again.
    """
    check_fn(loss_fn, tx)
    for name, v in (("k1", k1), ("k2", k2)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if k2 < k1:
        raise ValueError(f"k2 must be >= k1 (backpropagate at least the steps between updates), got k1={k1}, k2={k2}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")

    def k1k2_step(state: K1K2State, x: Any, y: Any):
        """One TBPTT(k1, k2) update over ``k1`` new steps."""
        if not isinstance(state, K1K2State):
            raise TypeError(f"state must be a K1K2State (from jr.tbptt.init_k1k2_state), got {type(state).__name__}")
        for name, v in (("x", x), ("y", y)):
            if _time_len(v) != k1:
                raise ValueError(f"{name} must hold k1={k1} time steps on axis 1, got {_time_len(v)}")
        h = 0 if state.history_x is None else _time_len(state.history_x)
        wx, wy = _concat_t(state.history_x, x), _concat_t(state.history_y, y)
        w = h + k1
        h_next = min(k2 - k1, w)
        cut = w - h_next  # the next window starts here
        cuts = sorted({0, cut, h, w})
        start = jax.lax.stop_gradient(state.history_carry)

        def window_loss(params):
            c, total, next_start = start, 0.0, start
            for a, b in zip(cuts[:-1], cuts[1:]):
                out = loss_fn(params, c, _slice_t(wx, a, b), _slice_t(wy, a, b))
                if not isinstance(out, tuple) or len(out) != 2:
                    raise TypeError(f"loss_fn(params, carry, x, y) must return a pair (loss, carry), got {type(out).__name__}")
                piece, new_c = out
                _check_new_carry(c, new_c)
                c = new_c
                if a >= h:
                    total = total + (piece * ((b - a) / k1) if reduction == "mean" else piece)
                if b == cut:
                    next_start = c
            return total, (c, next_start)

        (loss, (carry, next_start)), grads = jax.value_and_grad(window_loss, has_aux=True)(state.params)
        params, opt_state, metrics = apply_gradients(tx, state.params, state.opt_state, grads, loss)
        carry = _guard_carry(opt_state, state.carry, jax.lax.stop_gradient(carry))
        next_start = _guard_carry(opt_state, state.history_carry, jax.lax.stop_gradient(next_start))
        hx = None if h_next == 0 else _slice_t(wx, cut, w)
        hy = None if h_next == 0 else _slice_t(wy, cut, w)
        return K1K2State(params, opt_state, carry, state.step + 1, next_start, hx, hy), metrics

    return Step(k1k2_step, donate=donate, name="k1k2_step", quiet_donation=True, mesh=mesh,
                check_inputs=input_check(loss_fn))

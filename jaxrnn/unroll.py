"""Unrolling cells over time with ``lax.scan``.

``jr.unroll(cell, params, xs, carry)`` runs ``cell`` over the time axis of ``xs``. The
input projection ``x W_x + b`` is hoisted out of the loop (one large matrix product over
the whole sequence); the scan body only does ``h W_h`` and the gate nonlinearities. Since
the body is traced once, compile time does not grow with the sequence length.

Three kinds of recurrent module can be unrolled:

* a cell: a built-in one (``jr.rnn``, ``jr.lstm``, ``jr.gru``) or one of your own, any
  object with ``init``, ``initial_carry``, ``apply`` and ``hidden_size`` (see
  :class:`~jaxrnn.cells.Cell`). A built-in cell runs through its hand-written derivative
  (:mod:`jaxrnn.fused`); any other cell is a ``lax.scan`` of its ``apply`` (or of its
  ``step`` over the hoisted ``project`` when it has both), with the same ``lengths``,
  ``reverse`` and ``remat`` options. A cell whose recurrence is linear in ``h``
  (``Cell.linear``: ``jr.mingru``, ``jr.minlstm``) runs ``h_t = a_t * h_{t-1} + b_t``
  step by step or with ``jax.lax.associative_scan`` (the ``scan`` option,
  :mod:`jaxrnn.linear_scan`);
* a :class:`Stack` of layers (``jr.stack([...], dropout=p)``), optionally with dropout
  between layers driven by an explicit PRNG key;
* a :class:`Bidirectional` layer (``jr.bidirectional(cell)``) whose output concatenates
  a forward and a backward pass.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Union

import jax
import jax.numpy as jnp

from jaxrnn._checks import as_key, check_floating, check_integer, check_rank, concrete_values, shape_str
from jaxrnn.cells import (
    Cell, check_apply, check_carry, check_cell, check_cell_carry, check_cell_params, check_params, is_builtin,
)
from jaxrnn import fused as _fused
from jaxrnn import linear_scan as _linear
from jaxrnn.layers import dropout as _dropout

Array = jax.Array

__all__ = ["unroll", "unroll_readout", "reduce_blocks", "stack", "bidirectional", "Stack", "Bidirectional",
           "output_size"]


class Bidirectional(NamedTuple):
    """A forward and a backward cell over the same sequence; outputs concatenated.

    ``params = {"forward": ..., "backward": ...}``, ``carry = (forward_carry,
    backward_carry)``. The backward cell reads each row's valid steps from last to first
    (as PyTorch's packed sequences do), and its output at step ``t`` is aligned with the
    input at step ``t``. Output size ``2 H``.
    """

    forward: Cell
    backward: Cell

    @property
    def hidden_size(self) -> int:
        return self.forward.hidden_size + self.backward.hidden_size

    def init(self, key: Array, input_size: int, dtype=jnp.float32) -> dict:
        kf, kb = jax.random.split(as_key(key))
        return {"forward": self.forward.init(kf, input_size, dtype), "backward": self.backward.init(kb, input_size, dtype)}

    def initial_carry(self, batch_size: Any = None, dtype=jnp.float32):
        return (self.forward.initial_carry(batch_size, dtype), self.backward.initial_carry(batch_size, dtype))


class Stack(NamedTuple):
    """Recurrent layers applied one after another, each over the whole sequence.

    ``params`` is a list (one entry per layer), ``carry`` a tuple (one per layer). With
    ``dropout > 0`` and a ``key`` passed to :func:`unroll`, inverted dropout is applied to
    the outputs of every layer but the last (PyTorch's ``nn.LSTM(dropout=p)``); without a
    key the stack is deterministic (evaluation mode).
    """

    layers: tuple
    dropout: float = 0.0

    @property
    def hidden_size(self) -> int:
        return output_size(self.layers[-1])

    def init(self, key: Array, input_size: int, dtype=jnp.float32) -> list:
        keys = jax.random.split(as_key(key), len(self.layers))
        params, size = [], input_size
        for k, layer in zip(keys, self.layers):
            params.append(layer.init(k, size, dtype))
            size = output_size(layer)
        return params

    def initial_carry(self, batch_size: Any = None, dtype=jnp.float32) -> tuple:
        return tuple(layer.initial_carry(batch_size, dtype) for layer in self.layers)

    def apply(self, params: list, carry: tuple, x_t: Array):
        """One time step through every layer (no dropout): ``(carry, y_t)``.

        Only for stacks of cells (a bidirectional layer needs the whole sequence).
        Useful for sampling one token at a time.
        """
        _check_stack_args(self, params, carry)
        new_carry, y = [], x_t
        for i, (layer, p, c) in enumerate(zip(self.layers, params, carry)):
            if isinstance(layer, Bidirectional):
                raise TypeError(
                    f"Stack.apply steps plain cells only; layer {i} is a {type(layer).__name__}, "
                    "which needs the whole sequence (use jr.unroll)"
                )
            c, y = layer.apply(p, c, y)
            new_carry.append(c)
        return tuple(new_carry), y


Module = Union[Cell, Stack, Bidirectional, Any]


def _check_module(module: Any, name: str) -> None:
    if not isinstance(module, (Stack, Bidirectional)):
        check_cell(module, name)


def output_size(module: Module) -> int:
    """The feature size of the outputs ``ys`` of :func:`unroll` for ``module``."""
    _check_module(module, "module")
    return int(module.hidden_size)


def stack(layers, dropout: float = 0.0) -> Stack:
    """Stack recurrent layers (cells or bidirectional layers) into a multi-layer network.

    Args:
      layers: a sequence of cells (built-in or your own, see :class:`~jaxrnn.cells.Cell`)
        and :class:`Bidirectional` layers; layer ``i + 1`` reads the outputs of layer ``i``.
      dropout: inverted-dropout rate between layers (applied when :func:`unroll` gets a
        ``key``).

    Example::

      >>> import jax, jax.numpy as jnp, jaxrnn as jr
      >>> net = jr.stack([jr.lstm(16), jr.lstm(16)], dropout=0.2)
      >>> params = net.init(jax.random.key(0), input_size=4)
      >>> carry, ys = jr.unroll(net, params, jnp.ones((2, 5, 4)), key=jax.random.key(1))
      >>> ys.shape, len(carry)
      ((2, 5, 16), 2)
    """
    layers = tuple(layers)
    if not layers:
        raise ValueError("layers must hold at least one layer, got an empty sequence")
    for i, layer in enumerate(layers):
        _check_module(layer, f"layers[{i}]")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    return Stack(layers, float(dropout))


def bidirectional(forward: Cell, backward: Cell | None = None) -> Bidirectional:
    """A bidirectional layer: ``forward`` reads left to right, ``backward`` (default: a cell
    of the same kind and size, with its own parameters) reads right to left. Either may
    be a cell of your own.

    Example::

      >>> import jax, jax.numpy as jnp, jaxrnn as jr
      >>> bi = jr.bidirectional(jr.gru(8))
      >>> params = bi.init(jax.random.key(0), input_size=3)
      >>> (cf, cb), ys = jr.unroll(bi, params, jnp.ones((2, 5, 3)))
      >>> ys.shape
      (2, 5, 16)
    """
    for name, c in (("forward", forward), ("backward", backward)):
        if c is not None:
            check_cell(c, name)
    return Bidirectional(forward, forward if backward is None else backward)


# --------------------------------------------------------------------------- checks


def _check_stack_args(net: Stack, params, carry) -> None:
    n = len(net.layers)
    if not isinstance(params, (list, tuple)) or len(params) != n:
        got = f"a {type(params).__name__} of length {len(params)}" if isinstance(params, (list, tuple)) else type(params).__name__
        raise TypeError(f"params of a {n}-layer Stack must be a list of {n} per-layer params, got {got}")
    if carry is not None and (not isinstance(carry, (list, tuple)) or len(carry) != n):
        got = f"a {type(carry).__name__} of length {len(carry)}" if isinstance(carry, (list, tuple)) else type(carry).__name__
        raise TypeError(f"carry of a {n}-layer Stack must be a tuple of {n} per-layer carries, got {got}")


def _check_xs(xs: Any, time_major: bool) -> None:
    check_rank("xs", xs, (2, 3), "((batch, time, features), (time, batch, features) with time_major=True, "
               "or (time, features) unbatched)")
    check_floating("xs", xs)


def _check_lengths(lengths: Any, batch: tuple[int, ...], steps: int) -> None:
    check_integer("lengths", lengths)
    if tuple(lengths.shape) != batch:
        raise ValueError(
            f"lengths must have shape {shape_str(batch)} (one length per row of xs), got {shape_str(lengths.shape)}"
        )
    values = concrete_values(lengths)
    if values is not None and values.size:
        lo, hi = int(values.min()), int(values.max())
        if lo < 0 or hi > steps:
            raise ValueError(f"lengths must lie in [0, {steps}] (the time length of xs), got values in [{lo}, {hi}]")


def _check_unroll(unroll: Any) -> None:
    if isinstance(unroll, bool) or not isinstance(unroll, int) or unroll < 1:
        raise ValueError(f"unroll must be a positive int, got {unroll!r}")


def check_remat(remat: Any) -> Any:
    """Return ``remat`` if it is ``None``, ``"step"``, ``"sqrt"`` or a positive int; else
    raise a ``ValueError`` naming ``remat``, what it takes and what was given."""
    _block_length(remat, 1)
    return remat


def _block_length(remat: Any, steps: int) -> int | None:
    """None for no block checkpointing, else the block length."""
    if remat is None or remat == "step":
        return None
    if remat == "sqrt":
        return max(1, int(math.ceil(math.sqrt(max(steps, 1)))))
    if isinstance(remat, int) and not isinstance(remat, bool) and remat >= 1:
        return remat
    raise ValueError(f"remat must be None, 'step', 'sqrt' or a positive int block length, got {remat!r}")


# --------------------------------------------------------------------------- the scan


def _reverse_valid(x_tm: Array, lengths: Array | None) -> Array:
    """Reverse each row's first ``lengths[b]`` steps along axis 0; padded steps stay put.

    The permutation is an involution, so applying it twice restores the input.
    """
    steps = x_tm.shape[0]
    if lengths is None:
        return jnp.flip(x_tm, axis=0)
    t = jnp.arange(steps).reshape((steps,) + (1,) * lengths.ndim)
    idx = jnp.where(t < lengths, lengths - 1 - t, t)  # (T, *batch); x_tm is (T, *batch, F)
    return jnp.take_along_axis(x_tm, idx[..., None], axis=0)


def _hold(m_t: Array, new, old):
    """``where(m_t, new, old)`` leaf by leaf; ``m_t`` has the batch shape, each leaf the
    batch shape followed by any feature dimensions."""
    def pick(n, o):
        m = m_t.reshape(m_t.shape + (1,) * (n.ndim - m_t.ndim))
        return jnp.where(m, n, o)

    return jax.tree_util.tree_map(pick, new, old)


def _scan_cell(fn, params, xs: Array, carry, mask: Array | None, unroll: int, remat: Any):
    """Scan ``fn(params, carry, x_t) -> (carry, y_t)`` over axis 0 of ``xs``; ``mask``
    ``(T, *batch)``: where False the carry is held and ``y_t`` is zero."""
    steps = xs.shape[0]

    def body(c, inp):
        x_t, m_t = inp
        new_c, y = fn(params, c, x_t)
        if m_t is not None:
            new_c = _hold(m_t, new_c, c)
            y = _hold(m_t, y, jnp.zeros_like(y))
        return new_c, y

    block = _block_length(remat, steps)
    if block is None:
        if remat == "step":
            body = jax.checkpoint(body, prevent_cse=False)
        return jax.lax.scan(body, carry, (xs, mask), unroll=unroll)

    # Blocks of `block` steps: the outer scan keeps one carry per block; each block's
    # inner scan is recomputed in the backward pass.
    n_blocks = -(-steps // block)
    pad = n_blocks * block - steps
    if pad:
        valid = jnp.arange(n_blocks * block) < steps
        valid = valid.reshape((-1,) + (1,) * (xs.ndim - 2))
        xs = jnp.concatenate([xs, jnp.zeros((pad,) + xs.shape[1:], xs.dtype)], axis=0)
        if mask is None:
            mask = jnp.broadcast_to(valid, (n_blocks * block,) + xs.shape[1:-1])
        else:
            mask = jnp.concatenate([mask, jnp.zeros((pad,) + mask.shape[1:], bool)], axis=0)
    xs_b = xs.reshape((n_blocks, block) + xs.shape[1:])
    mask_b = None if mask is None else mask.reshape((n_blocks, block) + mask.shape[1:])

    @jax.checkpoint
    def block_body(c, inp):
        return jax.lax.scan(body, c, inp, unroll=unroll)

    carry, ys = jax.lax.scan(block_body, carry, (xs_b, mask_b))
    ys = ys.reshape((n_blocks * block,) + ys.shape[2:])
    return carry, ys[:steps]


def _compute_dtype(xs_tm: Array, params) -> Any:
    """The dtype a step computes in: ``xs`` promoted with the params' floating dtypes."""
    floats = [p.dtype for p in jax.tree_util.tree_leaves(params)
              if hasattr(p, "dtype") and jnp.issubdtype(p.dtype, jnp.floating)]
    return jnp.result_type(xs_tm.dtype, *floats)


def _builtin_carry(cell: Cell, params, xs_tm: Array, carry):
    """Check a built-in cell's params and carry (rich messages); return the carry."""
    input_size = check_params(params, cell.kind, cell.hidden_size)
    if xs_tm.shape[-1] != input_size:
        raise ValueError(
            f"xs must have shape (..., {input_size}) (the input_size of params['w_x']), "
            f"got xs with {xs_tm.shape[-1]} features in its last axis"
        )
    batch = tuple(xs_tm.shape[1:-1])
    # The step computes in the promoted dtype of xs and the params (e.g. bfloat16 inputs
    # with float32 weights give a float32 state); the carry must already hold that dtype.
    dtype = _compute_dtype(xs_tm, params)
    if carry is None:
        return cell.initial_carry(batch if batch else None, dtype)
    carry_batch = check_carry(carry, cell.kind, cell.hidden_size)
    if carry_batch != batch:
        raise ValueError(
            f"carry has batch shape {shape_str(carry_batch)} but xs has batch shape "
            f"{shape_str(batch)}; they must match"
        )
    for leaf in jax.tree_util.tree_leaves(carry):
        if jnp.result_type(dtype, leaf.dtype) != leaf.dtype:
            raise TypeError(
                f"carry has dtype {leaf.dtype} but the step computes in {dtype} (xs is "
                f"{xs_tm.dtype}, params['w_x'] is {params['w_x'].dtype}); pass a carry of dtype {dtype}"
            )
    return carry


def _user_carry(cell, params, xs_tm: Array, carry):
    """Check a user cell's params, carry and one abstract step; return the carry."""
    batch = tuple(xs_tm.shape[1:-1])
    check_cell_params(cell, params, int(xs_tm.shape[-1]))
    if carry is None:
        carry = cell.initial_carry(batch if batch else None, _compute_dtype(xs_tm, params))
    else:
        check_cell_carry(cell, carry, batch)
    check_apply(cell, params, carry, jax.ShapeDtypeStruct(xs_tm.shape[1:], xs_tm.dtype))
    return carry


def checked_carry(cell, params, xs_tm: Array, carry):
    """Check ``cell``'s params and ``carry`` against time-major ``xs_tm`` (and, for a cell
    of the user's own, trace one step abstractly); return the carry, zeros if ``None``."""
    if is_builtin(cell):
        return _builtin_carry(cell, params, xs_tm, carry)
    return _user_carry(cell, params, xs_tm, carry)


def _unroll_cell(cell, params, xs_tm: Array, carry, lengths, reverse: bool, unroll: int, remat,
                 scan: str = "auto", name: str = "cell"):
    builtin = is_builtin(cell)
    associative = _linear.use_associative(scan, cell, xs_tm.shape[0], name)
    linear = getattr(cell, "linear", None)
    if linear is not None:
        _linear.check_linear(cell, params, xs_tm, name)
    carry = checked_carry(cell, params, xs_tm, carry)
    if linear is not None:
        _linear.check_state(carry, name)
    steps = xs_tm.shape[0]
    batch = tuple(xs_tm.shape[1:-1])
    mask = None
    if lengths is not None:
        mask = jnp.arange(steps).reshape((steps,) + (1,) * len(batch)) < lengths
        # Padded steps must have no effect, forward or backward: the step never reads
        # what lies there (a NaN would otherwise come back as 0 * NaN through `where`).
        xs_tm = jnp.where(mask[..., None], xs_tm, jnp.zeros((), xs_tm.dtype))
    if reverse:
        xs_tm = _reverse_valid(xs_tm, lengths)
    if associative:
        carry, ys = _linear.associative(linear, params, xs_tm, carry, mask, remat)
    elif linear is not None:
        # h_t = a_t * h_{t-1} + b_t step by step, every a_t and b_t computed up front.
        ab = _linear.sequential_inputs(linear, params, xs_tm)
        carry, ys = _scan_cell(_linear.sequential_step, None, ab, carry, mask, unroll, remat)
    elif builtin and _fused.applies(cell, params, xs_tm, carry):
        # Built-in cells: hand-written derivative, chunked projection (jaxrnn/fused.py).
        carry, ys = _fused.scan(cell, params, xs_tm, carry, mask, unroll, remat)
    elif getattr(cell, "project", None) is not None and getattr(cell, "step", None) is not None:
        carry, ys = _scan_cell(cell.step, params, cell.project(params, xs_tm), carry, mask, unroll, remat)
    else:
        carry, ys = _scan_cell(cell.apply, params, xs_tm, carry, mask, unroll, remat)
    if reverse:
        ys = _reverse_valid(ys, lengths)
    return carry, ys


def _unroll_tm(module: Module, params, xs_tm, carry, lengths, reverse, unroll, remat, key, scan="auto", name="cell"):
    if isinstance(module, Bidirectional):
        if reverse:
            raise ValueError("reverse=True has no meaning for a Bidirectional layer (it already reads both ways)")
        if not isinstance(params, dict) or set(params) != {"forward", "backward"}:
            got = sorted(params) if isinstance(params, dict) else type(params).__name__
            raise TypeError(f"params of a Bidirectional layer must be a dict with keys ['backward', 'forward'], got {got}")
        if carry is not None and (not isinstance(carry, (tuple, list)) or len(carry) != 2):
            raise TypeError("carry of a Bidirectional layer must be a pair (forward_carry, backward_carry)")
        cf, cb = (None, None) if carry is None else carry
        cf, yf = _unroll_cell(module.forward, params["forward"], xs_tm, cf, lengths, False, unroll, remat, scan,
                              f"{name}.forward")
        cb, yb = _unroll_cell(module.backward, params["backward"], xs_tm, cb, lengths, True, unroll, remat, scan,
                              f"{name}.backward")
        return (cf, cb), jnp.concatenate([yf, yb], axis=-1)
    if isinstance(module, Stack):
        _check_stack_args(module, params, carry)
        carries = (None,) * len(module.layers) if carry is None else carry
        keys = [None] * len(module.layers)
        if key is not None and module.dropout > 0 and len(module.layers) > 1:
            keys = list(jax.random.split(key, len(module.layers)))
        new_carry, ys = [], xs_tm
        for i, (layer, p, c) in enumerate(zip(module.layers, params, carries)):
            if i > 0:
                ys = _dropout(ys, module.dropout, keys[i])
            c, ys = _unroll_tm(layer, p, ys, c, lengths, reverse, unroll, remat, None, scan, f"{name}.layers[{i}]")
            new_carry.append(c)
        return tuple(new_carry), ys
    return _unroll_cell(module, params, xs_tm, carry, lengths, reverse, unroll, remat, scan, name)


def unroll(
    cell: Module,
    params,
    xs: Array,
    carry=None,
    *,
    lengths: Array | None = None,
    reverse: bool = False,
    time_major: bool = False,
    unroll: int = 1,
    remat: Any = None,
    key: Array | None = None,
    backend: str = "xla",
    scan: str = "auto",
):
    """Run a recurrent module over a sequence with ``lax.scan``.

    Args:
      cell: a cell (built-in or your own: any object with ``init``, ``initial_carry``,
        ``apply`` and ``hidden_size``, see :class:`~jaxrnn.cells.Cell`), a :class:`Stack`
        or a :class:`Bidirectional` layer.
      params: its parameters.
      xs: ``(batch, time, features)``; ``(time, batch, features)`` with
        ``time_major=True``; or ``(time, features)`` for one unbatched sequence.
      carry: the initial carry; ``None`` means zeros (``cell.initial_carry``) in the dtype
        the step computes in: that of ``xs`` promoted with the params' dtypes.
      lengths: optional integer array of shape ``(batch,)`` (a scalar for an unbatched
        sequence): the number of valid steps in each row. After a row's last valid step
        the carry stops changing and the outputs are zero, so the final carry is the
        state at step ``lengths[b] - 1``. Padded steps have no effect at all: the step
        reads zeros there, so whatever they hold (even NaN) changes neither the outputs
        nor any gradient.
      reverse: read each row from its last valid step to its first. Outputs stay aligned
        with the inputs (``ys[:, t]`` belongs to ``xs[:, t]``), and the final carry is the
        state after reading step 0.
      time_major: ``xs`` and ``ys`` are ``(time, batch, features)``.
      unroll: passed to ``lax.scan``: how many steps each loop iteration runs. The
        built-in cells' fast path (:mod:`jaxrnn.fused`) already unrolls its forward
        chunks and runs its backward loop at least two steps per iteration; there it sets
        the backward loop's unroll when larger.
      remat: what the backward pass keeps. ``None`` keeps each step's intermediates;
        ``"step"`` keeps only each step's carry and recomputes the rest; an int ``k``
        keeps one carry every ``k`` steps and recomputes each block of ``k``; ``"sqrt"``
        uses ``k = ceil(sqrt(time))`` (for the built-in cells, the divisor of ``time``
        nearest ``sqrt(time)`` when one lies within a factor 2). All give the same values
        to float tolerance. The built-in cells (``jr.lstm``, ``jr.gru``, ``jr.rnn``) run
        through :mod:`jaxrnn.fused`, whose backward pass keeps less per step (see there).
      key: PRNG key for dropout between the layers of a :class:`Stack`; ``None`` turns
        dropout off.
      backend: ``"xla"`` (default): ``lax.scan`` as described here. ``"cudnn"``: an LSTM,
        a bidirectional LSTM or a stack of them, float32, ``remat=None``, runs through
        cuDNN (``jax.experimental.rnn``) on a CUDA GPU, with the same results; anything
        else raises a ``TypeError`` / ``ValueError`` saying why (see
        :mod:`jaxrnn.cudnn`). ``"auto"``: cuDNN where it can run, else ``"xla"``.
      scan: how a cell whose recurrence is linear in ``h`` (``Cell.linear``: ``jr.mingru``,
        ``jr.minlstm`` or one of your own) runs. ``"sequential"``: ``lax.scan`` of
        ``h_t = a_t * h_{t-1} + b_t``, with every ``a_t``, ``b_t`` computed up front;
        ``"associative"``: ``jax.lax.associative_scan`` over the whole sequence
        (``O(log T)`` depth; log space for :class:`~jaxrnn.cells.LogLinear` cells), a
        ``ValueError`` for a cell without ``linear``; ``"auto"`` (default): for linear
        cells the sequential scan on a CPU (measured faster there) and the associative
        one on a GPU or TPU (:func:`jaxrnn.linear_scan.auto_associative`); every other
        cell is sequential. Both give the same values to float
        tolerance, with ``lengths``, ``reverse`` and ``carry``. With the associative
        scan, ``unroll`` is ignored and any ``remat`` but ``None`` recomputes the whole
        scan in the backward pass (see :mod:`jaxrnn.linear_scan`). In a :class:`Stack`
        or :class:`Bidirectional` layer it applies to every cell.

    Returns:
      ``(carry, ys)``: the final carry (same structure as ``carry``) and the outputs,
      ``(batch, time, H)`` (``(time, batch, H)`` with ``time_major``; ``H`` is
      ``2 * hidden_size`` for a bidirectional layer).

    Example::

      >>> import jax, jax.numpy as jnp, jaxrnn as jr
      >>> cell = jr.lstm(16)
      >>> params = cell.init(jax.random.key(0), input_size=4)
      >>> (h, c), ys = jr.unroll(cell, params, jnp.ones((2, 7, 4)), lengths=jnp.array([7, 3]))
      >>> ys.shape, bool((ys[1, 3:] == 0).all())
      ((2, 7, 16), True)
    """
    _linear.check_scan(scan)
    if backend == "cudnn" and scan == "associative":
        raise ValueError("scan='associative' runs on backend='xla' (cuDNN has no associative scan); got backend='cudnn'")
    if backend != "xla" and not (backend == "auto" and scan == "associative"):
        # The cuDNN path (jaxrnn/cudnn.py); imported here, since it imports this module.
        from jaxrnn import cudnn as _cudnn

        out = _cudnn.dispatch(backend, cell, params, xs, carry, lengths=lengths, reverse=reverse,
                              time_major=time_major, unroll=unroll, remat=remat, key=key)
        if out is not None:
            return out
    _check_module(cell, "cell")
    _check_xs(xs, time_major)
    _check_unroll(unroll)
    _block_length(remat, 1)  # validate early
    batched = xs.ndim == 3
    xs_tm = xs if (time_major or not batched) else jnp.swapaxes(xs, 0, 1)
    if lengths is not None:
        _check_lengths(lengths, tuple(xs_tm.shape[1:-1]), xs_tm.shape[0])
    carry, ys_tm = _unroll_tm(cell, params, xs_tm, carry, lengths, reverse, unroll, remat, key, scan)
    ys = ys_tm if (time_major or not batched) else jnp.swapaxes(ys_tm, 0, 1)
    return carry, ys


# --------------------------------------------------------------------------- per-step losses in blocks


def reduce_blocks(fn, carry, xs, *, remat: Any = None, axis: int = 1):
    """Run ``fn`` over consecutive blocks of time steps and sum what each block returns.

    ``fn(carry, xs_block, start) -> (carry, reduced)`` handles the steps ``[start, start
    + k)``: ``xs_block`` is every leaf of ``xs`` sliced to those steps along ``axis``,
    ``start`` an int32 scalar (use it to slice lengths or fold a dropout key), and
    ``reduced`` any pytree of arrays of fixed shape (a loss sum, a count). The result is

        carry_{j+1}, r_j = fn(carry_j, xs[:, j k : (j + 1) k], j k)
        total = r_0 + r_1 + ...

    which equals ``fn(carry, xs, 0)`` whenever ``fn`` is a recurrence followed by a sum
    over time (a per-step loss, a readout summed over steps). Each block runs under
    :func:`jax.checkpoint`, so only the carries at the block boundaries (and the scalar
    sums) cross from the forward to the backward pass; the block's outputs, logits and
    their cotangents exist one block at a time, and are recomputed in the backward pass.

    What the backward pass keeps, by ``remat``:

    * ``None``: one call ``fn(carry, xs, 0)`` without checkpointing (everything ``fn``
      keeps, e.g. all outputs and logits);
    * ``"step"``: blocks of one step: the carry of every step;
    * an int ``k``: the carry at the start of every block of ``k`` steps, plus one
      block's intermediates while that block is recomputed;
    * ``"sqrt"``: ``k`` near ``sqrt(T)`` (the divisor of ``T`` nearest ``sqrt(T)``
      when one lies within a factor 2, else ``ceil(sqrt(T))``), so both terms grow
      like ``sqrt(T)``.

    When ``k`` does not divide ``T`` the last ``T mod k`` steps are one shorter block
    (``fn`` is traced for both lengths), so nothing is padded.

    Args:
      fn: the block function described above.
      carry: the initial carry (any pytree).
      xs: a pytree of arrays sharing their time length along ``axis``.
      remat: ``None``, ``"step"``, ``"sqrt"`` or a positive int block length.
      axis: the time axis of every leaf of ``xs`` (1 for ``(batch, time, ...)``).

    Returns:
      ``(carry, total)``: the carry after the last step and the sum of the blocks'
      ``reduced`` outputs.

    Example::

      >>> import jax, jax.numpy as jnp, jaxrnn as jr
      >>> cell = jr.rnn(4)
      >>> params = cell.init(jax.random.key(0), input_size=3)
      >>> xs = jnp.ones((2, 10, 3))
      >>> def block(c, x, start):
      ...     c, ys = jr.unroll(cell, params, x, c)
      ...     return c, jnp.sum(ys ** 2)
      >>> _, whole = jr.reduce_blocks(block, cell.initial_carry(2), xs)
      >>> _, blocks = jr.reduce_blocks(block, cell.initial_carry(2), xs, remat=3)
      >>> bool(jnp.allclose(whole, blocks))
      True
    """
    leaves = jax.tree_util.tree_leaves(xs)
    if not leaves:
        raise ValueError("xs must hold at least one array with a time axis, got an empty pytree")
    for leaf in leaves:
        if not hasattr(leaf, "shape") or leaf.ndim <= axis:
            shape = shape_str(getattr(leaf, "shape", ()))
            raise ValueError(f"every leaf of xs must have a time axis {axis}, got shape {shape}")
    steps = int(leaves[0].shape[axis])
    if any(int(leaf.shape[axis]) != steps for leaf in leaves):
        got = sorted({int(leaf.shape[axis]) for leaf in leaves})
        raise ValueError(f"every leaf of xs must have the same length along axis {axis}, got lengths {got}")
    if remat == "sqrt":  # a divisor of T near sqrt(T): no shorter last block to trace
        k = _fused.chunk_length(steps, "sqrt")
    else:
        k = 1 if remat == "step" else _block_length(remat, steps)
    if k is None or steps == 0:
        return fn(carry, xs, jnp.int32(0))

    def cut(start, length):
        return jax.tree_util.tree_map(lambda a: jax.lax.dynamic_slice_in_dim(a, start, length, axis=axis), xs)

    n, rest = divmod(steps, k)
    total = None
    if n:
        @jax.checkpoint
        def block(c, j):
            start = j * k
            return fn(c, cut(start, k), start)

        zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype),
                                       jax.eval_shape(block, carry, jnp.int32(0))[1])

        def body(state, j):
            c, acc = state
            c, r = block(c, j)
            return (c, jax.tree_util.tree_map(jnp.add, acc, r)), None

        (carry, total), _ = jax.lax.scan(body, (carry, zeros), jnp.arange(n, dtype=jnp.int32))
    if rest:
        start = jnp.int32(n * k)
        carry, r = jax.checkpoint(lambda c: fn(c, cut(start, rest), start))(carry)
        total = r if total is None else jax.tree_util.tree_map(jnp.add, total, r)
    return carry, total


def _check_blockwise(module: Module) -> None:
    """Blocks read time forwards; a bidirectional layer needs the whole sequence at once."""
    layers = module.layers if isinstance(module, Stack) else (module,)
    for layer in layers:
        if isinstance(layer, Bidirectional):
            raise TypeError(
                "unroll_readout runs the sequence in blocks from first to last step; a Bidirectional layer "
                "reads it backwards too, so it cannot be cut into blocks (use jr.unroll and a plain readout)"
            )


def unroll_readout(
    cell: Module,
    params,
    xs: Array,
    readout,
    carry=None,
    *,
    targets: Any = None,
    lengths: Array | None = None,
    remat: Any = None,
    key: Array | None = None,
    unroll: int = 1,
):
    """Unroll a recurrent module and sum a per-step readout, block by block.

    Equivalent to::

        carry, ys = jr.unroll(cell, params, xs, carry, lengths=lengths, key=key)
        mask = arange(T) < lengths[:, None]          # all True without lengths
        total = readout(ys, targets, mask)

    for any ``readout`` that is a sum over time steps (a summed per-step loss, a
    readout summed over steps), but without ever holding all of ``ys`` (or what the
    readout makes of them, e.g. ``(B, T, V)`` logits) at once when ``remat`` is set:
    time is cut into blocks (see :func:`reduce_blocks`), and each block's recurrence
    and readout run, and in the backward pass rerun, under :func:`jax.checkpoint`.
    What the backward pass keeps, by ``remat``:

    * ``None``: everything, all outputs ``ys`` and the readout's intermediates;
    * ``"step"``: the carry of every step;
    * an int ``k``: the carry every ``k`` steps, and one block of ``k`` steps at a time;
    * ``"sqrt"``: the same with ``k`` near ``sqrt(T)``: memory grows like ``sqrt(T)``.

    Within a block the module unrolls with ``remat=None`` (for the built-in cells, their
    fast path with its hoisted input projection).

    Args:
      cell: a cell (built-in or your own), or a :class:`Stack` of cells. A
        :class:`Bidirectional` layer is refused (``TypeError``): it reads the sequence
        backwards, which blocks from first to last cannot do.
      params: its parameters.
      xs: ``(batch, time, features)``, or ``(time, features)`` unbatched.
      readout: ``readout(ys, targets, mask) -> pytree`` for one block: ``ys`` the block's
        outputs ``(batch, k, H)`` (zero at steps past a row's length), ``targets`` the
        block's slice of ``targets`` along time (``None`` when none were given), ``mask``
        ``(batch, k)`` bool, True at valid steps. It must return a sum over the block's
        steps (arrays of fixed shape); the blocks' results are added.
      carry: the initial carry; ``None`` means zeros.
      targets: ``None`` or a pytree of arrays with the time axis where ``xs`` has it
        (``(batch, time, ...)``), sliced alongside ``xs``.
      lengths: optional ``(batch,)`` valid lengths, as in :func:`unroll`.
      remat: ``None``, ``"step"``, ``"sqrt"`` or a positive int block length.
      key: PRNG key for dropout between the layers of a :class:`Stack`. With ``remat``
        set, block ``j`` (starting at step ``s``) draws its masks from
        ``jax.random.fold_in(key, s)``: the same distribution as one key over the whole
        sequence, but other masks than ``remat=None`` draws; the backward pass redraws
        the same masks.
      unroll: ``lax.scan`` unroll inside each block (see :func:`unroll`).

    Returns:
      ``(carry, total)``: the final carry and the summed readout.

    Example::

      >>> import jax, jax.numpy as jnp, jaxrnn as jr
      >>> cell = jr.lstm(8)
      >>> params = cell.init(jax.random.key(0), input_size=3)
      >>> xs, ys_true = jnp.ones((2, 9, 3)), jnp.zeros((2, 9, 8))
      >>> def sse(ys, targets, mask):                    # summed squared error of the valid steps
      ...     return jnp.sum(mask[..., None] * (ys - targets) ** 2)
      >>> lengths = jnp.array([9, 4])
      >>> _, a = jr.unroll_readout(cell, params, xs, sse, targets=ys_true, lengths=lengths)
      >>> _, b = jr.unroll_readout(cell, params, xs, sse, targets=ys_true, lengths=lengths, remat="sqrt")
      >>> bool(jnp.allclose(a, b))
      True
    """
    _check_module(cell, "cell")
    _check_blockwise(cell)
    _check_xs(xs, False)
    _check_unroll(unroll)
    _block_length(remat, 1)  # validate early
    if not callable(readout):
        raise TypeError(f"readout must be a function readout(ys, targets, mask), got {type(readout).__name__}")
    batched = xs.ndim == 3
    axis = 1 if batched else 0
    steps = xs.shape[axis]
    batch = tuple(xs.shape[:1]) if batched else ()
    if lengths is not None:
        _check_lengths(lengths, batch, steps)
    if targets is not None:
        for leaf in jax.tree_util.tree_leaves(targets):
            if leaf.ndim <= axis or leaf.shape[axis] != steps:
                raise ValueError(
                    f"every array in targets must have the time length {steps} of xs along axis {axis}, "
                    f"got shape {shape_str(leaf.shape)}"
                )
    blocked = remat is not None
    if carry is None:  # zeros, made here: the scan over blocks needs a carry to start from
        shapes = jax.eval_shape(lambda x: _unroll_tm_batch(cell, params, x, None, None, unroll, None, batched)[0], xs)
        carry = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    def block(c, inp, start):
        x_b, t_b = inp
        k = x_b.shape[axis]
        if lengths is None:
            len_b, mask = None, jnp.ones(batch + (k,), bool)
        else:
            len_b = jnp.clip(lengths - start, 0, k).astype(lengths.dtype)
            mask = start + jnp.arange(k) < jnp.asarray(lengths)[..., None]
        k_b = jax.random.fold_in(key, start) if (key is not None and blocked) else key
        c, ys = _unroll_tm_batch(cell, params, x_b, c, len_b, unroll, k_b, batched)
        return c, readout(ys, t_b, mask)

    return reduce_blocks(block, carry, (xs, targets), remat=remat, axis=axis)


def _unroll_tm_batch(cell, params, x, carry, lengths, unroll_, key, batched):
    """:func:`unroll` of one block without re-validating the arguments."""
    x_tm = jnp.swapaxes(x, 0, 1) if batched else x
    carry, ys = _unroll_tm(cell, params, x_tm, carry, lengths, False, unroll_, None, key)
    return carry, (jnp.swapaxes(ys, 0, 1) if batched else ys)

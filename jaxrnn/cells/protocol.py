"""The cell protocol: what every cell has, and the trace-time checks of a cell of your own.

A cell is one recurrent time step as pure functions. :class:`Cell` is the NamedTuple that
holds them; any object with the same four attributes (``init``, ``initial_carry``,
``apply``, ``hidden_size``) is a cell too. The ``check_*`` functions are what
:func:`jaxrnn.unroll` and the other consumers run at trace time on a cell they did not
make, so a wrong shape gets an error that names it instead of an XLA error.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxrnn._checks import shape_str

Array = jax.Array
Params = Any
Carry = Any

__all__ = ["Cell", "LogLinear", "linear_space", "check_cell", "check_cell_params", "check_cell_carry", "check_apply"]


class LogLinear(NamedTuple):
    """The coefficients of a linear recurrence ``h_t = a_t * h_{t-1} + b_t`` given as
    logarithms: ``log_a = log(a)`` and ``log_b = log(b)`` (so ``a > 0`` and ``b > 0``).

    A cell's ``linear`` function returns this instead of the pair ``(a, b)`` to have the
    associative scan run in log space (combining with ``logaddexp``), as the log-space
    minGRU and minLSTM do (:mod:`jaxrnn.cells.minimal`).
    """

    log_a: Array
    log_b: Array


def linear_space(coefficients: Any) -> tuple[Array, Array]:
    """``(a, b)`` from what a cell's ``linear`` returns: the pair itself, or
    ``(exp(log_a), exp(log_b))`` for :class:`LogLinear`."""
    if isinstance(coefficients, LogLinear):
        return jnp.exp(coefficients.log_a), jnp.exp(coefficients.log_b)
    a, b = coefficients
    return a, b


class Cell(NamedTuple):
    """One recurrent time step as pure functions: the cell protocol.

    A cell is anything with these four attributes; every part of jaxrnn (unroll, stack,
    bidirectional, the sequence shapes, TBPTT and BPTT, parallel, checkpoints,
    diagnostics, the language model, the Flax and Equinox wrappers) accepts it::

        params        = cell.init(key, input_size, dtype=jnp.float32)   # any pytree
        carry         = cell.initial_carry(batch_size, dtype=jnp.float32)
        carry, y_t    = cell.apply(params, carry, x_t)    # x_t: (*batch, input_size)
        cell.hidden_size                                  # y_t: (*batch, hidden_size)

    ``batch_size`` is an int, a tuple of batch dimensions, or ``None`` for an unbatched
    carry; the carry may be any pytree (an array, a tuple, a dict) whose leaves have the
    batch dimensions in front, and ``apply`` must return a carry of the same structure,
    shapes and dtypes. ``init`` also accepts an int seed in place of a PRNG key for the
    built-in cells. Build a cell of your own with keyword arguments::

        cell = jr.Cell(init=my_init, initial_carry=my_zeros, apply=my_step, hidden_size=64)

    and leave the other fields at their defaults. A class of your own with the same four
    attributes works too.

    Attributes:
      init: ``init(key, input_size, dtype=jnp.float32) -> params``.
      initial_carry: ``initial_carry(batch_size, dtype=jnp.float32) -> carry``.
      apply: ``apply(params, carry, x_t) -> (carry, y_t)``.
      hidden_size: ``H``, the size of ``y_t``'s last axis.
      project: optional ``project(params, x) -> xp``, the part of a step that reads only
        the input, for any leading dimensions. With ``step`` it lets :func:`jaxrnn.unroll`
        hoist the input product out of the time loop (one large product over the whole
        sequence); ``None`` (the default) means no hoisting: ``apply`` runs per step.
      step: optional ``step(params, carry, xp_t) -> (carry, y_t)`` with
        ``apply(params, carry, x_t) == step(params, carry, project(params, x_t))``.
      kind: the name of a built-in cell, its key in :data:`jaxrnn.cells.BUILTIN`
        (``"lstm"``, ``"gru"``, ``"rnn"``, ``"rnn_relu"``, ``"lstmp"``, ``"lnlstm"``,
        ``"lngru"``, ``"mgu"``, ``"indrnn"``, ``"mingru"``, ``"minlstm"``); ``None`` for
        cells of your own.
      num_gates: ``G`` for the built-in cells: the number of ``H``-wide blocks in
        ``w_x``, ``b`` and (where the cell has one) ``w_h``; ``None`` otherwise.
      fused: ``True`` only for the cells made by ``jr.lstm`` (without ``proj_size``),
        ``jr.gru`` and ``jr.rnn``:
        :func:`jaxrnn.unroll` then runs their hand-written derivative
        (:mod:`jaxrnn.fused`, whose table is keyed by ``kind``) instead of a
        ``lax.scan`` of ``apply``. Set it to ``False`` (``cell._replace(fused=False)``)
        if you change the maths of a built-in cell.
      linear: optional ``linear(params, xs) -> (a, b)`` for a cell whose recurrence is
        linear in its state: the carry is one array ``h`` of shape ``(*batch, H)``,
        ``y_t = h_t``, and ``h_t = a_t * h_{t-1} + b_t`` (elementwise) where ``a_t`` and
        ``b_t`` depend on ``x_t`` only. ``xs`` has any leading dimensions (time, batch)
        and ``a``, ``b`` have those followed by ``H``. It may return
        :class:`LogLinear` ``(log_a, log_b)`` instead, for positive coefficients, to have
        the scan run in log space. With it :func:`jaxrnn.unroll` can run the whole
        sequence with ``jax.lax.associative_scan`` (``scan="associative"``, or
        ``"auto"`` on long sequences) instead of step by step. ``apply`` must still
        compute the same step: ``apply(params, h, x_t) == (h', h')`` with
        ``h' = a_t * h + b_t``. ``None`` (the default): the recurrence is not linear.
    """

    init: Callable[..., Params]
    initial_carry: Callable[..., Carry]
    apply: Callable[[Params, Carry, Array], tuple[Carry, Array]]
    hidden_size: int
    project: Callable[[Params, Array], Array] | None = None
    step: Callable[[Params, Carry, Array], tuple[Carry, Array]] | None = None
    kind: str | None = None
    num_gates: int | None = None
    fused: bool = False
    linear: Callable[[Params, Array], Any] | None = None


_PROTOCOL = ("init", "initial_carry", "apply", "hidden_size")


def check_cell(cell: Any, name: str = "cell") -> Any:
    """Check that ``cell`` follows the cell protocol; return it.

    Raises ``TypeError`` naming ``name`` and the missing or non-callable attributes, and
    ``ValueError`` for a ``hidden_size`` that is not a positive int.
    """
    missing = [a for a in _PROTOCOL if not hasattr(cell, a)]
    if missing:
        raise TypeError(
            f"{name} must be a recurrent cell: an object with init, initial_carry, apply and hidden_size "
            f"(e.g. jr.lstm(64), or jr.Cell(init=..., initial_carry=..., apply=..., hidden_size=...)); "
            f"got {_article(type(cell).__name__)} without {', '.join(missing)}"
        )
    for a in ("init", "initial_carry", "apply"):
        if not callable(getattr(cell, a)):
            raise TypeError(f"{name}.{a} must be callable, got {type(getattr(cell, a)).__name__}")
    hs = cell.hidden_size
    if isinstance(hs, bool) or not isinstance(hs, (int, np.integer)) or hs <= 0:
        raise ValueError(f"{name}.hidden_size must be a positive int (the size of y_t), got {hs!r}")
    if isinstance(cell, Cell) and (cell.project is None) != (cell.step is None):
        raise ValueError(
            f"{name} must give both project and step (a hoisted input projection) or neither; got "
            f"project={'None' if cell.project is None else 'a function'}, "
            f"step={'None' if cell.step is None else 'a function'}"
        )
    linear = getattr(cell, "linear", None)
    if linear is not None and not callable(linear):
        raise TypeError(f"{name}.linear must be None or callable, got {type(linear).__name__}")
    return cell


def _article(noun: str) -> str:
    return ("an " if noun[:1].lower() in "aeiou" else "a ") + noun


def _fn_name(f: Any) -> str:
    return getattr(f, "__qualname__", None) or getattr(f, "__name__", None) or repr(f)


def _abstract(tree: Any) -> Any:
    """The tree with every leaf replaced by its ``ShapeDtypeStruct`` (works on tracers)."""
    return jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)), tree)


def _leaf_shapes(tree: Any) -> list:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [(jax.tree_util.keystr(path), tuple(jnp.shape(v))) for path, v in flat]


def check_cell_params(cell: Any, params: Any, input_size: int, name: str = "params") -> None:
    """Check a user cell's params against ``cell.init(key, input_size)``: the same tree
    structure and leaf shapes (dtypes may differ).

    Raises ``TypeError`` (structure) or ``ValueError`` (a shape), naming the leaf. When
    ``init`` cannot be traced abstractly (e.g. it draws from NumPy), nothing is checked.
    """
    try:
        want = jax.eval_shape(lambda: cell.init(jax.random.key(0), input_size))
    except Exception:  # noqa: BLE001 - a best-effort check; apply's own errors still come
        return
    want_def = jax.tree_util.tree_structure(want)
    got_def = jax.tree_util.tree_structure(params)
    init_name = _fn_name(cell.init)
    if want_def != got_def:
        raise TypeError(
            f"{name} do not fit the cell: {init_name}(key, input_size={input_size}) makes {want_def}, "
            f"got {got_def}"
        )
    for (path, shape), (_, want_shape) in zip(_leaf_shapes(params), _leaf_shapes(want)):
        if shape != want_shape:
            raise ValueError(
                f"{name}{path} has shape {shape_str(shape)} but {init_name}(key, input_size={input_size}) "
                f"makes {shape_str(want_shape)}"
            )


def check_cell_carry(cell: Any, carry: Any, batch: tuple[int, ...], name: str = "carry") -> None:
    """Check a user cell's carry against ``cell.initial_carry(batch)``: same tree
    structure and leaf shapes (``TypeError`` / ``ValueError`` naming the leaf)."""
    want = jax.eval_shape(lambda: cell.initial_carry(batch if batch else None))
    want_def = jax.tree_util.tree_structure(want)
    got_def = jax.tree_util.tree_structure(carry)
    fn = _fn_name(cell.initial_carry)
    if want_def != got_def:
        raise TypeError(f"{name} must have the structure of {fn}(...), {want_def}; got {got_def}")
    for (path, shape), (_, want_shape) in zip(_leaf_shapes(carry), _leaf_shapes(want)):
        if shape != want_shape:
            raise ValueError(
                f"{name}{path} has shape {shape_str(shape)}, expected {shape_str(want_shape)} "
                f"(as {fn}(batch_size={batch[0] if len(batch) == 1 else (batch or None)}) makes it)"
            )


def check_apply(cell: Any, params: Any, carry: Any, x_t: Any, name: str = "cell") -> None:
    """Trace ``cell.apply`` abstractly once and check what it returns.

    The new carry must have the structure, shapes and dtypes of the carry it was given,
    and ``y_t`` must be one array of shape ``x_t.shape[:-1] + (hidden_size,)``. Raises
    ``TypeError`` / ``ValueError`` naming the function and what differs, e.g.
    ``apply returned carry['h'] of shape (4, 7), expected (4, 6)``. An exception raised
    inside ``apply`` gets a note saying what it was called with.
    """
    fn = _fn_name(cell.apply)
    a_params, a_carry, a_x = _abstract(params), _abstract(carry), _abstract(x_t)
    try:
        out = jax.eval_shape(cell.apply, a_params, a_carry, a_x)
    except Exception as e:
        if hasattr(e, "add_note"):
            e.add_note(
                f"(raised inside {name}.apply = {fn}, called with params {jax.tree_util.tree_structure(params)}, "
                f"carry {_leaf_shapes(carry)} and x_t of shape {shape_str(a_x.shape)})"
            )
        raise
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise TypeError(f"{fn} must return a pair (carry, y_t), got {type(out).__name__}")
    new, y = out
    old_def, new_def = jax.tree_util.tree_structure(carry), jax.tree_util.tree_structure(new)
    if old_def != new_def:
        raise TypeError(f"{fn} returned a carry of structure {new_def}, expected the structure it was given, {old_def}")
    for (path, n), (_, o) in zip(jax.tree_util.tree_flatten_with_path(new)[0], jax.tree_util.tree_flatten_with_path(a_carry)[0]):
        where = f"carry{jax.tree_util.keystr(path)}"
        if tuple(n.shape) != tuple(o.shape):
            raise ValueError(f"{fn} returned {where} of shape {shape_str(n.shape)}, expected {shape_str(o.shape)}")
        if n.dtype != o.dtype:
            raise TypeError(
                f"{fn} returned {where} of dtype {n.dtype}, expected {o.dtype} (the carry's dtype must not "
                f"change from step to step: pass a carry in the dtype the step computes in)"
            )
    want_y = tuple(a_x.shape[:-1]) + (int(cell.hidden_size),)
    if not hasattr(y, "shape") or not hasattr(y, "dtype"):
        raise TypeError(f"{fn} must return y_t as one array of shape {shape_str(want_y)}, got {type(y).__name__}")
    if tuple(y.shape) != want_y:
        raise ValueError(
            f"{fn} returned y_t of shape {shape_str(y.shape)}, expected {shape_str(want_y)} "
            f"(x_t's batch shape and hidden_size={int(cell.hidden_size)})"
        )


def _check_hidden_size(hidden_size: Any) -> int:
    if isinstance(hidden_size, bool) or not isinstance(hidden_size, int):
        raise TypeError(f"hidden_size must be a positive int, got {hidden_size!r}")
    if hidden_size <= 0:
        raise ValueError(f"hidden_size must be a positive int, got {hidden_size}")
    return hidden_size


def _check_input_size(input_size: Any) -> int:
    if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size <= 0:
        raise ValueError(f"input_size must be a positive int, got {input_size!r}")
    return input_size


def _batch_shape(batch_size: Any) -> tuple[int, ...]:
    if batch_size is None:
        return ()
    if isinstance(batch_size, int) and not isinstance(batch_size, bool):
        if batch_size < 0:
            raise ValueError(f"batch_size must be >= 0, got {batch_size}")
        return (batch_size,)
    if isinstance(batch_size, (tuple, list)) and all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in batch_size
    ):
        return tuple(batch_size)
    raise TypeError(f"batch_size must be an int, a tuple of ints or None, got {batch_size!r}")

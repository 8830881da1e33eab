"""Checked cells from a declared parameter layout (shared by the cells beyond the classic three).

A cell module declares what its params and carry look like (entry names and shapes in
terms of ``H``, ``P`` and the input size) and its maths as ``project`` / ``step``;
:func:`build` turns that into a :class:`~jaxrnn.cells.Cell` whose ``apply``, ``project``
and ``step`` check their arguments at trace time and name what is wrong, including
which cell a params tree from another cell seems to belong to (:func:`guess`).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from jaxrnn._checks import as_key, check_array, check_floating, shape_str
from jaxrnn.cells.protocol import Cell, _batch_shape, _check_input_size

Array = jax.Array
#: ``{entry: shape}``; ``None`` in a shape stands for the input size.
Layout = dict
#: The carry: one int (an array of that feature size) or ``((name, size), ...)`` (a tuple).
CarrySpec = Any

__all__: list[str] = []


def guess(params: Any) -> str:
    """Name the cell a params tree seems to come from (for error messages)."""
    if isinstance(params, (list, tuple)):
        return f"a {len(params)}-layer stack"
    if not isinstance(params, dict):
        return "an unknown cell"
    keys = set(params)
    if keys == {"forward", "backward"}:
        return "a bidirectional layer"
    if "w_hr" in keys:
        return "a projected LSTM (jr.lstm(H, proj_size=P))"
    if "g_c" in keys:
        return "a layer-normalised LSTM (jr.ln_lstm)"
    if "g_x" in keys:
        return "a layer-normalised GRU (jr.ln_gru)"
    if "u" in keys:
        return "an IndRNN (jr.indrnn)"
    if keys == {"w_x", "b"}:
        return "a minGRU or minLSTM (jr.mingru / jr.minlstm: no recurrent weight)"
    w_h = params.get("w_h")
    if w_h is None or not hasattr(w_h, "shape") or len(w_h.shape) != 2 or w_h.shape[0] == 0:
        return "an unknown cell"
    gates = w_h.shape[1] // w_h.shape[0]
    if "b_hn" in keys:
        return {3: "a GRU", 2: "an MGU (jr.mgu)"}.get(gates, f"a {gates}-gate cell")
    return {1: "a plain RNN", 2: "an MGU without reset gate (jr.mgu(H, reset_gate=False))",
            3: "a GRU", 4: "an LSTM"}.get(gates, f"a {gates}-gate cell")


def check_layout(params: Any, layout: Layout, cell: str) -> int:
    """Check ``params`` against ``layout``; return the input size (``params['w_x']``'s rows).

    Raises ``TypeError`` (not a dict, wrong keys) or ``ValueError`` (a shape), naming
    the entry, the expected and the given shapes and the cell the tree looks like.
    """
    want = sorted(layout)
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict with keys {want} for {cell}, got {type(params).__name__} "
                        f"(these look like params of {guess(params)})")
    if set(params) != set(layout):
        raise TypeError(f"params for {cell} must have keys {want}, got {sorted(params)} "
                        f"(these look like params of {guess(params)})")
    for k in want:
        check_array(f"params['{k}']", params[k])
    input_size = int(params["w_x"].shape[0]) if params["w_x"].ndim == 2 else -1
    for k in sorted(layout, key=lambda k: k != "w_h"):  # w_h first: it tells the hidden size
        shape = tuple(input_size if d is None else d for d in layout[k])
        if tuple(params[k].shape) != shape:
            expected = shape_str(shape) if input_size >= 0 or None not in layout[k] else \
                "(input_size, " + ", ".join(str(d) for d in layout[k][1:]) + ")"
            raise ValueError(f"params['{k}'] must have shape {expected} for {cell}, got "
                             f"{shape_str(params[k].shape)} (these look like params of {guess(params)})")
    return input_size


def check_state(carry: Any, spec: CarrySpec, cell: str, name: str = "carry") -> tuple[int, ...]:
    """Check a carry against ``spec``; return its batch shape."""
    if isinstance(spec, int):
        if isinstance(carry, (tuple, list)):
            raise TypeError(f"{name} of {cell} must be one array of shape (..., {spec}), got a "
                            f"{type(carry).__name__} of length {len(carry)}")
        check_floating(name, carry)
        if carry.ndim < 1 or carry.shape[-1] != spec:
            raise ValueError(f"{name} of {cell} must have shape (..., {spec}), got {shape_str(carry.shape)}")
        return tuple(carry.shape[:-1])
    names = ", ".join(n for n, _ in spec)
    if not isinstance(carry, (tuple, list)) or len(carry) != len(spec):
        got = type(carry).__name__ + (f" of length {len(carry)}" if isinstance(carry, (tuple, list)) else "")
        raise TypeError(f"{name} of {cell} must be a tuple ({names}), got a {got}")
    batch = None
    for (part, size), v in zip(spec, carry):
        check_floating(f"{name} {part}", v)
        if v.ndim < 1 or v.shape[-1] != size:
            raise ValueError(f"{name} {part} of {cell} must have shape (..., {size}), got {shape_str(v.shape)}")
        if batch is None:
            batch = tuple(v.shape[:-1])
        elif tuple(v.shape[:-1]) != batch:
            raise ValueError(f"{name} parts ({names}) of {cell} must have the same batch shape, got "
                             f"{', '.join(shape_str(p.shape) for p in carry)}")
    return batch


def check_init_args(key: Any, input_size: Any, dtype: Any) -> Array:
    """The checks every ``init`` runs; returns the key (an int seed becomes a key)."""
    key = as_key(key)
    _check_input_size(input_size)
    if not jnp.issubdtype(jnp.dtype(dtype), jnp.floating):
        raise TypeError(f"dtype must be a floating dtype, got {jnp.dtype(dtype)}")
    return key


def lecun_normal(key: Array, input_size: int, width: int, dtype) -> Array:
    """``(input_size, width)`` from N(0, 1 / input_size) (the classic cells' ``w_x``)."""
    return (jax.random.normal(key, (input_size, width), jnp.float32) / jnp.sqrt(input_size)).astype(dtype)


def build(cell: str, kind: str, hidden_size: int, num_gates: int, layout: Callable[[], Layout],
          carry_spec: CarrySpec, xp_size: int, init: Callable, project: Callable, step: Callable) -> Cell:
    """A :class:`Cell` (``fused=False``) from a layout and its maths.

    Args:
      cell: how errors name the cell ("an MGU cell with hidden_size=8").
      kind: the cell's name in :data:`jaxrnn.cells.BUILTIN`.
      hidden_size: the size of ``y_t``.
      num_gates: ``Cell.num_gates``.
      layout: ``layout()`` -> ``{entry: shape}``, ``None`` for the input size.
      carry_spec: the feature size of an array carry, or ``((name, size), ...)``.
      xp_size: the last-axis size of ``project``'s output.
      init, project, step: the unchecked functions (``project(params, x)``,
        ``step(params, carry, xp_t)``).
    """

    def zeros(batch_size: Any = None, dtype=jnp.float32):
        batch = _batch_shape(batch_size)
        if isinstance(carry_spec, int):
            return jnp.zeros(batch + (carry_spec,), dtype)
        return tuple(jnp.zeros(batch + (size,), dtype) for _, size in carry_spec)

    def check_x(x: Array, input_size: int, name: str) -> None:
        check_floating(name, x)
        if x.ndim < 1 or x.shape[-1] != input_size:
            raise ValueError(f"{name} must have shape (..., {input_size}) to match params['w_x'] "
                             f"(input_size={input_size}), got {shape_str(x.shape)}")

    def checked_project(params, x: Array) -> Array:
        check_x(x, check_layout(params, layout(), cell), "x")
        return project(params, x)

    def checked_step(params, carry, xp_t: Array):
        check_layout(params, layout(), cell)
        batch = check_state(carry, carry_spec, cell)
        check_floating("xp_t", xp_t)
        if tuple(xp_t.shape) != batch + (xp_size,):
            raise ValueError(f"xp_t must have shape {shape_str(batch + (xp_size,))} (the carry's batch shape "
                             f"and the size of project's output), got {shape_str(xp_t.shape)}")
        return step(params, carry, xp_t)

    def apply(params, carry, x_t: Array):
        input_size = check_layout(params, layout(), cell)
        batch = check_state(carry, carry_spec, cell)
        check_x(x_t, input_size, "x_t")
        if tuple(x_t.shape[:-1]) != batch:
            raise ValueError(f"x_t has batch shape {shape_str(x_t.shape[:-1])} but carry has batch shape "
                             f"{shape_str(batch)}; they must match")
        return step(params, carry, project(params, x_t))

    return Cell(init=init, initial_carry=zeros, apply=apply, hidden_size=hidden_size, project=checked_project,
                step=checked_step, kind=kind, num_gates=num_gates, fused=False)

"""The classic cells: Elman RNN, LSTM and GRU, with PyTorch's equations and layout.

``apply`` is split in two so that unrolling can hoist the input projection out of the
time loop (one large matrix product over the whole sequence instead of one per step)::

    apply(params, carry, x_t) == step(params, carry, project(params, x_t))

These three cells also have a hand-written derivative (:mod:`jaxrnn.fused`), which
:func:`jaxrnn.unroll` uses for them (``Cell.fused``).

Parameter layout (shared with PyTorch, see ``jaxrnn.interop``)::

    w_x: (input_size, G*H)   w_h: (H, G*H)   b: (G*H,)   [GRU only: b_hn: (H,)]

with the gate blocks along the last axis in PyTorch's order: LSTM ``i, f, g, o``
(G=4), GRU ``r, z, n`` (G=3), plain RNN G=1. ``b`` is PyTorch's ``b_ih + b_hh`` except
for the GRU's ``n`` block, which holds only ``b_in``; ``b_hn`` stays separate because it
sits inside the reset gate's product.

Initialisation (all documented choices, in the parameter dtype):

* ``w_x``: normal with variance ``1 / input_size`` (LeCun normal), so each
  pre-activation has unit variance for unit-variance inputs;
* ``w_h``: each ``H x H`` gate block an independent random orthogonal matrix, so the
  linear part of the recurrence neither grows nor shrinks the state at initialisation;
* ``b``: zeros, except the LSTM forget block, which is ``forget_bias`` (default 1.0) so
  the cell remembers by default (Jozefowicz et al., 2015).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxrnn._checks import check_array, check_floating, shape_str
from jaxrnn.cells._layout import check_init_args, guess, lecun_normal
from jaxrnn.cells.protocol import Cell, _batch_shape, _check_hidden_size

Array = jax.Array
Params = dict
Carry = Any

__all__ = ["rnn", "lstm", "gru", "GATE_NAMES", "ELMAN", "is_builtin", "check_params", "check_carry"]


#: The built-in cells' gate blocks, in PyTorch's order (an Elman cell has one block and no
#: gate): the one table that other modules (diagnostics, interop) read.
GATE_NAMES = {"rnn": (), "rnn_relu": (), "lstm": ("i", "f", "g", "o"), "gru": ("r", "z", "n")}
#: The built-in Elman cells (``h' = phi(x W_x + b + h W_h)``).
ELMAN = ("rnn", "rnn_relu")
_KIND_NAMES = {"rnn": "a tanh RNN", "rnn_relu": "a ReLU RNN", "lstm": "an LSTM", "gru": "a GRU"}
_KIND_GATES = {kind: max(1, len(names)) for kind, names in GATE_NAMES.items()}


def is_builtin(cell: Any) -> bool:
    """True for the cells made by ``jr.lstm``, ``jr.gru`` and ``jr.rnn`` (``fused=True``;
    not the projected ``jr.lstm(H, proj_size=P)``, whose ``kind`` is ``"lstmp"``)."""
    return isinstance(cell, Cell) and bool(cell.fused) and cell.kind in _KIND_GATES


def _guess_kind(params: Params, hidden_size: int) -> str:
    """Name the cell type a params tree seems to come from (for error messages)."""
    return guess(params)


def check_params(params: Any, kind: str, hidden_size: int) -> int:
    """Check a params tree against a cell type; return its input size.

    Raises ``TypeError`` when ``params`` is not a dict with the cell's keys and
    ``ValueError`` when a shape is wrong, naming the entry, the expected and the given
    shapes, and the cell type the tree seems to belong to.
    """
    name = _KIND_NAMES[kind]
    g = _KIND_GATES[kind]
    h = hidden_size
    want = {"w_x", "w_h", "b"} | ({"b_hn"} if kind == "gru" else set())
    if not isinstance(params, dict):
        raise TypeError(
            f"params must be a dict with keys {sorted(want)} for {name} cell, "
            f"got {type(params).__name__}"
        )
    if set(params) != want:
        raise TypeError(
            f"params for {name} cell must have keys {sorted(want)}, got {sorted(params)}"
            f" (these look like params of {_guess_kind(params, h)})"
        )
    for k in want:
        check_array(f"params['{k}']", params[k])
    w_x, w_h, b = params["w_x"], params["w_h"], params["b"]
    if w_h.shape != (h, g * h):
        raise ValueError(
            f"params['w_h'] must have shape {shape_str((h, g * h))} for {name} cell with "
            f"hidden_size={h}, got {shape_str(w_h.shape)} "
            f"(these look like params of {_guess_kind(params, h)})"
        )
    if w_x.ndim != 2 or w_x.shape[1] != g * h:
        raise ValueError(
            f"params['w_x'] must have shape (input_size, {g * h}) for {name} cell with "
            f"hidden_size={h}, got {shape_str(w_x.shape)}"
        )
    if b.shape != (g * h,):
        raise ValueError(f"params['b'] must have shape {shape_str((g * h,))}, got {shape_str(b.shape)}")
    if kind == "gru" and params["b_hn"].shape != (h,):
        raise ValueError(
            f"params['b_hn'] must have shape {shape_str((h,))}, got {shape_str(params['b_hn'].shape)}"
        )
    return int(w_x.shape[0])


def check_carry(carry: Any, kind: str, hidden_size: int, name: str = "carry") -> tuple[int, ...]:
    """Check a carry's structure and feature size; return its batch shape."""
    h = hidden_size
    if kind == "lstm":
        if not isinstance(carry, (tuple, list)) or len(carry) != 2:
            raise TypeError(
                f"{name} of an LSTM cell must be a pair (h, c) of arrays of shape (..., {h}), "
                f"got {type(carry).__name__}"
                + (f" of length {len(carry)}" if isinstance(carry, (tuple, list)) else "")
            )
        hh, cc = carry
        for part, v in (("h", hh), ("c", cc)):
            check_floating(f"{name} {part}", v)
            if v.ndim < 1 or v.shape[-1] != h:
                raise ValueError(
                    f"{name} {part} must have shape (..., {h}) for hidden_size={h}, got {shape_str(v.shape)}"
                )
        if hh.shape != cc.shape:
            raise ValueError(
                f"{name} h and c must have the same shape, got {shape_str(hh.shape)} and {shape_str(cc.shape)}"
            )
        return tuple(hh.shape[:-1])
    if isinstance(carry, (tuple, list)):
        raise TypeError(
            f"{name} of {_KIND_NAMES[kind]} cell must be one array of shape (..., {h}), "
            f"got a {type(carry).__name__} of length {len(carry)} (an LSTM carry?)"
        )
    check_floating(name, carry)
    if carry.ndim < 1 or carry.shape[-1] != h:
        raise ValueError(
            f"{name} must have shape (..., {h}) for hidden_size={h}, got {shape_str(carry.shape)}"
        )
    return tuple(carry.shape[:-1])


def _check_x(x_t: Any, input_size: int, name: str = "x_t") -> None:
    check_floating(name, x_t)
    if x_t.ndim < 1 or x_t.shape[-1] != input_size:
        raise ValueError(
            f"{name} must have shape (..., {input_size}) to match params['w_x'] "
            f"(input_size={input_size}), got {shape_str(x_t.shape)}"
        )


def _orthogonal_blocks(key: Array, h: int, g: int, dtype) -> Array:
    """``g`` independent ``h x h`` orthogonal matrices side by side: shape ``(h, g*h)``."""
    keys = jax.random.split(key, g)
    init = jax.nn.initializers.orthogonal()
    blocks = [init(k, (h, h), jnp.float32) for k in keys]
    return jnp.concatenate(blocks, axis=1).astype(dtype)


def _make_init(kind: str, hidden_size: int, forget_bias: float = 0.0):
    g = _KIND_GATES[kind]
    h = hidden_size

    def init(key: Array, input_size: int, dtype=jnp.float32) -> Params:
        k_x, k_h = jax.random.split(check_init_args(key, input_size, dtype))
        b = jnp.zeros((g * h,), jnp.float32)
        if kind == "lstm":
            b = b.at[h : 2 * h].set(forget_bias)
        params = {"w_x": lecun_normal(k_x, input_size, g * h, dtype), "w_h": _orthogonal_blocks(k_h, h, g, dtype),
                  "b": b.astype(dtype)}
        if kind == "gru":
            params["b_hn"] = jnp.zeros((h,), dtype)
        return params

    return init


def _make_cell(kind: str, hidden_size: int, step, init) -> Cell:
    h = hidden_size

    def initial_carry(batch_size: Any = None, dtype=jnp.float32) -> Carry:
        zeros = jnp.zeros(_batch_shape(batch_size) + (h,), dtype)
        return (zeros, zeros) if kind == "lstm" else zeros

    def project(params: Params, x: Array) -> Array:
        input_size = check_params(params, kind, h)
        _check_x(x, input_size, "x")
        return x @ params["w_x"] + params["b"]

    def checked_step(params: Params, carry: Carry, xp_t: Array):
        check_params(params, kind, h)
        batch = check_carry(carry, kind, h)
        check_floating("xp_t", xp_t)
        g = _KIND_GATES[kind]
        if xp_t.shape != batch + (g * h,):
            raise ValueError(
                f"xp_t must have shape {shape_str(batch + (g * h,))} (the carry's batch shape "
                f"and {g}*hidden_size), got {shape_str(xp_t.shape)}"
            )
        return step(params, carry, xp_t)

    def apply(params: Params, carry: Carry, x_t: Array):
        input_size = check_params(params, kind, h)
        batch = check_carry(carry, kind, h)
        _check_x(x_t, input_size)
        if tuple(x_t.shape[:-1]) != batch:
            raise ValueError(
                f"x_t has batch shape {shape_str(x_t.shape[:-1])} but carry has batch shape "
                f"{shape_str(batch)}; they must match"
            )
        return step(params, carry, x_t @ params["w_x"] + params["b"])

    return Cell(init=init, initial_carry=initial_carry, apply=apply, hidden_size=h, project=project,
                step=checked_step, kind=kind, num_gates=_KIND_GATES[kind], fused=True)


def lstm_gates(z: Array, c: Array, hidden_size: int) -> tuple[Array, Array]:
    """The LSTM's gating from its pre-activations ``z = (..., 4H)``: ``(o, c')`` with
    ``i, f, o = sigmoid(.)``, ``g = tanh(.)`` of the blocks and ``c' = f * c + i * g``
    (shared by :func:`lstm` and the LSTM variants of the other modules)."""
    hs = hidden_size
    i = jax.nn.sigmoid(z[..., 0 * hs : 1 * hs])
    f = jax.nn.sigmoid(z[..., 1 * hs : 2 * hs])
    g = jnp.tanh(z[..., 2 * hs : 3 * hs])
    o = jax.nn.sigmoid(z[..., 3 * hs : 4 * hs])
    return o, f * c + i * g


def gru_update(xp: Array, hp: Array, h: Array, b_hn: Array, hidden_size: int) -> Array:
    """The GRU's new state from its input part ``xp`` and recurrent part ``hp`` (both
    ``(..., 3H)``, blocks ``r, z, n``): ``(1 - z) * n + z * h`` (see :func:`gru`)."""
    hs = hidden_size
    r = jax.nn.sigmoid(xp[..., 0:hs] + hp[..., 0:hs])
    z = jax.nn.sigmoid(xp[..., hs : 2 * hs] + hp[..., hs : 2 * hs])
    n = jnp.tanh(xp[..., 2 * hs :] + r * (hp[..., 2 * hs :] + b_hn))
    return (1.0 - z) * n + z * h


def rnn(hidden_size: int, activation: str = "tanh") -> Cell:
    r"""Elman RNN cell (PyTorch ``nn.RNN``).

    Equations (row vectors, as in the code)::

        h' = phi(x W_x + b + h W_h)         phi = tanh or relu
        y  = h'

    Args:
      hidden_size: ``H``, the size of the state.
      activation: ``"tanh"`` (default) or ``"relu"``.

    Returns:
      A :class:`Cell` with ``G = 1``; its carry is ``h`` of shape ``(..., H)``.

    Example::

      >>> import jax, jax.numpy as jnp, jaxrnn as jr
      >>> cell = jr.rnn(8)
      >>> params = cell.init(jax.random.key(0), input_size=3)
      >>> h, y = cell.apply(params, cell.initial_carry(2), jnp.ones((2, 3)))
      >>> y.shape
      (2, 8)
    """
    hidden_size = _check_hidden_size(hidden_size)
    if activation not in ("tanh", "relu"):
        raise ValueError(f"activation must be 'tanh' or 'relu', got {activation!r}")
    phi = jnp.tanh if activation == "tanh" else jax.nn.relu
    kind = "rnn" if activation == "tanh" else "rnn_relu"

    def step(params: Params, h: Array, xp: Array):
        h_new = phi(xp + h @ params["w_h"])
        return h_new, h_new

    return _make_cell(kind, hidden_size, step, _make_init(kind, hidden_size))


def lstm(hidden_size: int, forget_bias: float = 1.0, proj_size: int | None = None) -> Cell:
    r"""Long short-term memory cell (PyTorch ``nn.LSTM``), gates in order ``i, f, g, o``.

    Equations (row vectors, as in the code)::

        z          = x W_x + b + h W_h                 # (..., 4H)
        i, f, g, o = split(z, 4)
        i, f, o    = sigmoid(i), sigmoid(f), sigmoid(o)
        g          = tanh(g)
        c'         = f * c + i * g
        h'         = o * tanh(c')
        y          = h'

    Args:
      hidden_size: ``H``.
      forget_bias: initial value of the forget-gate block of ``b`` (default 1.0; use 0.0
        to match PyTorch's zero-mean bias initialisation).
      proj_size: ``None`` (default) for the plain LSTM above; an int ``P`` in ``[1, H)``
        for PyTorch's LSTM with projections, ``h' = (o * tanh(c')) W_hr`` of size ``P``
        (see :func:`jaxrnn.cells.projected.projected_lstm`, which builds it: a cell
        without the hand-written derivative, ``kind="lstmp"``).

    Returns:
      A :class:`Cell` with ``G = 4``; its carry is the pair ``(h, c)``.

    Example::

      >>> import jax, jax.numpy as jnp, jaxrnn as jr
      >>> cell = jr.lstm(8)
      >>> params = cell.init(jax.random.key(0), input_size=3)
      >>> (h, c), y = cell.apply(params, cell.initial_carry(2), jnp.ones((2, 3)))
      >>> (h.shape, c.shape)
      ((2, 8), (2, 8))
    """
    hidden_size = _check_hidden_size(hidden_size)
    if proj_size is not None:
        from jaxrnn.cells.projected import projected_lstm  # it builds on this module's checks

        return projected_lstm(hidden_size, proj_size, forget_bias)
    h_size = hidden_size

    def step(params: Params, carry, xp: Array):
        h, c = carry
        o, c_new = lstm_gates(xp + h @ params["w_h"], c, h_size)
        h_new = o * jnp.tanh(c_new)
        return (h_new, c_new), h_new

    return _make_cell("lstm", hidden_size, step, _make_init("lstm", hidden_size, float(forget_bias)))


def gru(hidden_size: int) -> Cell:
    r"""Gated recurrent unit (PyTorch ``nn.GRU``), gates in order ``r, z, n``.

    Equations (row vectors, as in the code)::

        xr, xz, xn = split(x W_x + b, 3)               # b holds b_ir+b_hr, b_iz+b_hz, b_in
        hr, hz, hn = split(h W_h, 3)
        r  = sigmoid(xr + hr)
        z  = sigmoid(xz + hz)
        n  = tanh(xn + r * (hn + b_hn))
        h' = (1 - z) * n + z * h
        y  = h'

    Args:
      hidden_size: ``H``.

    Returns:
      A :class:`Cell` with ``G = 3``; params also hold ``b_hn: (H,)``; the carry is ``h``.

    Example::

      >>> import jax, jax.numpy as jnp, jaxrnn as jr
      >>> cell = jr.gru(8)
      >>> params = cell.init(jax.random.key(0), input_size=3)
      >>> sorted(params)
      ['b', 'b_hn', 'w_h', 'w_x']
    """
    hidden_size = _check_hidden_size(hidden_size)
    hs = hidden_size

    def step(params: Params, h: Array, xp: Array):
        h_new = gru_update(xp, h @ params["w_h"], h, params["b_hn"], hs)
        return h_new, h_new

    return _make_cell("gru", hidden_size, step, _make_init("gru", hidden_size))

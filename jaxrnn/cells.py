"""Recurrent cells: one time step as pure functions.

A :class:`Cell` is a NamedTuple of pure functions (the optax / stax idea)::

    cell = jr.lstm(hidden_size=256)
    params = cell.init(key, input_size=128)       # {"w_x", "w_h", "b"}
    carry = cell.initial_carry(batch_size=32)     # zeros; LSTM: (h, c)
    carry, y = cell.apply(params, carry, x_t)     # x_t: (32, 128) -> y: (32, 256)

``apply`` is split in two so that unrolling can hoist the input projection out of the
time loop (one large matrix product over the whole sequence instead of one per step)::

    apply(params, carry, x_t) == step(params, carry, project(params, x_t))

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

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxrnn._checks import as_key, check_array, check_floating, shape_str

Array = jax.Array
Params = dict
Carry = Any

__all__ = [
    "Cell", "rnn", "lstm", "gru", "BUILTIN", "GATE_NAMES", "ELMAN", "from_name", "is_builtin", "check_cell", "check_apply",
    "check_cell_params", "check_cell_carry", "check_params", "check_carry",
]


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
      kind: the name of a built-in cell (``"lstm"``, ``"gru"``, ``"rnn"``,
        ``"rnn_relu"``); ``None`` for cells of your own.
      num_gates: ``G`` for the built-in cells: the number of ``H``-wide blocks in
        ``w_x``, ``w_h`` and ``b``; ``None`` otherwise.
      fused: ``True`` only for the cells made by ``jr.lstm``, ``jr.gru`` and ``jr.rnn``:
        :func:`jaxrnn.unroll` then runs their hand-written derivative
        (:mod:`jaxrnn.fused`, whose table is keyed by ``kind``) instead of a
        ``lax.scan`` of ``apply``. Set it to ``False`` (``cell._replace(fused=False)``)
        if you change the maths of a built-in cell.
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


#: The built-in cells' gate blocks, in PyTorch's order (an Elman cell has one block and no
#: gate): the one table that other modules (diagnostics, interop) read.
GATE_NAMES = {"rnn": (), "rnn_relu": (), "lstm": ("i", "f", "g", "o"), "gru": ("r", "z", "n")}
#: The built-in Elman cells (``h' = phi(x W_x + b + h W_h)``).
ELMAN = ("rnn", "rnn_relu")
_KIND_NAMES = {"rnn": "a tanh RNN", "rnn_relu": "a ReLU RNN", "lstm": "an LSTM", "gru": "a GRU"}
_KIND_GATES = {kind: max(1, len(names)) for kind, names in GATE_NAMES.items()}


_PROTOCOL = ("init", "initial_carry", "apply", "hidden_size")


def is_builtin(cell: Any) -> bool:
    """True for the cells made by ``jr.lstm``, ``jr.gru`` and ``jr.rnn`` (``fused=True``)."""
    return isinstance(cell, Cell) and bool(cell.fused) and cell.kind in _KIND_GATES


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


def _guess_kind(params: Params, hidden_size: int) -> str:
    """Name the cell type a params tree seems to come from (for error messages)."""
    w_h = params.get("w_h") if isinstance(params, dict) else None
    if w_h is None or not hasattr(w_h, "shape") or w_h.ndim != 2 or w_h.shape[0] == 0:
        return "an unknown cell"
    gates = w_h.shape[1] // w_h.shape[0]
    if "b_hn" in params:
        return "a GRU"
    return {1: "a plain RNN", 4: "an LSTM", 3: "a GRU"}.get(gates, f"a {gates}-gate cell")


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
        key = as_key(key)
        _check_input_size(input_size)
        if not jnp.issubdtype(jnp.dtype(dtype), jnp.floating):
            raise TypeError(f"dtype must be a floating dtype, got {jnp.dtype(dtype)}")
        k_x, k_h = jax.random.split(key)
        w_x = jax.random.normal(k_x, (input_size, g * h), jnp.float32) / jnp.sqrt(input_size)
        b = jnp.zeros((g * h,), jnp.float32)
        if kind == "lstm":
            b = b.at[h : 2 * h].set(forget_bias)
        params = {"w_x": w_x.astype(dtype), "w_h": _orthogonal_blocks(k_h, h, g, dtype), "b": b.astype(dtype)}
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


def lstm(hidden_size: int, forget_bias: float = 1.0) -> Cell:
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
    h_size = hidden_size

    def step(params: Params, carry, xp: Array):
        h, c = carry
        z = xp + h @ params["w_h"]
        i = jax.nn.sigmoid(z[..., 0 * h_size : 1 * h_size])
        f = jax.nn.sigmoid(z[..., 1 * h_size : 2 * h_size])
        g = jnp.tanh(z[..., 2 * h_size : 3 * h_size])
        o = jax.nn.sigmoid(z[..., 3 * h_size : 4 * h_size])
        c_new = f * c + i * g
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
        hp = h @ params["w_h"]
        r = jax.nn.sigmoid(xp[..., 0:hs] + hp[..., 0:hs])
        z = jax.nn.sigmoid(xp[..., hs : 2 * hs] + hp[..., hs : 2 * hs])
        n = jnp.tanh(xp[..., 2 * hs :] + r * (hp[..., 2 * hs :] + params["b_hn"]))
        h_new = (1.0 - z) * n + z * h
        return h_new, h_new

    return _make_cell("gru", hidden_size, step, _make_init("gru", hidden_size))


#: The built-in cells by name: the names :func:`jaxrnn.lm.language_model` and
#: ``jaxrnn train --cell`` accept. ``"rnn"`` is the tanh Elman cell.
BUILTIN: dict[str, Callable[[int], Cell]] = {
    "lstm": lstm,
    "gru": gru,
    "rnn": lambda hidden_size: rnn(hidden_size, "tanh"),
    "rnn_relu": lambda hidden_size: rnn(hidden_size, "relu"),
}


def from_name(name: str, hidden_size: int) -> Cell:
    """The built-in cell called ``name`` (a key of :data:`BUILTIN`) with ``hidden_size``.

    Example::

      >>> import jaxrnn as jr
      >>> jr.cells.from_name("rnn", 8).kind
      'rnn'
    """
    if name not in BUILTIN:
        raise ValueError(f"cell must be one of {sorted(BUILTIN)}, got {name!r}")
    return BUILTIN[name](hidden_size)

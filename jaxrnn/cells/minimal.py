"""The minimal RNNs of Feng et al. (2024), "Were RNNs All We Needed?": minGRU and minLSTM.

Their gates read the input only, never the state, so the recurrence is linear in ``h``::

    h_t = a_t * h_{t-1} + b_t          # a_t, b_t: functions of x_t alone

and the whole sequence can be computed at once with ``jax.lax.associative_scan`` in
``O(log T)`` parallel depth instead of ``T`` dependent steps. The cells give that form as
``Cell.linear``; :func:`jaxrnn.unroll` runs it either step by step (``scan="sequential"``)
or with the associative scan (``scan="associative"``; ``"auto"`` picks one by sequence
length, see :mod:`jaxrnn.linear_scan`).

Two variants of each cell, as in the paper's appendix:

* ``log_space=False`` (the default): the candidate state ``h~`` is the plain affine map
  of the input, so the state may take any sign.
* ``log_space=True``: ``h~ = g(x W_h + b_h)`` with ``g(v) = v + 0.5`` for ``v >= 0`` and
  ``sigmoid(v)`` below, which keeps ``h~ > 0`` so that ``linear`` can return the
  coefficients as logarithms (:class:`~jaxrnn.cells.LogLinear`) and the associative
  scan combines them with ``logaddexp``. Every state is then positive (given a
  non-negative initial state).

Both variants are stable over long sequences: the associative scan combines pairs
``(a, b)`` (never divides by a cumulative product of the ``a``), so a product that
underflows only means the early steps are forgotten, as they are step by step.

Parameter layout (no recurrent weight: the gates do not read ``h``)::

    w_x: (input_size, G*H)    b: (G*H,)

with the ``H``-wide blocks along the last axis in the order ``z, h`` for minGRU (G=2)
and ``f, i, h`` for minLSTM (G=3). Initialisation, in the parameter dtype: ``w_x``
normal with variance ``1 / input_size`` (LeCun normal, as :mod:`jaxrnn.cells.classic`),
``b`` zeros (so every gate starts at ``sigmoid(0) = 1/2`` on a zero input). The carry
is ``h`` of shape ``(*batch, H)``, zeros initially, and ``y_t = h_t``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxrnn._checks import check_array, check_floating, shape_str
from jaxrnn.cells._layout import check_init_args, lecun_normal
from jaxrnn.cells.classic import _check_x, _guess_kind
from jaxrnn.cells.protocol import Cell, LogLinear, _batch_shape, _check_hidden_size, linear_space

Array = jax.Array
Params = dict

__all__ = ["mingru", "minlstm", "MINIMAL"]

#: The minimal cells by kind: their number of ``H``-wide blocks in ``w_x`` and ``b``.
MINIMAL = {"mingru": 2, "minlstm": 3}
_NAMES = {"mingru": "a minGRU", "minlstm": "a minLSTM"}


def g(v: Array) -> Array:
    """``v + 0.5`` for ``v >= 0``, ``sigmoid(v)`` below: positive, continuous, increasing."""
    return jnp.where(v >= 0, v + 0.5, jax.nn.sigmoid(v))


def log_g(v: Array) -> Array:
    """``log(g(v))``, computed without forming ``g(v)`` (both branches finite everywhere,
    so neither leaks a NaN into the gradient of the other)."""
    return jnp.where(v >= 0, jnp.log(jax.nn.relu(v) + 0.5), -jax.nn.softplus(-v))


def check_params(params: Any, kind: str, hidden_size: int) -> int:
    """Check a params tree against a minimal cell; return its input size.

    ``TypeError`` when ``params`` is not a dict with keys ``w_x`` and ``b``,
    ``ValueError`` for a wrong shape; both name the entry, what was expected, what was
    given and, for a tree from another cell, the cell it seems to come from.
    """
    name, g_, h = _NAMES[kind], MINIMAL[kind], hidden_size
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict with keys ['b', 'w_x'] for {name} cell, got {type(params).__name__}")
    if set(params) != {"w_x", "b"}:
        raise TypeError(
            f"params for {name} cell must have keys ['b', 'w_x'], got {sorted(params)} "
            f"(these look like params of {_guess_kind(params, h)})"
        )
    for k in ("w_x", "b"):
        check_array(f"params['{k}']", params[k])
    w_x, b = params["w_x"], params["b"]
    if w_x.ndim != 2 or w_x.shape[1] != g_ * h:
        other = [_NAMES[k] for k, n in MINIMAL.items() if w_x.ndim == 2 and w_x.shape[1] == n * h]
        hint = f" (these look like params of {other[0]} cell)" if other else ""
        raise ValueError(
            f"params['w_x'] must have shape (input_size, {g_ * h}) for {name} cell with hidden_size={h} "
            f"({g_} blocks of H), got {shape_str(w_x.shape)}{hint}"
        )
    if b.shape != (g_ * h,):
        raise ValueError(f"params['b'] must have shape {shape_str((g_ * h,))} for {name} cell, got {shape_str(b.shape)}")
    return int(w_x.shape[0])


def _check_h(h: Any, kind: str, hidden_size: int) -> tuple[int, ...]:
    if isinstance(h, (tuple, list)):
        raise TypeError(
            f"carry of {_NAMES[kind]} cell must be one array h of shape (..., {hidden_size}), "
            f"got a {type(h).__name__} of length {len(h)}"
        )
    check_floating("carry", h)
    if h.ndim < 1 or h.shape[-1] != hidden_size:
        raise ValueError(f"carry must have shape (..., {hidden_size}) for hidden_size={hidden_size}, got {shape_str(h.shape)}")
    return tuple(h.shape[:-1])


def _make_cell(kind: str, hidden_size: int, log_space: bool, coefficients) -> Cell:
    """A minimal cell from ``coefficients(xp) -> (a, b) or LogLinear`` of the projection
    ``xp = x W_x + b``."""
    h_size = _check_hidden_size(hidden_size)
    if not isinstance(log_space, bool):
        raise TypeError(f"log_space must be a bool, got {log_space!r}")
    n_blocks = MINIMAL[kind]

    def init(key: Array, input_size: int, dtype=jnp.float32) -> Params:
        key = check_init_args(key, input_size, dtype)
        return {"w_x": lecun_normal(key, input_size, n_blocks * h_size, dtype),
                "b": jnp.zeros((n_blocks * h_size,), dtype)}

    def initial_carry(batch_size: Any = None, dtype=jnp.float32) -> Array:
        return jnp.zeros(_batch_shape(batch_size) + (h_size,), dtype)

    def project(params: Params, x: Array) -> Array:
        _check_x(x, check_params(params, kind, h_size), "x")
        return x @ params["w_x"] + params["b"]

    def step(params: Params, h: Array, xp_t: Array):
        batch = _check_h(h, kind, h_size)
        check_floating("xp_t", xp_t)
        if xp_t.shape != batch + (n_blocks * h_size,):
            raise ValueError(
                f"xp_t must have shape {shape_str(batch + (n_blocks * h_size,))} (the carry's batch shape and "
                f"{n_blocks}*hidden_size), got {shape_str(xp_t.shape)}"
            )
        a, b = linear_space(coefficients(xp_t))
        h_new = a * h + b
        return h_new, h_new

    def apply(params: Params, h: Array, x_t: Array):
        batch = _check_h(h, kind, h_size)
        xp_t = project(params, x_t)
        if tuple(x_t.shape[:-1]) != batch:
            raise ValueError(
                f"x_t has batch shape {shape_str(x_t.shape[:-1])} but carry has batch shape {shape_str(batch)}; "
                "they must match"
            )
        return step(params, h, xp_t)

    def linear(params: Params, xs: Array):
        return coefficients(project(params, xs))

    return Cell(init=init, initial_carry=initial_carry, apply=apply, hidden_size=h_size, project=project,
                step=step, kind=kind, num_gates=n_blocks, linear=linear)


def mingru(hidden_size: int, log_space: bool = False) -> Cell:
    r"""minGRU (Feng et al. 2024): a GRU whose update gate and candidate read only ``x``.

    Equations (row vectors, as in the code; ``W_x = [W_z | W_h]``, ``b = [b_z | b_h]``)::

        k, u = split(x W_x + b, 2)
        z    = sigmoid(k)                      # update gate
        h~   = u                               # log_space=True: h~ = g(u)
        h'   = (1 - z) * h + z * h~            # = a * h + b with a = sigmoid(-k), b = z * h~
        y    = h'

    In log space (``log_space=True``) ``linear`` returns ``log a = -softplus(k)``,
    ``log b = -softplus(-k) + log g(u)``.

    Args:
      hidden_size: ``H``.
      log_space: the paper's log-space variant (``h~ = g(u) > 0``; the associative scan
        runs on logarithms). Default ``False``: the plain variant.

    Returns:
      A :class:`Cell` with ``linear`` set; params ``{"w_x": (I, 2H), "b": (2H,)}`` (blocks
      ``z, h``), carry ``h`` of shape ``(..., H)``. Initialisation: see
      :mod:`jaxrnn.cells.minimal`.

    Example::

      >>> import jax, jax.numpy as jnp, jaxrnn as jr
      >>> cell = jr.mingru(8)
      >>> params = cell.init(jax.random.key(0), input_size=3)
      >>> h, ys = jr.unroll(cell, params, jnp.ones((2, 5, 3)), scan="associative")
      >>> ys.shape
      (2, 5, 8)
    """
    hs = hidden_size

    def coefficients(xp: Array):
        k, u = xp[..., :hs], xp[..., hs:]
        if log_space:
            return LogLinear(-jax.nn.softplus(k), -jax.nn.softplus(-k) + log_g(u))
        return jax.nn.sigmoid(-k), jax.nn.sigmoid(k) * u

    return _make_cell("mingru", hidden_size, log_space, coefficients)


def minlstm(hidden_size: int, log_space: bool = False) -> Cell:
    r"""minLSTM (Feng et al. 2024): forget and input gates that read only ``x``,
    normalised to sum to one, and no output gate.

    Equations (row vectors, as in the code; ``W_x = [W_f | W_i | W_h]``)::

        k_f, k_i, u = split(x W_x + b, 3)
        f, i = sigmoid(k_f), sigmoid(k_i)
        d    = softplus(-k_f) - softplus(-k_i)  # = log(i / f)
        f'   = f / (f + i) = sigmoid(-d)
        i'   = i / (f + i) = sigmoid(d)
        h~   = u                                # log_space=True: h~ = g(u)
        h'   = f' * h + i' * h~                 # = a * h + b with a = f', b = i' * h~
        y    = h'

    The normalised gates are computed from ``d`` so that no ``0 / 0`` arises when both
    gates underflow. In log space ``linear`` returns ``log a = -softplus(d)``,
    ``log b = -softplus(-d) + log g(u)``.

    Args:
      hidden_size: ``H``.
      log_space: the paper's log-space variant (``h~ = g(u) > 0``). Default ``False``.

    Returns:
      A :class:`Cell` with ``linear`` set; params ``{"w_x": (I, 3H), "b": (3H,)}`` (blocks
      ``f, i, h``), carry ``h`` of shape ``(..., H)``. Initialisation: see
      :mod:`jaxrnn.cells.minimal`.

    Example::

      >>> import jax, jax.numpy as jnp, jaxrnn as jr
      >>> cell = jr.minlstm(8, log_space=True)
      >>> params = cell.init(jax.random.key(0), input_size=3)
      >>> h, y = cell.apply(params, cell.initial_carry(2), jnp.ones((2, 3)))
      >>> bool((y > 0).all())
      True
    """
    hs = hidden_size

    def coefficients(xp: Array):
        k_f, k_i, u = xp[..., :hs], xp[..., hs : 2 * hs], xp[..., 2 * hs :]
        d = jax.nn.softplus(-k_f) - jax.nn.softplus(-k_i)
        if log_space:
            return LogLinear(-jax.nn.softplus(d), -jax.nn.softplus(-d) + log_g(u))
        return jax.nn.sigmoid(-d), jax.nn.sigmoid(d) * u

    return _make_cell("minlstm", hidden_size, log_space, coefficients)

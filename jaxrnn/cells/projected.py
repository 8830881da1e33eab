"""The LSTM with a projected state (PyTorch ``nn.LSTM(proj_size=P)``, Sak et al. 2014).

Build it with ``jr.lstm(H, proj_size=P)``. The cell state ``c`` keeps size ``H``; the
state ``h`` that the gates read and that the cell outputs is projected down to size
``P < H`` by ``w_hr``, so the recurrent product costs ``P x 4H`` instead of
``H x 4H``, and the layer's output (``y_t``, ``hidden_size``) has size ``P``.

Parameter layout (PyTorch's, transposed as for the classic cells; see
:mod:`jaxrnn.interop`)::

    w_x: (input_size, 4H)   w_h: (P, 4H)   b: (4H,)   w_hr: (H, P)

Carry ``(h, c)`` with ``h: (..., P)`` and ``c: (..., H)`` (PyTorch's ``h_0`` has size
``P`` too). The cell has no hand-written derivative (``fused=False``): it runs as a
``lax.scan`` of ``step`` over the hoisted input projection ``project``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrnn.cells._layout import build, check_init_args, lecun_normal
from jaxrnn.cells.classic import lstm_gates
from jaxrnn.cells.protocol import Cell, _check_hidden_size

__all__ = ["projected_lstm", "check_proj_size"]


def check_proj_size(proj_size, hidden_size: int) -> int:
    """``proj_size`` as an int in ``[1, hidden_size)`` (PyTorch's rule), else a ``ValueError``."""
    if isinstance(proj_size, bool) or not isinstance(proj_size, int):
        raise TypeError(f"proj_size must be an int in [1, hidden_size={hidden_size}) or None (no projection), "
                        f"got {proj_size!r}")
    if not 1 <= proj_size < hidden_size:
        raise ValueError(f"proj_size must be an int in [1, hidden_size={hidden_size}) (the projection makes "
                         f"the state smaller, as in PyTorch) or None for no projection, got {proj_size}")
    return proj_size


def projected_lstm(hidden_size: int, proj_size: int, forget_bias: float = 1.0) -> Cell:
    r"""LSTM with a projection of the state (PyTorch ``nn.LSTM(proj_size=P)``).

    Equations (row vectors, as in the code; ``h`` has size ``P``, ``c`` size ``H``)::

        z          = x W_x + b + h W_h                 # (..., 4H); W_h: (P, 4H)
        i, f, g, o = split(z, 4)
        i, f, o    = sigmoid(i), sigmoid(f), sigmoid(o)
        g          = tanh(g)
        c'         = f * c + i * g                     # (..., H)
        h'         = (o * tanh(c')) W_hr               # (..., P); W_hr: (H, P)
        y          = h'

    Initialisation: ``w_x`` LeCun normal (variance ``1 / input_size``); ``w_h`` normal
    with variance ``1 / P``; ``w_hr`` normal with variance ``1 / H``; ``b`` zeros except
    the forget block, ``forget_bias``.

    Args:
      hidden_size: ``H``, the size of the cell state ``c``.
      proj_size: ``P``, an int in ``[1, H)``: the size of ``h`` and of the outputs.
      forget_bias: initial value of the forget block of ``b`` (0.0 matches PyTorch's
        zero-mean initialisation).

    Returns:
      A :class:`~jaxrnn.cells.Cell` with ``hidden_size = P``, ``kind = "lstmp"``.

    Example::

      >>> import jax, jax.numpy as jnp, jaxrnn as jr
      >>> cell = jr.lstm(8, proj_size=3)
      >>> params = cell.init(jax.random.key(0), input_size=5)
      >>> (h, c), y = cell.apply(params, cell.initial_carry(2), jnp.ones((2, 5)))
      >>> h.shape, c.shape, y.shape, cell.hidden_size
      ((2, 3), (2, 8), (2, 3), 3)
    """
    h_size = _check_hidden_size(hidden_size)
    p_size = check_proj_size(proj_size, h_size)
    forget_bias = float(forget_bias)

    def layout():
        return {"w_x": (None, 4 * h_size), "w_h": (p_size, 4 * h_size), "b": (4 * h_size,), "w_hr": (h_size, p_size)}

    def init(key, input_size: int, dtype=jnp.float32):
        key = check_init_args(key, input_size, dtype)
        k_x, k_h, k_r = jax.random.split(key, 3)
        w_h = jax.random.normal(k_h, (p_size, 4 * h_size), jnp.float32) / jnp.sqrt(p_size)
        w_hr = jax.random.normal(k_r, (h_size, p_size), jnp.float32) / jnp.sqrt(h_size)
        b = jnp.zeros((4 * h_size,), jnp.float32).at[h_size : 2 * h_size].set(forget_bias)
        return {"w_x": lecun_normal(k_x, input_size, 4 * h_size, dtype), "w_h": w_h.astype(dtype),
                "b": b.astype(dtype), "w_hr": w_hr.astype(dtype)}

    def project(params, x):
        return x @ params["w_x"] + params["b"]

    def step(params, carry, xp):
        h, c = carry
        o, c_new = lstm_gates(xp + h @ params["w_h"], c, h_size)
        h_new = (o * jnp.tanh(c_new)) @ params["w_hr"]
        return (h_new, c_new), h_new

    name = f"a projected LSTM cell with hidden_size={h_size}, proj_size={p_size}"
    return build(name, "lstmp", p_size, 4, layout, (("h", p_size), ("c", h_size)), 4 * h_size, init, project, step)

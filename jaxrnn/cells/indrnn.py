"""The independently recurrent neural network (IndRNN, Li et al. 2018).

Each unit reads only its own previous value: the recurrent weight is a vector ``u``
(element-wise product) instead of a matrix, so a step costs ``O(H)`` besides the input
product, and the gradient through time of unit ``j`` is a product of the scalars
``u_j * relu'(.)``, which ``|u_j| <= bound`` keeps from exploding. Parameter layout::

    w_x: (input_size, H)   u: (H,)   b: (H,)
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxrnn.cells._layout import build, check_init_args, lecun_normal
from jaxrnn.cells.protocol import Cell, _check_hidden_size

__all__ = ["indrnn"]


def _check_bound(recurrent_max) -> float | None:
    if recurrent_max is None:
        return None
    if isinstance(recurrent_max, bool) or not isinstance(recurrent_max, (int, float)):
        raise TypeError(f"recurrent_max must be a positive float or None, got {recurrent_max!r}")
    if not math.isfinite(recurrent_max) or recurrent_max <= 0:
        raise ValueError(f"recurrent_max must be a positive finite float (the bound on |u|, e.g. 2 ** (1 / T) "
                         f"for sequences of length T) or None, got {recurrent_max}")
    return float(recurrent_max)


def indrnn(hidden_size: int, recurrent_max: float | None = None) -> Cell:
    r"""IndRNN cell with ReLU (Li et al. 2018): a vector recurrent weight ``u``.

    Equations (row vectors, as in the code; ``*`` is element-wise)::

        u' = clip(u, -recurrent_max, recurrent_max)   # u' = u when recurrent_max is None
        h' = relu(x W_x + b + u' * h)
        y  = h'

    The paper keeps ``|u_j| <= 2 ** (1 / T)`` for sequences of length ``T`` (so no unit
    grows by more than 2 over the sequence) and ``|u_j| >= 0`` or a small lower bound
    to remember. ``recurrent_max`` imposes the upper bound inside ``apply``: a weight
    beyond it is read as the bound (and gets zero gradient while it stays there), so the
    constraint holds whatever the optimizer does to ``params["u"]``.

    Initialisation: ``w_x`` LeCun normal (variance ``1 / input_size``); ``u`` uniform in
    ``[0, 1]``, or in ``[0, recurrent_max]`` when a bound is given (the paper's
    ``(0, 2 ** (1 / T))``); ``b`` zeros.

    Args:
      hidden_size: ``H``.
      recurrent_max: ``None`` (no constraint) or a positive bound on ``|u|``.

    Returns:
      A :class:`~jaxrnn.cells.Cell` with ``kind = "indrnn"``; the carry is ``h``.

    Example::

      >>> import jax, jax.numpy as jnp, jaxrnn as jr
      >>> cell = jr.indrnn(8, recurrent_max=2 ** (1 / 100))
      >>> params = cell.init(jax.random.key(0), input_size=3)
      >>> params["u"].shape, bool((params["u"] <= 2 ** (1 / 100)).all())
      ((8,), True)
      >>> h, y = cell.apply(params, cell.initial_carry(2), jnp.ones((2, 3)))
      >>> bool((y >= 0).all())
      True
    """
    hs = _check_hidden_size(hidden_size)
    bound = _check_bound(recurrent_max)

    def layout():
        return {"w_x": (None, hs), "u": (hs,), "b": (hs,)}

    def init(key, input_size: int, dtype=jnp.float32):
        key = check_init_args(key, input_size, dtype)
        k_x, k_u = jax.random.split(key)
        u = jax.random.uniform(k_u, (hs,), jnp.float32, 0.0, 1.0 if bound is None else bound)
        return {"w_x": lecun_normal(k_x, input_size, hs, dtype), "u": u.astype(dtype), "b": jnp.zeros((hs,), dtype)}

    def project(params, x):
        return x @ params["w_x"] + params["b"]

    def step(params, h, xp):
        u = params["u"] if bound is None else jnp.clip(params["u"], -bound, bound)
        h_new = jax.nn.relu(xp + u * h)
        return h_new, h_new

    name = f"an IndRNN cell with hidden_size={hs}"
    return build(name, "indrnn", hs, 1, layout, hs, hs, init, project, step)

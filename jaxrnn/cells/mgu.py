"""The minimal gated unit (Zhou et al. 2016), with Flax's ``nn.MGUCell`` equations.

One gate ``f`` does the work of the GRU's update and reset gates, so the cell has two
``H``-wide blocks (``f, n``) where the GRU has three. Parameter layout (row vectors,
blocks in the order ``f, n``)::

    w_x: (input_size, 2H)   w_h: (H, 2H)   b: (2H,)   b_hn: (H,)  [reset_gate=True only]

Mapping to Flax's ``MGUCell`` params (``Dense`` layers named ``if``, ``hf``, ``in``,
``hn``; kernels are ``(in, out)`` as here)::

    w_x  = [if.kernel, in.kernel]        b = [if.bias, in.bias]
    w_h  = [hf.kernel, hn.kernel]        b_hn = hn.bias
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrnn.cells._layout import build, check_init_args, lecun_normal
from jaxrnn.cells.classic import _orthogonal_blocks
from jaxrnn.cells.protocol import Cell, _check_hidden_size

__all__ = ["mgu"]


def mgu(hidden_size: int, reset_gate: bool = True, forget_bias: float = 1.0) -> Cell:
    r"""Minimal gated unit (Flax ``nn.MGUCell``), blocks in order ``f, n``.

    Equations (row vectors, as in the code)::

        xf, xn = split(x W_x + b, 2)                   # b holds b_if, b_in
        hf, hn = split(h W_h, 2)
        f  = sigmoid(xf + hf)
        n  = tanh(xn + f * (hn + b_hn))                # reset_gate=False: tanh(xn + hn)
        h' = (1 - f) * n + f * h
        y  = h'

    Initialisation (Flax's defaults): ``w_x`` LeCun normal (variance
    ``1 / input_size``); each ``H x H`` block of ``w_h`` an independent random
    orthogonal matrix; ``b`` zeros except the ``f`` block, ``forget_bias`` (Flax's
    ``forget_bias_init`` is ones); ``b_hn`` zeros.

    Args:
      hidden_size: ``H``.
      reset_gate: ``True`` (Flax's default): ``f`` also gates the recurrent part of
        ``n``, which then has its own bias ``b_hn``; ``False``: ``n = tanh(xn + hn)``
        and params have no ``b_hn``.
      forget_bias: initial value of the ``f`` block of ``b``.

    Returns:
      A :class:`~jaxrnn.cells.Cell` with ``kind = "mgu"``, ``G = 2``; the carry is ``h``.

    Example::

      >>> import jax, jax.numpy as jnp, jaxrnn as jr
      >>> cell = jr.mgu(8)
      >>> params = cell.init(jax.random.key(0), input_size=3)
      >>> sorted(params), params["w_h"].shape
      (['b', 'b_hn', 'w_h', 'w_x'], (8, 16))
      >>> h, y = cell.apply(params, cell.initial_carry(2), jnp.ones((2, 3)))
      >>> y.shape
      (2, 8)
    """
    hs = _check_hidden_size(hidden_size)
    if not isinstance(reset_gate, bool):
        raise TypeError(f"reset_gate must be True or False, got {reset_gate!r}")
    forget_bias = float(forget_bias)

    def layout():
        out = {"w_x": (None, 2 * hs), "w_h": (hs, 2 * hs), "b": (2 * hs,)}
        if reset_gate:
            out["b_hn"] = (hs,)
        return out

    def init(key, input_size: int, dtype=jnp.float32):
        key = check_init_args(key, input_size, dtype)
        k_x, k_h = jax.random.split(key)
        b = jnp.zeros((2 * hs,), jnp.float32).at[:hs].set(forget_bias)
        params = {"w_x": lecun_normal(k_x, input_size, 2 * hs, dtype), "w_h": _orthogonal_blocks(k_h, hs, 2, dtype),
                  "b": b.astype(dtype)}
        if reset_gate:
            params["b_hn"] = jnp.zeros((hs,), dtype)
        return params

    def project(params, x):
        return x @ params["w_x"] + params["b"]

    def step(params, h, xp):
        hp = h @ params["w_h"]
        f = jax.nn.sigmoid(xp[..., :hs] + hp[..., :hs])
        hn = f * (hp[..., hs:] + params["b_hn"]) if reset_gate else hp[..., hs:]
        n = jnp.tanh(xp[..., hs:] + hn)
        h_new = (1.0 - f) * n + f * h
        return h_new, h_new

    name = f"an MGU cell with hidden_size={hs}" + ("" if reset_gate else " and reset_gate=False")
    return build(name, "mgu", hs, 2, layout, hs, 2 * hs, init, project, step)

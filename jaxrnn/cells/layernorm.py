"""Layer-normalised LSTM and GRU (Ba, Kiros and Hinton 2016).

Layer normalisation of the input and the recurrent pre-activations makes each gate's
input zero-mean and unit-variance across the ``H`` units at every step, whatever the
scale of ``x`` and ``h``, which steadies training of long unrolls. Each ``H``-wide gate
block is normalised on its own (so one gate's scale does not leak into another's)::

    LN(a; g) = g * (a - mean(a)) / sqrt(var(a) + eps)     # mean, var over each H-wide block

with a learnable gain ``g`` per unit. The learnable LN biases of the input and
recurrent terms add up, so they are one bias ``b`` (as PyTorch sums ``b_ih + b_hh``).
Parameter layout (``G = 4`` for the LSTM, 3 for the GRU)::

    w_x: (input_size, G*H)  w_h: (H, G*H)  b: (G*H,)  g_x: (G*H,)  g_h: (G*H,)
    LSTM: g_c: (H,)  b_c: (H,)       (the layer norm of the cell state)
    GRU:  b_hn: (H,)                  (inside the reset gate's product, as in jr.gru)

Initialisation: ``w_x`` LeCun normal, ``w_h`` orthogonal blocks and ``b`` as for
:func:`jaxrnn.lstm` / :func:`jaxrnn.gru` (LSTM forget block ``forget_bias``); gains
``g_x``, ``g_h``, ``g_c`` ones; biases ``b_c``, ``b_hn`` zeros. The input half
``LN(x W_x; g_x) + b`` reads only ``x``, so :func:`jaxrnn.unroll` hoists it out of the
time loop (``project``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrnn.cells._layout import build, check_init_args, lecun_normal
from jaxrnn.cells.classic import _orthogonal_blocks, gru_update, lstm_gates
from jaxrnn.cells.protocol import Cell, _check_hidden_size

__all__ = ["ln_lstm", "ln_gru", "layer_norm"]

#: The default ``eps`` of the layer norms (PyTorch's ``nn.LayerNorm`` default).
EPS = 1e-5


def layer_norm(a: jax.Array, gain: jax.Array, blocks: int, eps: float = EPS) -> jax.Array:
    """``gain * (a - mean) / sqrt(var + eps)`` with mean and (biased) variance over each
    of the ``blocks`` equal blocks of the last axis of ``a``."""
    shape = a.shape
    a = a.reshape(shape[:-1] + (blocks, shape[-1] // blocks))
    mean = a.mean(axis=-1, keepdims=True)
    var = jnp.square(a - mean).mean(axis=-1, keepdims=True)
    return ((a - mean) * jax.lax.rsqrt(var + eps)).reshape(shape) * gain


def _check_eps(eps) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"eps must be a positive float, got {eps!r}")
    return float(eps)


def _make_init(hs: int, g: int, extra: dict, forget_bias: float | None):
    def init(key, input_size: int, dtype=jnp.float32):
        key = check_init_args(key, input_size, dtype)
        k_x, k_h = jax.random.split(key)
        b = jnp.zeros((g * hs,), jnp.float32)
        if forget_bias is not None:
            b = b.at[hs : 2 * hs].set(forget_bias)
        params = {"w_x": lecun_normal(k_x, input_size, g * hs, dtype), "w_h": _orthogonal_blocks(k_h, hs, g, dtype),
                  "b": b.astype(dtype), "g_x": jnp.ones((g * hs,), dtype), "g_h": jnp.ones((g * hs,), dtype)}
        for name, value in extra.items():
            params[name] = jnp.full((hs,), value, dtype)
        return params

    return init


def ln_lstm(hidden_size: int, forget_bias: float = 1.0, eps: float = EPS) -> Cell:
    r"""Layer-normalised LSTM (Ba et al. 2016), gates in order ``i, f, g, o``.

    Equations (row vectors, as in the code; ``LN`` per ``H``-wide block, see the
    module docstring)::

        z          = LN(x W_x; g_x) + b + LN(h W_h; g_h)      # (..., 4H)
        i, f, g, o = split(z, 4)
        i, f, o    = sigmoid(i), sigmoid(f), sigmoid(o)
        g          = tanh(g)
        c'         = f * c + i * g
        h'         = o * tanh(LN(c'; g_c) + b_c)
        y          = h'

    Args:
      hidden_size: ``H``.
      forget_bias: initial value of the forget block of ``b``.
      eps: added to the variance in every layer norm (default ``1e-5``).

    Returns:
      A :class:`~jaxrnn.cells.Cell` with ``kind = "lnlstm"``; the carry is ``(h, c)``.

    Example::

      >>> import jax, jax.numpy as jnp, jaxrnn as jr
      >>> cell = jr.ln_lstm(8)
      >>> params = cell.init(jax.random.key(0), input_size=3)
      >>> sorted(params)
      ['b', 'b_c', 'g_c', 'g_h', 'g_x', 'w_h', 'w_x']
      >>> (h, c), y = cell.apply(params, cell.initial_carry(2), jnp.ones((2, 3)))
      >>> y.shape
      (2, 8)
    """
    hs = _check_hidden_size(hidden_size)
    eps = _check_eps(eps)

    def layout():
        return {"w_x": (None, 4 * hs), "w_h": (hs, 4 * hs), "b": (4 * hs,), "g_x": (4 * hs,), "g_h": (4 * hs,),
                "g_c": (hs,), "b_c": (hs,)}

    def project(params, x):
        return layer_norm(x @ params["w_x"], params["g_x"], 4, eps) + params["b"]

    def step(params, carry, xp):
        h, c = carry
        o, c_new = lstm_gates(xp + layer_norm(h @ params["w_h"], params["g_h"], 4, eps), c, hs)
        h_new = o * jnp.tanh(layer_norm(c_new, params["g_c"], 1, eps) + params["b_c"])
        return (h_new, c_new), h_new

    init = _make_init(hs, 4, {"g_c": 1.0, "b_c": 0.0}, float(forget_bias))
    name = f"a layer-normalised LSTM cell with hidden_size={hs}"
    return build(name, "lnlstm", hs, 4, layout, (("h", hs), ("c", hs)), 4 * hs, init, project, step)


def ln_gru(hidden_size: int, eps: float = EPS) -> Cell:
    r"""Layer-normalised GRU (Ba et al. 2016's recipe on :func:`jaxrnn.gru`), gates ``r, z, n``.

    Equations (row vectors, as in the code; ``LN`` per ``H``-wide block)::

        xr, xz, xn = split(LN(x W_x; g_x) + b, 3)
        hr, hz, hn = split(LN(h W_h; g_h), 3)
        r  = sigmoid(xr + hr)
        z  = sigmoid(xz + hz)
        n  = tanh(xn + r * (hn + b_hn))
        h' = (1 - z) * n + z * h
        y  = h'

    Args:
      hidden_size: ``H``.
      eps: added to the variance in every layer norm (default ``1e-5``).

    Returns:
      A :class:`~jaxrnn.cells.Cell` with ``kind = "lngru"``; the carry is ``h``.

    Example::

      >>> import jax, jax.numpy as jnp, jaxrnn as jr
      >>> cell = jr.ln_gru(8)
      >>> params = cell.init(jax.random.key(0), input_size=3)
      >>> sorted(params)
      ['b', 'b_hn', 'g_h', 'g_x', 'w_h', 'w_x']
    """
    hs = _check_hidden_size(hidden_size)
    eps = _check_eps(eps)

    def layout():
        return {"w_x": (None, 3 * hs), "w_h": (hs, 3 * hs), "b": (3 * hs,), "g_x": (3 * hs,), "g_h": (3 * hs,),
                "b_hn": (hs,)}

    def project(params, x):
        return layer_norm(x @ params["w_x"], params["g_x"], 3, eps) + params["b"]

    def step(params, h, xp):
        h_new = gru_update(xp, layer_norm(h @ params["w_h"], params["g_h"], 3, eps), h, params["b_hn"], hs)
        return h_new, h_new

    init = _make_init(hs, 3, {"b_hn": 0.0}, None)
    name = f"a layer-normalised GRU cell with hidden_size={hs}"
    return build(name, "lngru", hs, 3, layout, hs, 3 * hs, init, project, step)

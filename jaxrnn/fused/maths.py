"""Per-cell maths of the fast path: one step's forward, the gate activations kept for
the backward pass, the per-step coefficients of the tangent, and the tangent step.

Each built-in cell is one :class:`_Ops` row of :data:`_OPS`, keyed by the cell's
``kind``: this table is the one place that says which cells have a fast path. The
chunked scans (:mod:`jaxrnn.fused.scans`) and the custom derivative
(:mod:`jaxrnn.fused.jvp`) only call these functions.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array


def _rec(dh: Array, w_hT: Array) -> Array:
    """``dh @ W_h`` given ``w_hT = W_h^T``, written so that its transpose (the backward
    pass's ``ct @ W_h^T = ct @ w_hT``) is a plain row-major product; XLA's CPU dot is
    markedly slower with a transposed right operand inside the loop."""
    return lax.dot_general(dh, w_hT, (((dh.ndim - 1,), (1,)), ((), ())))


def _mm(a: Array, w: Array) -> Array:
    """``a @ w`` over any leading dims, as one 2-D product (no transposes)."""
    out = a.reshape(-1, a.shape[-1]) @ w
    return out.reshape(a.shape[:-1] + (w.shape[-1],))


def _mm_dw(a: Array, dw: Array) -> Array:
    """``a @ dw`` for a weight tangent ``dw``, over any leading dims of ``a``.

    Reverse mode runs only the transpose, the weight gradient ``a^T ct``. Written as
    ``a @ dw`` that product reads ``a`` transposed, which XLA:CPU's fast (YNNPACK) dot
    does not take: it falls back to a slower generic dot (about 110 against 170 GF/s on
    the weight gradient of a chunk). So ``a`` is transposed here, once, and the product
    contracts its first axis: the transposed product is then a plain ``aT @ ct``. The
    ``optimization_barrier`` keeps XLA's simplifier from folding the transpose back into
    the product. Same values as :func:`_mm`.
    """
    a_t = lax.optimization_barrier(a.reshape(-1, a.shape[-1]).T)
    out = lax.dot_general(a_t, dw, (((0,), (0,)), ((), ())))
    return out.reshape(a.shape[:-1] + (dw.shape[-1],))


class _Ops(NamedTuple):
    """The per-kind maths. ``carry`` is always a tuple: ``(h, c)`` or ``(h,)``.

    step(w_h, b_hn, carry, xp_t) -> (carry', acts_t)       the forward step
    acts(w_h, b_hn, h_prev, xp) -> acts                     gates of a chunk at once
    coefs(acts, prev, new) -> coefficients of the tangent, for a whole chunk at once
    tangent(w_hT, coef_t, dcarry, dxp_t, dhx_t) -> dcarry'  the (linear) tangent step;
      ``w_hT = W_h^T`` and the step computes ``dh W_h`` as :func:`_rec`
    recover(acts, start, hs, mask) -> carries of a chunk from its outputs ``hs`` and gates
      (used where the forward kept only ``h``)
    n_carry: 1 or 2
    split_rec: the recurrent tangent ``dhx`` is kept apart from ``dxp`` (GRU)
    inplace: the first part of ``acts`` is as wide as ``x W_x`` (LSTM, GRU), see
      :func:`_forward_inplace`

    The tangent step is kept to one product ``dh W_h`` and a few full-row multiplies by
    coefficients computed beforehand for the whole chunk (vectorised over ``K B``
    rows), so that the per-step work of the transposed (backward) loop is minimal.
    """

    step: Callable
    acts: Callable
    coefs: Callable
    tangent: Callable
    recover: Callable
    n_carry: int
    split_rec: bool
    inplace: bool


def _lstm_consts(h: int, dtype):
    """Per-column constants so that all four LSTM gates are one ``tanh`` over the row.

    ``sigmoid(z) = 0.5 tanh(0.5 z) + 0.5``, so with ``s = m = 0.5`` on the ``i, f, o``
    blocks, ``s = m = 1`` on ``g``, ``b = 0.5`` on ``i, f, o`` and ``0`` on ``g``::

        a = tanh(s * z) * m + b = [sigmoid(z_i), sigmoid(z_f), tanh(z_g), sigmoid(z_o)]
        da/dz = s m (1 - ((a - b) / m)^2)

    One transcendental pass over the contiguous ``(B, 4H)`` row vectorises far better
    on CPU than four sliced ones (about 4x faster on the gate arithmetic).
    """
    half, one, zero = jnp.full((h,), 0.5, dtype), jnp.ones((h,), dtype), jnp.zeros((h,), dtype)
    s = jnp.concatenate([half, half, one, half])
    b = jnp.concatenate([half, half, zero, half])
    return s, b


def _lstm_act(z: Array) -> Array:
    s, b = _lstm_consts(z.shape[-1] // 4, z.dtype)
    return jnp.tanh(z * s) * s + b


def _lstm_step(w_h, b_hn, carry, xp_t):
    h, c = carry
    n = h.shape[-1]
    a = _lstm_act(xp_t + h @ w_h)
    c_new = a[:, n : 2 * n] * c + a[:, :n] * a[:, 2 * n : 3 * n]
    h_new = a[:, 3 * n :] * jnp.tanh(c_new)
    return (h_new, c_new), a


def _lstm_acts(w_h, b_hn, h_prev, xp):
    return _lstm_act(xp + _mm(h_prev, w_h))


def _lstm_coefs(acts, prev, new):
    """``(D, f, K)`` for a chunk: with ``da = dz * a'(z)`` and ``C = [g, c_prev, i, tanh c']``,
    ``D = a'(z) * C`` (``(K, B, 4H)``), ``f`` and ``K = o (1 - tanh(c')^2)``."""
    n = acts.shape[-1] // 4
    (_, c_prev), (_, c_new) = prev, new
    s, b = _lstm_consts(n, acts.dtype)
    t = (acts - b) / s
    tc = jnp.tanh(c_new)
    coef = jnp.concatenate([acts[..., 2 * n : 3 * n], c_prev, acts[..., :n], tc], axis=-1)
    return (s * s * (1 - t * t)) * coef, acts[..., n : 2 * n], acts[..., 3 * n :] * (1 - tc * tc)


def _lstm_tangent(w_hT, coef_t, dcarry, dxp_t, dhx_t):
    """Tangent of one LSTM step, on whole ``(B, 4H)`` rows::

        dz  = dxp + dh W_h
        P   = (dz * D).reshape(B, 4, H)          # [di g, df c_prev, i dg, do tanh c']
        dc' = f dc + P[:, 0] + P[:, 1] + P[:, 2]
        dh' = o (1 - tanh(c')^2) dc' + P[:, 3]

    The block sums are weighted sums over the reshaped axis, not slices, so the
    transposed step is broadcasts and full-row products (one fused loop in XLA).
    """
    del dhx_t
    d, f, k = coef_t
    dh, dc = dcarry
    n = dh.shape[-1]
    prods = ((dxp_t + _rec(dh, w_hT)) * d).reshape(-1, 4, n)
    to_c = jnp.asarray([1, 1, 1, 0], d.dtype)[:, None]
    to_h = jnp.asarray([0, 0, 0, 1], d.dtype)[:, None]
    dc_new = f * dc + jnp.sum(prods * to_c, axis=1)
    dh_new = k * dc_new + jnp.sum(prods * to_h, axis=1)
    return (dh_new, dc_new)


def _lstm_recover(acts, start, hs, mask):
    """The cell states of a chunk from its gates: ``c_t = f_t c_{t-1} + i_t g_t``.

    For ``remat="step"`` (the default mode keeps ``c``): only ``h`` is kept per step;
    the gates are recomputed per chunk and ``c`` is rebuilt in the backward pass by this
    elementwise recurrence (no matrix product), which saves ``H`` numbers per step. The
    chunk is short, so the recurrence is unrolled in Python with static slices (XLA
    vectorises those; a dynamically indexed loop is several times slower here).
    """
    n = hs.shape[-1]
    f, ig = acts[..., n : 2 * n], acts[..., :n] * acts[..., 2 * n : 3 * n]
    c, cs = start[1], []
    for t in range(acts.shape[0]):
        c_new = f[t] * c + ig[t]
        c = c_new if mask is None else jnp.where(mask[t][:, None], c_new, c)
        cs.append(c)
    return (hs, jnp.stack(cs))


def _sigmoid(x: Array) -> Array:
    """``sigmoid(x) = 0.5 tanh(0.5 x) + 0.5``: one vectorised transcendental on CPU."""
    return 0.5 * jnp.tanh(0.5 * x) + 0.5


def _gru_gates(hp, xp, b_hn):
    """``(r z n, a)``: ``[r, z, n]`` as one ``(..., 3H)`` array and ``a = hn + b_hn``."""
    n_ = hp.shape[-1] // 3
    rz = _sigmoid(xp[..., : 2 * n_] + hp[..., : 2 * n_])
    a = hp[..., 2 * n_ :] + b_hn
    n = jnp.tanh(xp[..., 2 * n_ :] + rz[..., :n_] * a)
    return jnp.concatenate([rz, n], axis=-1), a


def _gru_step(w_h, b_hn, carry, xp_t):
    (h,) = carry
    n_ = h.shape[-1]
    rzn, a = _gru_gates(h @ w_h, xp_t, b_hn)
    z, n = rzn[:, n_ : 2 * n_], rzn[:, 2 * n_ :]
    return (n + z * (h - n),), (rzn, a)


def _gru_acts(w_h, b_hn, h_prev, xp):
    return _gru_gates(_mm(h_prev, w_h), xp, b_hn)


def _gru_coefs(acts, prev, new):
    """``(R, D, E, z)`` for a chunk, so that (see :func:`_gru_tangent`)::

        R = [1, 1, r]   D = [r (1 - r), z (1 - z), 1]
        E = [(1 - z)(1 - n^2) a, h_prev - n, (1 - z)(1 - n^2)]
    """
    rzn, a = acts
    n_ = a.shape[-1]
    r, z, n = rzn[..., :n_], rzn[..., n_ : 2 * n_], rzn[..., 2 * n_ :]
    (h_prev,) = prev
    one = jnp.ones_like(r)
    zn = (1 - z) * (1 - n * n)
    return (jnp.concatenate([one, one, r], -1), jnp.concatenate([r * (1 - r), z * (1 - z), one], -1),
            jnp.concatenate([zn * a, h_prev - n, zn], -1), z)


def _gru_tangent(w_hT, coef_t, dcarry, dxp_t, dhx_t):
    """Tangent of one GRU step, on whole ``(B, 3H)`` rows::

        dhp = dh W_h + dhx                             # [dhr, dhz, dhn]
        v   = (dxp + dhp * R) * D                      # [dr, dz, dxn + r dhn]
        dh' = z dh + sum_k (v * E).reshape(B, 3, H)[:, k]

    which is ``(1 - z) dn + z dh + dz (h_prev - n)`` with
    ``dn = (dxn + r dhn + a dr)(1 - n^2)``.
    """
    rm, d, e, z = coef_t
    (dh,) = dcarry
    v = (dxp_t + (_rec(dh, w_hT) + dhx_t) * rm) * d
    return (z * dh + jnp.sum((v * e).reshape(-1, 3, dh.shape[-1]), axis=1),)


def _rnn_ops(activation: str) -> _Ops:
    phi = jnp.tanh if activation == "tanh" else jax.nn.relu

    def step(w_h, b_hn, carry, xp_t):
        h_new = phi(xp_t + carry[0] @ w_h)
        return (h_new,), jnp.zeros((h_new.shape[0], 0), h_new.dtype)

    def acts(w_h, b_hn, h_prev, xp):
        return jnp.zeros(xp.shape[:-1] + (0,), xp.dtype)

    def coefs(acts, prev, new):
        (h_new,) = new
        return (1 - h_new * h_new if activation == "tanh" else (h_new > 0).astype(h_new.dtype),)

    def tangent(w_hT, coef_t, dcarry, dxp_t, dhx_t):
        return ((dxp_t + _rec(dcarry[0], w_hT)) * coef_t[0],)

    return _Ops(step, acts, coefs, tangent, _own_carry, 1, False, False)


def _own_carry(acts, start, hs, mask):
    return (hs,)


_OPS = {
    "lstm": _Ops(_lstm_step, _lstm_acts, _lstm_coefs, _lstm_tangent, _lstm_recover, 2, False, True),
    "gru": _Ops(_gru_step, _gru_acts, _gru_coefs, _gru_tangent, _own_carry, 1, True, True),
    "rnn": _rnn_ops("tanh"),
    "rnn_relu": _rnn_ops("relu"),
}

"""Fast unrolling of the built-in cells (LSTM, GRU, Elman RNN) with a hand-written derivative.

:func:`jaxrnn.unroll` calls :func:`scan` for every cell made by ``jr.lstm``, ``jr.gru``
or ``jr.rnn`` (same result as the generic ``lax.scan`` of ``cell.step`` to float
tolerance); other cells, mixed dtypes and empty arrays take the generic path.

Why: differentiating ``lax.scan(cell.step)`` automatically keeps every intermediate of
every step, adds a rank-``B`` update of ``dW_h`` inside the backward loop, and keeps the
hoisted input projection ``x W_x + b`` (``G H`` numbers per step) alive. Here the
recurrence is a :func:`jax.custom_jvp` function whose tangent is written by hand:

* Time is cut into chunks of ``K`` steps (``DEFAULT_CHUNK``). With ``remat=None`` the
  LSTM and GRU forward projects the whole sequence with one matrix product into a
  ``(T, B, G H)`` buffer and overwrites each step of it with that step's gates (in
  place: the gates kept for the backward pass cost no extra memory); the other modes
  project chunk by chunk, ``(K B, I) @ (I, G H)``. Only ``h W_h`` and the gate
  nonlinearities are per step, and the gates are computed as one ``tanh`` over the
  whole ``(B, G H)`` row (``sigmoid(z) = (tanh(z / 2) + 1) / 2``). The steps of a
  forward chunk are unrolled in Python and read the chunk through static slices: on
  XLA:CPU a fusion that reads one step of a larger array through a dynamic index runs
  element by element (see :data:`STATIC_STEPS`).
* The tangent (and so, after JAX transposes it, the backward pass) moves the weight
  terms out of the per-step loop: for the LSTM, with ``h_prev`` the chunk's incoming
  states stacked ``(K B, H)``::

      dz_chunk = dx W_x + db + [x, h_prev] [dW_x; dW_h]   # large products per chunk
      dz_t     = dz_chunk[t] + dh_{t-1} W_h                 # the only per-step product
      di, df, dg, do = dz_t * [i(1-i), f(1-f), 1-g^2, o(1-o)]
      dc_t     = df * c_{t-1} + f * dc_{t-1} + di * g + i * dg
      dh_t     = do * tanh(c_t) + o * (1 - tanh(c_t)^2) * dc_t

  so the transposed (reverse-mode) computation runs one backward loop over the steps
  of a chunk, then accumulates ``[dW_x; dW_h] = [x, h_prev]^T dz`` and ``db = sum dz``
  as one product per chunk. The per-step coefficients (``i (1 - i)``...) are computed
  for the whole chunk at once, so the backward step is one product and one fused
  elementwise pass. Forward mode (``jax.jvp``, ``jax.jacfwd``) and ``jax.vmap`` keep
  working, because the rule is an ordinary JVP.
* What the backward pass keeps (``remat`` of :func:`jaxrnn.unroll`):

  =============  ==============================================  ====================
  ``remat``      kept per step                                   recomputed
  =============  ==============================================  ====================
  ``None``       the output ``h`` and the gate activations       the LSTM's ``c``
                 (LSTM ``h, i, f, g, o``: 5 H numbers)
  ``"step"``     the output ``h`` only                           the gates, as one
                                                                 product per chunk,
                                                                 and ``c``
  ``k``/"sqrt"   the carry at the start of each block of ``k``   each block's forward
                 steps (``k`` about ``sqrt(T)`` for "sqrt")      scan
  =============  ==============================================  ====================

  The LSTM's ``c_t = f_t c_{t-1} + i_t g_t`` is rebuilt from the gates and the chunk's
  first ``c`` by an elementwise scan, so it is never stored per step. The recomputation
  lives inside :func:`jax.checkpoint` around each chunk of the tangent, so only the
  listed arrays cross from the forward to the backward pass. For the float32 LSTM
  (B=32, I=64, H=256) this keeps 2.6 / 0.6 carried states per step for ``None`` /
  ``"step"`` with a loss on the final state, against 6.1 for a plain ``lax.scan``
  (``benchmarks/results/bptt_memory.md``).

What bounds the speed on CPU: the per-step products (``h W_h`` and, in the backward
loop, ``dh W_h^T``), which XLA:CPU already spreads over the available cores. Everything
else is arranged so that it leaves the loop: the input and weight-gradient products run
once per chunk, the elementwise work per step is one fused pass. The measurements behind
these choices, and the restructurings that were tried and dropped, are in the
documentation's performance notes (``docs/performance.md``).

Masked steps (``lengths``) keep the carry: ``carry_t = where(m_t, new_t, carry_{t-1})``
and the same selection in the tangent. Sequences whose length is not a multiple of
``K`` are padded with masked steps.

Example::

  >>> import jax, jax.numpy as jnp, jaxrnn as jr
  >>> cell = jr.lstm(8)
  >>> params = cell.init(jax.random.key(0), input_size=3)
  >>> xs_tm = jnp.ones((5, 2, 3))                           # (time, batch, features)
  >>> carry, hs = jr.fused.scan(cell, params, xs_tm, cell.initial_carry(2))
  >>> hs.shape
  (5, 2, 8)
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

from jaxrnn.cells import Cell

Array = jax.Array

__all__ = ["scan", "applies", "chunk_length", "DEFAULT_CHUNK"]

#: Target chunk length ``K`` for ``remat=None`` and ``remat="step"``.
DEFAULT_CHUNK = 8


# --------------------------------------------------------------------------- cell maths


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

    Only ``h`` is kept per step; ``c`` is rebuilt in the backward pass by this
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


# --------------------------------------------------------------------------- scans

#: Loops over at most this many steps are unrolled in Python (static indices), longer
#: ones are a ``lax.scan``. On XLA:CPU an elementwise fusion that reads a step of a
#: larger array through a dynamic index runs element by element, while a static slice
#: is vectorised: at ``B = 32, H = 256`` this takes the LSTM step from about 155 to
#: 125 us, close to the cost of the step's matrix product alone.
STATIC_STEPS = 32

#: Steps per iteration of the backward (tangent) loop when ``unroll`` is 1.
TANGENT_UNROLL = 2


def _unstack(a: Array | None, n: int):
    """``[a[0], ..., a[n - 1]]`` as static slices (``lax.split``, whose transpose is one
    concatenation); ``None`` gives ``n`` Nones."""
    if a is None:
        return [None] * n
    return [p.reshape(a.shape[1:]) for p in lax.split(a, (1,) * n, axis=0)]


def _loop(body: Callable, carry, xs, n: int, unroll: int):
    """``lax.scan(body, carry, xs)`` over ``n`` steps, unrolled in Python with static
    slices when ``n <= STATIC_STEPS`` (see :data:`STATIC_STEPS`)."""
    if n > STATIC_STEPS:
        return lax.scan(body, carry, xs, unroll=unroll)
    leaves, treedef = jax.tree_util.tree_flatten(xs, is_leaf=lambda a: a is None)
    steps = [_unstack(a, n) for a in leaves]
    ys = []
    for t in range(n):
        carry, y = body(carry, jax.tree_util.tree_unflatten(treedef, [s[t] for s in steps]))
        ys.append(y)
    return carry, jax.tree_util.tree_map(lambda *y: jnp.stack(y), *ys)


def _select(m_t, new, old):
    """``where(m_t, new, old)`` for each carry part; ``m_t`` is ``(B,)`` bool or None."""
    if m_t is None:
        return new
    return tuple(jnp.where(m_t[:, None], n, o) for n, o in zip(new, old))


def _chunk_forward(ops: _Ops, params, x_k, m_k, carry, unroll: int, keep: str):
    """Forward over one chunk ``x_k: (K, B, I)``.

    keep: "h" (the outputs ``h``), "carry" (every carry), "acts" (``h`` and the gates).
    A long chunk (a remat block) is run in pieces of at most ``DEFAULT_CHUNK`` steps so
    that its projected inputs never take more than one piece's memory.
    """
    k = x_k.shape[0]
    s = _sub_chunk(k)
    if s < k:
        def piece(c, inp):
            return _chunk_forward(ops, params, inp[0], inp[1], c, unroll, keep)

        split = lambda a: a.reshape((k // s, s) + a.shape[1:])  # noqa: E731
        carry, out = lax.scan(piece, carry, (split(x_k), None if m_k is None else split(m_k)))
        return carry, jax.tree_util.tree_map(lambda a: a.reshape((k,) + a.shape[2:]), out)
    w_h, b_hn = params["w_h"], params.get("b_hn")
    xp = _mm(x_k, params["w_x"]) + params["b"]

    def inner(c, inp):
        xp_t, m_t = inp
        new, acts = ops.step(w_h, b_hn, c, xp_t)
        new = _select(m_t, new, c)
        if keep == "h":
            return new, new[0]
        if keep == "carry":
            return new, new
        return new, (new[0], acts)

    return _loop(inner, carry, (xp, m_k), k, unroll)


def _chunk_input(xs_bm: Array, j: Array, *, k: int) -> Array:
    """Steps ``[j k, (j + 1) k)`` of batch-major ``xs_bm: (B, T, I)``, as ``(k, B, I)``.

    Slicing the batch-major array chunk by chunk avoids a time-major copy of the whole
    input (``unroll`` hands over ``swapaxes(xs)``; XLA cancels the two transposes).
    """
    return jnp.swapaxes(lax.dynamic_slice_in_dim(xs_bm, j * k, k, axis=1), 0, 1)


def _chunk_index(t: int, k: int, mask: Array | None):
    """The outer scan's inputs: chunk numbers and the mask cut into chunks."""
    n = t // k
    m_k = None if mask is None else mask.reshape((n, k) + mask.shape[1:])
    return jnp.arange(n, dtype=jnp.int32), m_k


def _forward(ops: _Ops, params, xs, mask, carry, k: int, unroll: int, keep: str):
    """Outer scan over chunks; per chunk also returns its starting carry."""
    xs_bm = jnp.swapaxes(xs, 0, 1)

    def outer(c, inp):
        j, mm = inp
        c_new, out = _chunk_forward(ops, params, _chunk_input(xs_bm, j, k=k), mm, c, unroll, keep)
        return c_new, (out, c)

    return lax.scan(outer, carry, _chunk_index(xs.shape[0], k, mask))


def _forward_inplace(ops: _Ops, params, xs, mask, carry, k: int, unroll: int):
    """The forward of ``remat=None`` for cells whose gates are as wide as ``x W_x``.

    The input projection of the whole sequence is one matrix product into a ``(T, B, G H)``
    buffer, and the loop overwrites step ``t`` of that buffer with the step's gates (for
    the GRU ``[r, z, n]``; its ``a = h W_hn + b_hn`` goes to a side buffer), so the
    gates kept for the backward pass take no memory beyond the projection's and no
    zero-filled output buffers or per-chunk copies are needed. The outputs ``h_t`` are
    written batch-major, ``hs: (B, T, H)``, the layout ``jr.unroll`` returns, so no
    transposed copy of them is made. Also records the carry at the start of every chunk
    of ``k`` steps. Returns ``(carry, hs, acts, starts)``.
    """
    t_len, b = xs.shape[:2]
    n = t_len // k
    w_h, b_hn = params["w_h"], params.get("b_hn")
    buf = _mm(xs, params["w_x"])  # the bias is added in the loop: no second (T, B, GH) buffer
    bias = params["b"]
    hs = jnp.zeros((b, t_len) + carry[0].shape[1:], carry[0].dtype)
    starts = tuple(jnp.zeros((n,) + c.shape, c.dtype) for c in carry)
    x0 = jnp.zeros(buf.shape[1:], buf.dtype)
    # The gates' layout: the first leaf overwrites ``buf``, the others get side buffers.
    acts_leaves, acts_def = jax.tree_util.tree_flatten(jax.eval_shape(lambda: ops.step(w_h, b_hn, carry, x0)[1]))
    side = [jnp.zeros((t_len,) + a.shape, a.dtype) for a in acts_leaves[1:]]

    def outer(i, st):
        c, bufs, starts = st
        starts = tuple(lax.dynamic_update_index_in_dim(a, v, i, 0) for a, v in zip(starts, c))
        # One dynamic slice per chunk; the steps read it through static slices and their
        # results are written back as one block per chunk (see STATIC_STEPS).
        x_k = lax.dynamic_slice_in_dim(bufs[0], i * k, k, axis=0)
        m_k = None if mask is None else lax.dynamic_slice_in_dim(mask, i * k, k, axis=0)

        def inner(c, inp):
            x_t, m_t = inp
            new, acts = ops.step(w_h, b_hn, c, x_t + bias)
            return _select(m_t, new, c), (jax.tree_util.tree_leaves(acts), new[0])

        c, (acts, h_k) = _loop(inner, c, (x_k, m_k), k, unroll)
        out = [lax.dynamic_update_slice_in_dim(u, v, i * k, axis=0) for u, v in zip(bufs[:-1], acts)]
        return c, out + [lax.dynamic_update_slice_in_dim(bufs[-1], jnp.swapaxes(h_k, 0, 1), i * k, axis=1)], starts

    carry, bufs, starts = lax.fori_loop(0, n, outer, (carry, [buf] + side + [hs], starts))
    return carry, bufs[-1], jax.tree_util.tree_unflatten(acts_def, bufs[:-1]), starts


def _is_zero(t) -> bool:
    return isinstance(t, SymbolicZero)


def _shift(start: Array, seq: Array) -> Array:
    """``[start, seq[0], ..., seq[-2]]``: the incoming value at each step of a chunk."""
    return jnp.concatenate([start[None], seq[:-1]], axis=0)


def _input_terms(ops: _Ops, params, dparams, x_k, dx_k, h_prev):
    """The tangent terms of one chunk that do not depend on the carry's tangent.

    ``dxp = dx W_x + x dW_x + db`` and ``dhx = h_prev dW_h (+ db_hn)``, each a large
    matrix product over the chunk; for cells without ``split_rec`` ``dhx`` is added to
    ``dxp``. Zero tangents (parameters not being differentiated) are skipped.
    """
    w_x, w_h = params["w_x"], params["w_h"]
    k, b = x_k.shape[:2]
    hs, gh = w_h.shape
    dxp = jnp.zeros((k, b, gh), x_k.dtype)
    if dx_k is not None:
        dxp = dxp + _mm(dx_k, w_x)
    if not _is_zero(dparams["b"]):
        dxp = dxp + dparams["b"]
    dw_x, dw_h = dparams["w_x"], dparams["w_h"]
    if not ops.split_rec and not _is_zero(dw_x) and not _is_zero(dw_h):
        # One product [x, h_prev] @ [dW_x; dW_h]: transposed, one (I + H, K B) @ (K B, GH)
        # product gives both weight gradients (markedly faster than two on CPU).
        xh = jnp.concatenate([x_k, h_prev], axis=-1)
        return dxp + _mm_dw(xh, jnp.concatenate([dw_x, dw_h], axis=0)), None
    if not _is_zero(dw_x):
        dxp = dxp + _mm_dw(x_k, dw_x)
    dhx = jnp.zeros((k, b, gh), x_k.dtype) if ops.split_rec else None
    if not _is_zero(dparams["w_h"]):
        rec = _mm_dw(h_prev, dparams["w_h"])
        if ops.split_rec:
            dhx = dhx + rec
        else:
            dxp = dxp + rec
    db_hn = dparams.get("b_hn")
    if ops.split_rec and db_hn is not None and not _is_zero(db_hn):
        dhx = dhx + jnp.concatenate([jnp.zeros((2 * hs,), x_k.dtype), db_hn])
    return dxp, dhx


def _tangent_chunks(ops: _Ops, params, dparams, get, inputs, dc0, unroll: int):
    """Scan the tangent over chunks of ``k`` steps, each chunk under ``jax.checkpoint``.

    inputs: per chunk ``(ref, mask, dx, start)``; ``get(ref)`` gives the chunk's
    ``(k, B, I)`` inputs and ``(carries, acts)``: ``carries`` is ``(hs,)`` or the whole
    carry, ``acts`` the gates or None to recompute them as one product per chunk.
    Missing carry parts are rebuilt from the gates (``ops.recover``). Returns the final
    tangent carry and the outputs' tangents stacked ``(n, k, B, H)``.
    """
    w_x, w_h, bias, b_hn = params["w_x"], params["w_h"], params["b"], params.get("b_hn")
    w_hT = w_h.T  # materialised once, so the backward step's product is a plain one

    def chunk(dc, inp):
        ref, mm, dx_k, start_k = inp
        x_k, (carries_k, acts_k) = get(ref)
        if acts_k is None:
            acts_k = ops.acts(w_h, b_hn, _shift(start_k[0], carries_k[0]), _mm(x_k, w_x) + bias)
        if len(carries_k) < ops.n_carry:
            carries_k = ops.recover(acts_k, start_k, carries_k[0], mm)
        prev_k = tuple(_shift(s, c) for s, c in zip(start_k, carries_k))
        dxp, dhx = _input_terms(ops, params, dparams, x_k, dx_k, prev_k[0])
        coefs = ops.coefs(acts_k, prev_k, carries_k)  # (K, B, ...) at once, vectorised

        def inner(d, inp):
            dxp_t, dhx_t, m_t, coef_t = inp
            d_new = _select(m_t, ops.tangent(w_hT, coef_t, d, dxp_t, dhx_t), d)
            return d_new, d_new[0]

        # A loop, not unrolled in Python like the forward: unrolled, the LSTM's elementwise
        # dc chain is fused (and so recomputed) by XLA into every later step of the
        # transposed program, which costs more than the dynamic indexing saves. (Breaking
        # that chain with a lax.cond per step, which XLA does not fuse across, makes the
        # unrolled form 0.94x the time on one core but 0.99-1.02x on two; optimization
        # barriers do not help: XLA:CPU removes them before fusion.)
        return lax.scan(inner, dc, (dxp, dhx, mm, coefs), unroll=max(unroll, TANGENT_UNROLL))

    return lax.scan(jax.checkpoint(chunk, prevent_cse=False), dc0, inputs)


def _sub_chunk(k: int) -> int:
    """Length of the pieces a block of ``k`` steps is differentiated in."""
    if k <= 2 * DEFAULT_CHUNK:
        return k
    best = max(d for d in range(1, DEFAULT_CHUNK + 1) if k % d == 0)
    return best if 2 * best >= DEFAULT_CHUNK else k  # no good divisor: the block at once


def _tangent(ops: _Ops, cfg, params, xs, mask, saved, starts, dparams, dxs, dcarry0):
    """The JVP's tangent. Returns ``(dcarry_T, dhs)`` with ``dhs`` time-major ``(T, B, H)``.

    ``saved = ((hs,), acts, hs_batch_major)`` (None for blocks).
    """
    k, unroll, save = cfg
    t, b = xs.shape[:2]
    hs = params["w_h"].shape[0]
    xs_bm = jnp.swapaxes(xs, 0, 1)
    idx, m_k = _chunk_index(t, k, mask)
    dxs_k = None if _is_zero(dxs) else dxs.reshape((t // k, k) + dxs.shape[1:])
    dc0 = tuple(jnp.zeros((b, hs), xs.dtype) if _is_zero(d) else d for d in dcarry0)
    if save != "block":
        # The kept arrays are (T, B, .) buffers, sliced chunk by chunk inside the loop
        # (XLA fuses the slices into their consumers: no per-chunk copies).
        def get(j):
            piece = lambda a: lax.dynamic_slice_in_dim(a, j * k, k, axis=0)  # noqa: E731
            (h_all,), acts, h_bm = saved
            acts = None if acts is None else jax.tree_util.tree_map(piece, acts)
            h_k = _chunk_input(h_all, j, k=k) if h_bm else piece(h_all)
            return _chunk_input(xs_bm, j, k=k), ((h_k,), acts)

        dcarry, dhs = _tangent_chunks(ops, params, dparams, get, (idx, m_k, dxs_k, starts), dc0, unroll)
        return dcarry, dhs.reshape((t, b, hs))

    # Blocks: only each block's starting carry was kept. Recompute the block's carries,
    # then differentiate it in pieces of s steps (gates recomputed per piece), so the
    # memory of one block is 2 H numbers per step plus one piece.
    s = _sub_chunk(k)
    ns = k // s

    def piece(a):
        return a.reshape((ns, s) + a.shape[1:])

    def block(dc, inp):
        j, mm, dx_b, start_b = inp
        x_b = _chunk_input(xs_bm, j, k=k)
        _, carries_b = _chunk_forward(ops, params, x_b, mm, start_b, unroll, "carry")
        starts_s = tuple(jnp.concatenate([st[None], c[s - 1 : k - 1 : s]], axis=0) for st, c in zip(start_b, carries_b))
        inputs = ((piece(x_b), tuple(piece(c) for c in carries_b)), None if mm is None else piece(mm),
                  None if dx_b is None else piece(dx_b), starts_s)
        return _tangent_chunks(ops, params, dparams, lambda ref: (ref[0], (ref[1], None)), inputs, dc, unroll)

    dcarry, dhs = lax.scan(jax.checkpoint(block, prevent_cse=False), dc0, (idx, m_k, dxs_k, starts))
    return dcarry, dhs.reshape((t, b, hs))


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1))
def _recurrence(kind: str, cfg, params, xs, mask, carry0):
    """``(carry_T, hs)`` of cell ``kind`` over time-major ``xs: (T, B, I)``; T % K == 0."""
    k, unroll, _ = cfg
    carry, (hs, _) = _forward(_OPS[kind], params, xs, mask, carry0, k, unroll, "h")
    return carry, hs.reshape(xs.shape[:2] + hs.shape[-1:])


def _recurrence_jvp(kind: str, cfg, primals, tangents):
    params, xs, mask, carry0 = primals
    dparams, dxs, _, dcarry0 = tangents
    ops = _OPS[kind]
    k, unroll, save = cfg
    flat = lambda a: a.reshape(xs.shape[:1] + a.shape[2:])  # noqa: E731  (n, K, ...) -> (T, ...)
    if save == "acts" and ops.inplace:
        carry, hs_bm, acts, starts = _forward_inplace(ops, params, xs, mask, carry0, k, unroll)
        hs, saved = jnp.swapaxes(hs_bm, 0, 1), ((hs_bm,), acts, True)
    else:
        keep = "acts" if save == "acts" else "h"
        carry, (out, starts) = _forward(ops, params, xs, mask, carry0, k, unroll, keep)
        hs, acts = (flat(out[0]), jax.tree_util.tree_map(flat, out[1])) if keep == "acts" else (flat(out), None)
        saved = None if save == "block" else ((hs,), acts, False)
    dcarry, dhs = _tangent(ops, cfg, params, xs, mask, saved, starts, dparams, dxs, dcarry0)
    return (carry, hs), (dcarry, dhs)


_recurrence.defjvp(_recurrence_jvp, symbolic_zeros=True)


# --------------------------------------------------------------------------- entry points


def applies(cell: Any, params: Any, xs_tm: Array, carry: Any) -> bool:
    """Whether :func:`scan` handles this call (else the generic ``lax.scan`` path is used).

    True for cells with ``fused=True`` (those made by ``jr.lstm``, ``jr.gru`` and
    ``jr.rnn``; this module's table of per-cell maths is keyed by their ``kind``) whose params, inputs
    and carry all share one floating dtype and whose arrays are not empty.
    """
    if not isinstance(cell, Cell) or not cell.fused:
        return False  # a cell of the user's own: the generic lax.scan of its apply
    if cell.kind not in _OPS:
        raise ValueError(
            f"cell.fused is True but cell.kind={cell.kind!r} has no fast path (those are {sorted(_OPS)}); "
            "build the cell with fused=False"
        )
    leaves = jax.tree_util.tree_leaves((params, carry, xs_tm))
    dtypes = {jnp.result_type(v) for v in leaves}
    if len(dtypes) != 1 or not jnp.issubdtype(next(iter(dtypes)), jnp.floating):
        return False
    return all(v.size > 0 for v in leaves if hasattr(v, "size"))


def chunk_length(steps: int, remat: Any = None, chunk: int | None = None) -> int:
    """The chunk length ``K`` used for ``steps`` time steps.

    For ``remat`` None or ``"step"``: ``steps`` itself when ``steps <= chunk``, else the
    largest divisor of ``steps`` not above ``chunk`` if it is at least ``chunk / 2``,
    else ``chunk`` (the sequence is then padded with masked steps). For an int block
    length it is that int (at most ``steps``); for ``"sqrt"`` it is the divisor of
    ``steps`` nearest ``sqrt(steps)`` (in ratio) if one lies within a factor 2 of it,
    else ``ceil(sqrt(steps))``.
    """
    if remat == "sqrt":
        root = max(1, int(math.ceil(math.sqrt(max(steps, 1)))))
        near = [d for d in range((root + 1) // 2, 2 * root + 1) if steps % d == 0]
        return min(near, key=lambda d: abs(math.log(d / math.sqrt(steps)))) if near else root
    if isinstance(remat, int) and not isinstance(remat, bool):
        return max(1, min(remat, steps))
    chunk = DEFAULT_CHUNK if chunk is None else chunk
    if steps <= chunk:
        return max(steps, 1)
    best = max(d for d in range(1, chunk + 1) if steps % d == 0)
    return best if 2 * best >= chunk else chunk


def scan(cell: Cell, params: dict, xs_tm: Array, carry: Any, mask: Array | None = None,
         unroll: int = 1, remat: Any = None) -> tuple[Any, Array]:
    """Run a built-in cell over time-major inputs with the hand-written derivative.

    Args:
      cell: a cell made by ``jr.lstm``, ``jr.gru`` or ``jr.rnn`` (see :func:`applies`).
      params: its parameters (already checked by the caller).
      xs_tm: ``(T, B, I)`` or ``(T, I)`` inputs, in the order the cell reads them.
      carry: the initial carry, batch shape ``(B,)`` or ``()``.
      mask: optional ``(T, B)`` (or ``(T,)``) bool, False where the carry is held.
      unroll: ``lax.scan`` unroll of the per-step loops.
      remat: ``None``, ``"step"``, ``"sqrt"`` or an int block length (see the module
        docstring for what each keeps).

    Returns:
      ``(carry, hs)``: the final carry and ``hs: (T, B, H)`` (``(T, H)`` unbatched), the
      outputs ``h_t``, zero where ``mask`` is False.
    """
    kind = cell.kind
    ops = _OPS[kind]
    steps = xs_tm.shape[0]
    unbatched = xs_tm.ndim == 2
    parts = tuple(carry) if ops.n_carry == 2 else (carry,)
    if unbatched:
        xs_tm = xs_tm[:, None]
        parts = tuple(p[None] for p in parts)
        mask = None if mask is None else mask[:, None]
    k = chunk_length(steps, remat)
    save = "acts" if remat is None else ("carry" if remat == "step" else "block")
    m = mask
    pad = -steps % k
    if pad:
        xs_tm = jnp.concatenate([xs_tm, jnp.zeros((pad,) + xs_tm.shape[1:], xs_tm.dtype)], axis=0)
        valid = jnp.ones((steps, xs_tm.shape[1]), bool) if m is None else m
        m = jnp.concatenate([valid, jnp.zeros((pad, xs_tm.shape[1]), bool)], axis=0)
    new, hs = _recurrence(kind, (k, unroll, save), dict(params), xs_tm, m, parts)
    if pad:
        hs = hs[:steps]
    if mask is not None:
        hs = jnp.where(mask[..., None], hs, jnp.zeros((), hs.dtype))
    if unbatched:
        new = tuple(p[0] for p in new)
        hs = hs[:, 0]
    return (new if ops.n_carry == 2 else new[0]), hs

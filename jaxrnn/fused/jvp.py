"""The custom derivative of the fast path: the recurrence as a :func:`jax.custom_jvp`
whose tangent moves the weight terms out of the per-step loop (one product per chunk;
see :mod:`jaxrnn.fused` for the equations), recomputing inside :func:`jax.checkpoint`
what the forward pass did not keep.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

Array = jax.Array

from jaxrnn.fused.maths import _OPS, _Ops, _mm, _mm_dw
from jaxrnn.fused.scans import (
    _chunk_forward, _chunk_index, _chunk_input, _forward, _forward_inplace, _select, _sub_chunk,
)

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


def _tangent_chunks(ops: _Ops, params, dparams, get, inputs, dc0, t_unroll: int):
    """Scan the tangent over chunks of ``k`` steps, each chunk under ``jax.checkpoint``.

    inputs: per chunk ``(ref, mask, dx, start)``; ``get(ref)`` gives the chunk's
    ``(k, B, I)`` inputs and ``(carries, acts)``: ``carries`` is ``(hs,)`` or the whole
    carry, ``acts`` the gates or None to recompute them as one product per chunk.
    Missing carry parts are rebuilt from the gates (``ops.recover``). Returns the final
    tangent carry and the outputs' tangents stacked ``(n, k, B, H)``. ``t_unroll``: steps
    per iteration of the per-step loop.
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
        # transposed program, which costs more than the dynamic indexing saves (the
        # variants that were measured are in docs/performance.md).
        return lax.scan(inner, dc, (dxp, dhx, mm, coefs), unroll=t_unroll)

    return lax.scan(jax.checkpoint(chunk, prevent_cse=False), dc0, inputs)


def _tangent(ops: _Ops, cfg, params, xs, mask, saved, starts, dparams, dxs, dcarry0):
    """The JVP's tangent. Returns ``(dcarry_T, dhs)`` with ``dhs`` time-major ``(T, B, H)``.

    ``saved = (carries, acts, hs_batch_major)`` (None for blocks): ``carries`` is ``(hs,)``,
    or ``(hs, cs)`` where the forward kept every carry part (the LSTM's in-place forward).
    """
    k, unroll, save, t_unroll = cfg
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
            (h_all, *rest), acts, h_bm = saved
            acts = None if acts is None else jax.tree_util.tree_map(piece, acts)
            h_k = _chunk_input(h_all, j, k=k) if h_bm else piece(h_all)
            return _chunk_input(xs_bm, j, k=k), ((h_k,) + tuple(piece(r) for r in rest), acts)

        dcarry, dhs = _tangent_chunks(ops, params, dparams, get, (idx, m_k, dxs_k, starts), dc0, t_unroll)
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
        return _tangent_chunks(ops, params, dparams, lambda ref: (ref[0], (ref[1], None)), inputs, dc, t_unroll)

    dcarry, dhs = lax.scan(jax.checkpoint(block, prevent_cse=False), dc0, (idx, m_k, dxs_k, starts))
    return dcarry, dhs.reshape((t, b, hs))


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1))
def _recurrence(kind: str, cfg, params, xs, mask, carry0):
    """``(carry_T, hs)`` of cell ``kind`` over time-major ``xs: (T, B, I)``; T % K == 0."""
    k, unroll = cfg[:2]
    carry, (hs, _) = _forward(_OPS[kind], params, xs, mask, carry0, k, unroll, "h")
    return carry, hs.reshape(xs.shape[:2] + hs.shape[-1:])


def _recurrence_jvp(kind: str, cfg, primals, tangents):
    params, xs, mask, carry0 = primals
    dparams, dxs, _, dcarry0 = tangents
    ops = _OPS[kind]
    k, unroll, save, _ = cfg
    flat = lambda a: a.reshape(xs.shape[:1] + a.shape[2:])  # noqa: E731  (n, K, ...) -> (T, ...)
    if save == "acts" and ops.inplace:
        carry, carries, acts, starts = _forward_inplace(ops, params, xs, mask, carry0, k, unroll)
        hs, saved = jnp.swapaxes(carries[0], 0, 1), (carries, acts, True)
    else:
        keep = "acts" if save == "acts" else "h"
        carry, (out, starts) = _forward(ops, params, xs, mask, carry0, k, unroll, keep)
        hs, acts = (flat(out[0]), jax.tree_util.tree_map(flat, out[1])) if keep == "acts" else (flat(out), None)
        saved = None if save == "block" else ((hs,), acts, False)
    dcarry, dhs = _tangent(ops, cfg, params, xs, mask, saved, starts, dparams, dxs, dcarry0)
    return (carry, hs), (dcarry, dhs)


_recurrence.defjvp(_recurrence_jvp, symbolic_zeros=True)

"""Chunked forward scans of the fast path: time cut into chunks of ``K`` steps, each
chunk's input projection one product, the steps of a chunk unrolled with static slices.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array

from jaxrnn.fused.maths import _Ops, _mm

#: Target chunk length ``K`` for ``remat=None`` and ``remat="step"`` on the CPU (the
#: ``"cpu"`` row of :data:`PLATFORM_CONFIG`); also the piece length of remat blocks.
DEFAULT_CHUNK = 8


#: Loops over at most this many steps are unrolled in Python (static indices), longer
#: ones are a ``lax.scan``. On XLA:CPU an elementwise fusion that reads a step of a
#: larger array through a dynamic index runs element by element, while a static slice
#: is vectorised: at ``B = 32, H = 256`` this takes the LSTM step from about 155 to
#: 125 us, close to the cost of the step's matrix product alone.
STATIC_STEPS = 32

#: Steps per iteration of the backward (tangent) loop when ``unroll`` is 1, on the CPU
#: (the ``"cpu"`` row of :data:`PLATFORM_CONFIG`). A trade-off: within an iteration XLA
#: fuses one step's elementwise ``dc`` (LSTM) update into the next step's consumers and
#: computes it twice (more work, so one step per iteration does less), while every
#: iteration costs a loop turn and a synchronisation of the threads of the per-step
#: product (so on two cores two steps per iteration ran faster).
TANGENT_UNROLL = 2

#: Chunk length and backward-loop unroll of the fast path, per platform
#: (``jax.Device.platform``: ``"cpu"``, ``"gpu"``, ``"tpu"``...), chosen when the call
#: is traced (see :func:`platform_config`); a platform without a row takes ``"cpu"``'s.
#:
#: * ``chunk``: target chunk length ``K`` for ``remat=None`` / ``"step"`` (see
#:   :func:`jaxrnn.fused.chunk_length`). The forward steps of a chunk are unrolled, so
#:   a larger ``K`` means more steps per loop iteration and a longer program.
#: * ``tangent_unroll``: steps per iteration of the backward loop (the ``unroll`` of its
#:   ``lax.scan``); ``jr.unroll(..., unroll=n)`` raises it to ``n``.
#:
#: The ``"gpu"`` row is not measured yet: it equals the CPU row. A GPU launches a kernel
#: per operation, so it likely wants more steps per loop iteration; ``benchmarks/gpu.py``
#: times the LSTM training step over a few ``chunk`` / ``tangent_unroll`` values
#: (its ``fast-path sweep`` rows) to fill this row from measurement. Change an entry in
#: place (``PLATFORM_CONFIG["gpu"]["chunk"] = 16``) before a function is traced.
PLATFORM_CONFIG = {
    "cpu": {"chunk": DEFAULT_CHUNK, "tangent_unroll": TANGENT_UNROLL},
    "gpu": {"chunk": DEFAULT_CHUNK, "tangent_unroll": TANGENT_UNROLL},
}


def current_platform(*arrays) -> str:
    """The platform the fast path is traced for: that of the first of ``arrays`` that is a
    concrete array on one device, else of JAX's default backend (inside ``jax.jit`` the
    arrays are tracers, and the computation runs on the default backend unless the
    jitted function was given another device)."""
    for a in arrays:
        if isinstance(a, jax.Array) and not isinstance(a, jax.core.Tracer):
            try:
                devices = a.devices()
            except Exception:  # noqa: BLE001 - a deleted or otherwise unusable array: ask the backend
                break
            if len(devices) >= 1:
                return next(iter(devices)).platform
    return jax.default_backend()


def platform_config(platform: str | None = None) -> dict:
    """``{"chunk": K, "tangent_unroll": n}`` for ``platform`` (default: :func:`current_platform`),
    from :data:`PLATFORM_CONFIG`; a platform without a row gets the ``"cpu"`` row."""
    platform = current_platform() if platform is None else platform
    return dict(PLATFORM_CONFIG.get(platform, PLATFORM_CONFIG["cpu"]))


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
    transposed copy of them is made; the other carry parts (the LSTM's ``c_t``) go to
    time-major ``(T, B, .)`` buffers, so the backward pass does not rebuild them. Also
    records the carry at the start of every chunk of ``k`` steps. Returns
    ``(carry, carries, acts, starts)`` with ``carries = (hs,) + the other parts``.
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

    # The carry parts after the first (the LSTM's c), time-major, one side buffer each.
    rest = [jnp.zeros((t_len,) + c.shape, c.dtype) for c in carry[1:]]
    n_side = 1 + len(side)

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
            new = _select(m_t, new, c)
            return new, (jax.tree_util.tree_leaves(acts) + list(new[1:]), new[0])

        c, (acts, h_k) = _loop(inner, c, (x_k, m_k), k, unroll)
        out = [lax.dynamic_update_slice_in_dim(u, v, i * k, axis=0) for u, v in zip(bufs[:-1], acts)]
        return c, out + [lax.dynamic_update_slice_in_dim(bufs[-1], jnp.swapaxes(h_k, 0, 1), i * k, axis=1)], starts

    carry, bufs, starts = lax.fori_loop(0, n, outer, (carry, [buf] + side + rest + [hs], starts))
    acts = jax.tree_util.tree_unflatten(acts_def, bufs[:n_side])
    return carry, (bufs[-1],) + tuple(bufs[n_side:-1]), acts, starts


def _sub_chunk(k: int) -> int:
    """Length of the pieces a block of ``k`` steps is differentiated in."""
    if k <= 2 * DEFAULT_CHUNK:
        return k
    best = max(d for d in range(1, DEFAULT_CHUNK + 1) if k % d == 0)
    return best if 2 * best >= DEFAULT_CHUNK else k  # no good divisor: the block at once

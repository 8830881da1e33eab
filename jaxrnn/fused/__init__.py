"""Fast unrolling of the built-in cells (LSTM, GRU, Elman RNN) with a hand-written derivative.

:func:`jaxrnn.unroll` calls :func:`scan` for every cell made by ``jr.lstm``, ``jr.gru``
or ``jr.rnn`` (same result as the generic ``lax.scan`` of ``cell.step`` to float
tolerance); other cells, mixed dtypes and empty arrays take the generic path.

Why: differentiating ``lax.scan(cell.step)`` automatically keeps every intermediate of
every step, adds a rank-``B`` update of ``dW_h`` inside the backward loop, and keeps the
hoisted input projection ``x W_x + b`` (``G H`` numbers per step) alive. Here the
recurrence is a :func:`jax.custom_jvp` function whose tangent is written by hand:

* Time is cut into chunks of ``K`` steps (the ``chunk`` of the platform's row of
  :data:`PLATFORM_CONFIG`, chosen when the call is traced: 8 on the CPU; the GPU row is
  not measured yet and equals the CPU row). With ``remat=None`` the
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
  of a chunk (``tangent_unroll`` steps per iteration, from the same table: 2 on the
  CPU, see :data:`TANGENT_UNROLL`), then accumulates ``[dW_x; dW_h] = [x, h_prev]^T dz`` and ``db = sum dz``
  as one product per chunk. The per-step coefficients (``i (1 - i)``...) are computed
  for the whole chunk at once, so the backward step is one product and one fused
  elementwise pass. Forward mode (``jax.jvp``, ``jax.jacfwd``) and ``jax.vmap`` keep
  working, because the rule is an ordinary JVP.
* What the backward pass keeps (``remat`` of :func:`jaxrnn.unroll`):

  =============  ==============================================  ====================
  ``remat``      kept per step                                   recomputed
  =============  ==============================================  ====================
  ``None``       the carry and the gate activations             nothing
                 (LSTM ``h, c, i, f, g, o``: 6 H numbers)
  ``"step"``     the output ``h`` only                           the gates, as one
                                                                 product per chunk,
                                                                 and the LSTM's ``c``
  ``k``/"sqrt"   the carry at the start of each block of ``k``   each block's forward
                 steps (``k`` about ``sqrt(T)`` for "sqrt")      scan
  =============  ==============================================  ====================

  With ``remat="step"`` the LSTM's ``c_t = f_t c_{t-1} + i_t g_t`` is rebuilt per chunk
  from the gates and the chunk's first ``c`` by an elementwise recurrence. With
  ``remat=None`` the in-place forward writes every ``c_t`` to a ``(T, B, H)`` buffer
  instead: ``H`` more numbers per step, but the backward pass then reads ``c`` instead of
  rebuilding it, and the rebuild (an elementwise chain over the chunk that XLA fuses
  into every later step's consumer, ``O(K^2)`` work per chunk) leaves the backward pass.
  The recomputation lives inside :func:`jax.checkpoint` around each chunk of the tangent,
  so only the listed arrays cross from the forward to the backward pass. For the float32
  LSTM (B=32, I=64, H=256) training step this keeps 3.2 / 0.6 carried states per step
  for ``None`` / ``"step"`` with a loss on the final state, against 6.1 for a plain
  ``lax.scan``; the target is at most 4 for ``None``
  (``benchmarks/results/bptt_memory.md``).

What bounds the speed on CPU: the matrix products, the per-step ones above all (``h W_h``
and, in the backward loop, ``dz W_h^T``), which XLA:CPU already spreads over the
available cores. Everything else is arranged so that it leaves the loop: the input and
weight-gradient products run once per chunk, the elementwise work per step is one fused
pass. For the LSTM gradient at B=32, T=64, I=64, H=256 the products timed on their own
(``benchmarks/lstm_passes.py``) take 26.9 ms on the 2-core development machine and the
whole gradient 28.5 ms; the backward loop's ``(B, 4H) @ (4H, H)`` runs at 115 GFLOP/s
against 178 for the forward loop's ``(B, H) @ (H, 4H)``. The measurements behind these
choices, and the restructurings that were tried and dropped, are in the documentation's
performance notes (``docs/performance.md``).

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

import math
from typing import Any

import jax
import jax.numpy as jnp

from jaxrnn.cells import Cell
from jaxrnn.fused.jvp import _recurrence
from jaxrnn.fused.maths import _OPS
from jaxrnn.fused.scans import (
    DEFAULT_CHUNK, PLATFORM_CONFIG, STATIC_STEPS, TANGENT_UNROLL, current_platform, platform_config,
)

Array = jax.Array

__all__ = ["scan", "applies", "chunk_length", "platform_config", "current_platform", "PLATFORM_CONFIG",
           "DEFAULT_CHUNK", "STATIC_STEPS", "TANGENT_UNROLL"]


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
    else ``chunk`` (the sequence is then padded with masked steps); ``chunk`` defaults
    to the ``"chunk"`` of :func:`platform_config` for the current platform. For an int block
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
    chunk = platform_config()["chunk"] if chunk is None else chunk
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
      unroll: ``lax.scan`` unroll of the per-step loops (the backward loop takes at
        least the platform's ``tangent_unroll``, see :data:`PLATFORM_CONFIG`).
      remat: ``None``, ``"step"``, ``"sqrt"`` or an int block length (see the module
        docstring for what each keeps).

    Returns:
      ``(carry, hs)``: the final carry and ``hs: (T, B, H)`` (``(T, H)`` unbatched), the
      outputs ``h_t``, zero where ``mask`` is False.
    """
    dtypes = sorted({str(jnp.result_type(v)) for v in jax.tree_util.tree_leaves((params, carry, xs_tm))})
    if len(dtypes) != 1:
        raise TypeError(
            f"fused.scan needs params, inputs and carry of one floating dtype, got {', '.join(dtypes)} "
            "(jr.unroll takes the generic path for mixed dtypes)"
        )
    kind = cell.kind
    ops = _OPS[kind]
    steps = xs_tm.shape[0]
    unbatched = xs_tm.ndim == 2
    parts = tuple(carry) if ops.n_carry == 2 else (carry,)
    if unbatched:
        xs_tm = xs_tm[:, None]
        parts = tuple(p[None] for p in parts)
        mask = None if mask is None else mask[:, None]
    # Chunk length and backward unroll of the platform the call is traced for.
    plat = platform_config(current_platform(xs_tm, *jax.tree_util.tree_leaves((params, carry))))
    k = chunk_length(steps, remat, plat["chunk"])
    save = "acts" if remat is None else ("carry" if remat == "step" else "block")
    m = mask
    pad = -steps % k
    if pad:
        xs_tm = jnp.concatenate([xs_tm, jnp.zeros((pad,) + xs_tm.shape[1:], xs_tm.dtype)], axis=0)
        valid = jnp.ones((steps, xs_tm.shape[1]), bool) if m is None else m
        m = jnp.concatenate([valid, jnp.zeros((pad, xs_tm.shape[1]), bool)], axis=0)
    cfg = (k, unroll, save, max(unroll, plat["tangent_unroll"]))
    new, hs = _recurrence(kind, cfg, dict(params), xs_tm, m, parts)
    if pad:
        hs = hs[:steps]
    if mask is not None:
        hs = jnp.where(mask[..., None], hs, jnp.zeros((), hs.dtype))
    if unbatched:
        new = tuple(p[0] for p in new)
        hs = hs[:, 0]
    return (new if ops.n_carry == 2 else new[0]), hs

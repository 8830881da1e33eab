"""The four shapes of a recurrent network, as pure functions over a cell.

::

    many-to-one        x1 x2 x3 x4          one output per row, read at the row's last
                        |  |  |  |          valid step (sequence classification)
                       h1-h2-h3-h4 -> out

    many-to-many       x1 x2 x3 x4          one output per input step (tagging)
                       h1-h2-h3-h4
                        |  |  |  |
                       o1 o2 o3 o4

    one-to-many        x0 -> h1-h2-h3-h4    one input, then a fixed input or the previous
                              |  |  |  |    prediction fed back (generation)
                             o1 o2 o3 o4

    encoder-decoder    x1 x2 x3 -> h ->  d1-d2-d3   encode the whole input, decode from
                                         |  |  |    the final carry (seq2seq)
                                         o1 o2 o3

``readout`` and ``embed_fn`` arguments are plain functions; close over their
parameters (gradients flow through closures as usual)::

    head = jr.layers.affine(out_size=10)
    carry, logits = jr.sequence.many_to_one(
        cell, p["rnn"], xs, lengths=lengths, readout=lambda y: head.apply(p["head"], y))

Decoding with feedback is a ``lax.scan`` over ``cell.apply`` for a fixed number of
steps, so every function here can be used inside ``jax.jit`` and ``jax.grad``.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from jaxrnn._checks import check_floating, check_integer, check_rank, concrete_values, shape_str
from jaxrnn.cells import check_cell
from jaxrnn.unroll import Bidirectional, Stack
from jaxrnn.unroll import unroll as _unroll  # `unroll` is also a keyword argument below

Array = jax.Array

__all__ = ["last_valid", "many_to_one", "many_to_many", "one_to_many", "encoder_decoder"]

_FEEDBACKS = ("argmax", "output")


# --------------------------------------------------------------------------- helpers


def _pick(ys_tm: Array, idx: Array) -> Array:
    """``ys_tm[idx[b], b]`` for a time-major ``ys_tm`` of shape ``(T, *batch, H)``."""
    idx = jnp.asarray(idx, jnp.int32)
    gathered = jnp.take_along_axis(ys_tm, idx[None, ..., None], axis=0)
    return gathered[0]


def _time_major(ys: Array, time_major: bool) -> Array:
    return ys if (time_major or ys.ndim == 2) else jnp.swapaxes(ys, 0, 1)


def last_valid(ys: Array, lengths: Array | None = None, *, time_major: bool = False) -> Array:
    """The output at each row's last valid step: ``out[b] = ys[b, lengths[b] - 1]``.

    Args:
      ys: ``(batch, time, H)`` (``(time, batch, H)`` with ``time_major=True``), or
        ``(time, H)`` for one unbatched sequence.
      lengths: integer ``(batch,)`` (a scalar when unbatched); ``None`` means every row
        is full length, so the last step is taken.
      time_major: layout of ``ys``.

    Returns:
      ``(batch, H)`` (``(H,)`` unbatched). Rows with ``lengths[b] == 0`` give zeros.

    Example::

      >>> import jax.numpy as jnp, jaxrnn as jr
      >>> ys = jnp.arange(12.0).reshape(2, 3, 2)
      >>> jr.sequence.last_valid(ys, jnp.array([3, 1]))
      Array([[4., 5.],
             [6., 7.]], dtype=float32)
    """
    check_rank("ys", ys, (2, 3), "((batch, time, H), (time, batch, H) with time_major=True, or (time, H))")
    ys_tm = _time_major(ys, time_major)
    steps, batch = ys_tm.shape[0], tuple(ys_tm.shape[1:-1])
    if steps == 0:
        raise ValueError(f"ys must have at least one time step, got shape {shape_str(ys.shape)}")
    if lengths is None:
        return ys_tm[-1]
    check_integer("lengths", lengths)
    if tuple(lengths.shape) != batch:
        raise ValueError(
            f"lengths must have shape {shape_str(batch)} (one length per row of ys), got {shape_str(lengths.shape)}"
        )
    values = concrete_values(lengths)
    if values is not None and values.size and (values.min() < 0 or values.max() > steps):
        raise ValueError(
            f"lengths must lie in [0, {steps}] (the time length of ys), got values in [{values.min()}, {values.max()}]"
        )
    out = _pick(ys_tm, jnp.maximum(lengths - 1, 0))
    return jnp.where((lengths > 0)[..., None], out, jnp.zeros_like(out))


def _apply_readout(readout: Callable | None, y: Array, name: str = "readout") -> Array:
    if readout is None:
        return y
    if not callable(readout):
        raise TypeError(f"{name} must be a callable y -> output (or None), got {type(readout).__name__}")
    return readout(y)


def _summary(cell, ys: Array, lengths: Array | None, reverse: bool, time_major: bool) -> Array:
    """The output that has read the whole row: last valid step, or step 0 when reading backwards."""
    last = cell.layers[-1] if isinstance(cell, Stack) else cell
    ys_tm = _time_major(ys, time_major)
    if isinstance(last, Bidirectional):
        hf = last.forward.hidden_size
        fwd = last_valid(ys_tm[..., :hf], lengths, time_major=True)
        return jnp.concatenate([fwd, ys_tm[0, ..., hf:]], axis=-1)
    if reverse:
        return ys_tm[0]  # zero for an empty row: unroll zeroes padded outputs
    return last_valid(ys_tm, lengths, time_major=True)


# --------------------------------------------------------------------------- many-to-one / many-to-many


def many_to_one(
    cell,
    params,
    xs: Array,
    carry=None,
    *,
    lengths: Array | None = None,
    readout: Callable[[Array], Array] | None = None,
    reverse: bool = False,
    time_major: bool = False,
    unroll: int = 1,
    remat: Any = None,
    key: Array | None = None,
    backend: str = "xla",
    scan: str = "auto",
):
    """Many-to-one: read the whole sequence, produce one output per row.

    Equations::

        carry, ys = _unroll(cell, params, xs, carry, lengths=lengths)
        y[b]      = ys[b, lengths[b] - 1]              # the row's last valid step
        out[b]    = readout(y[b])

    The summary is the output that has read the whole row: the last valid step for a
    forward cell or stack, step 0 with ``reverse=True``, and for a bidirectional last
    layer the forward half at the last valid step joined to the backward half at
    step 0.

    Args:
      cell: a :class:`~jaxrnn.cells.Cell`, :class:`~jaxrnn.unroll.Stack` or
        :class:`~jaxrnn.unroll.Bidirectional`.
      params: its parameters.
      xs: ``(batch, time, features)`` (see :func:`jaxrnn.unroll` for other layouts).
      carry: the initial carry, ``None`` for zeros.
      lengths: integer ``(batch,)``, the number of valid steps per row.
      readout: ``readout(y) -> out`` applied to the summary ``(batch, H)``; ``None``
        returns the summary itself.
      reverse, time_major, unroll, remat, key, backend, scan: as in :func:`jaxrnn.unroll`
        (``backend="cudnn"`` / ``"auto"``: an LSTM or LSTM stack through cuDNN on a CUDA
        GPU, see :mod:`jaxrnn.cudnn`).

    Returns:
      ``(carry, out)``: the final carry and ``readout(y)`` of shape ``(batch, ...)``.

    Example::

      >>> import jax, jax.numpy as jnp, jaxrnn as jr
      >>> cell, head = jr.gru(8), jr.layers.affine(3)
      >>> p = cell.init(jax.random.key(0), 4)
      >>> hp = head.init(jax.random.key(1), 8)
      >>> _, logits = jr.sequence.many_to_one(cell, p, jnp.ones((2, 5, 4)),
      ...     lengths=jnp.array([5, 2]), readout=lambda y: head.apply(hp, y))
      >>> logits.shape
      (2, 3)
    """
    carry, ys = _unroll(
        cell, params, xs, carry, lengths=lengths, reverse=reverse, time_major=time_major,
        unroll=unroll, remat=remat, key=key, backend=backend, scan=scan,
    )
    return carry, _apply_readout(readout, _summary(cell, ys, lengths, reverse, time_major))


def many_to_many(
    cell,
    params,
    xs: Array,
    carry=None,
    *,
    lengths: Array | None = None,
    readout: Callable[[Array], Array] | None = None,
    reverse: bool = False,
    time_major: bool = False,
    unroll: int = 1,
    remat: Any = None,
    key: Array | None = None,
    backend: str = "xla",
    scan: str = "auto",
):
    """Many-to-many, synchronous: one output per input step (tagging).

    Equations::

        carry, ys = _unroll(cell, params, xs, carry, lengths=lengths)
        out[b, t] = readout(ys[b, t])   if t < lengths[b]   else 0

    Args:
      cell, params, xs, carry, lengths, reverse, time_major, unroll, remat, key, backend, scan: as in
        :func:`jaxrnn.unroll`. A :class:`~jaxrnn.unroll.Bidirectional` cell (or a stack
        of them) lets each output see the whole row.
      readout: ``readout(ys) -> outs``, applied to all steps at once, so it must accept
        any leading dimensions (``jr.layers.affine`` does); ``None`` returns ``ys``.

    Returns:
      ``(carry, outs)``: the final carry and ``(batch, time, ...)`` outputs, zero at
      padded steps (mask the loss with ``lengths`` too).

    Example::

      >>> import jax, jax.numpy as jnp, jaxrnn as jr
      >>> cell, head = jr.bidirectional(jr.lstm(8)), jr.layers.affine(5)
      >>> p = cell.init(jax.random.key(0), 4)
      >>> hp = head.init(jax.random.key(1), 16)
      >>> _, logits = jr.sequence.many_to_many(cell, p, jnp.ones((2, 6, 4)),
      ...     readout=lambda ys: head.apply(hp, ys))
      >>> logits.shape
      (2, 6, 5)
    """
    carry, ys = _unroll(
        cell, params, xs, carry, lengths=lengths, reverse=reverse, time_major=time_major,
        unroll=unroll, remat=remat, key=key, backend=backend, scan=scan,
    )
    outs = _apply_readout(readout, ys)
    if lengths is not None and readout is not None:
        outs_tm = _time_major(outs, time_major)
        steps = outs_tm.shape[0]
        mask = jnp.arange(steps).reshape((steps,) + (1,) * lengths.ndim) < lengths
        mask = mask.reshape(mask.shape + (1,) * (outs_tm.ndim - mask.ndim))
        outs_tm = jnp.where(mask, outs_tm, jnp.zeros_like(outs_tm))
        outs = _time_major(outs_tm, time_major)
    return carry, outs


# --------------------------------------------------------------------------- one-to-many


def _check_decoder(cell, name: str) -> None:
    if isinstance(cell, Bidirectional):
        raise TypeError(
            f"{name} must step one time step at a time; a Bidirectional layer reads the "
            "future (use a cell or a Stack of cells)"
        )
    if isinstance(cell, Stack):
        for i, layer in enumerate(cell.layers):
            if isinstance(layer, Bidirectional):
                raise TypeError(
                    f"{name} must step one time step at a time; layer {i} of the Stack is a "
                    f"{type(layer).__name__}, which reads the future (use plain cells)"
                )
        return
    check_cell(cell, name)


def _is_static_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def one_to_many(
    cell,
    params,
    x0: Array,
    num_steps: int,
    carry=None,
    *,
    readout: Callable[[Array], Array] | None = None,
    feedback: str | Callable[[Array], Array] | None = None,
    embed_fn: Callable[[Array], Array] | None = None,
    next_input: Array | None = None,
    targets: Array | None = None,
    teacher_forcing: float | Array = 1.0,
    key: Array | None = None,
):
    """One-to-many: one input, then ``num_steps - 1`` more steps fed by a fixed input or
    by the previous prediction.

    Equations (``t = 0 .. num_steps - 1``)::

        x_0            = x0
        carry, y_t     = cell.apply(params, carry, x_t)
        out_t          = readout(y_t)
        p_t            = argmax(out_t)  | out_t  | feedback(out_t)   # "argmax" | "output" | callable
        x_{t+1}        = next_input                                  # feedback=None
                       = embed_fn(p_t)                               # free running
                       = embed_fn(targets[:, t])                     # teacher forcing

    With ``targets`` and ``teacher_forcing = r < 1`` each row flips a coin per step
    (scheduled sampling, Bengio et al., 2015): with ``keys = jax.random.split(key,
    num_steps)``, ``m_t = jax.random.bernoulli(keys[t], r, (batch,))`` and
    ``x_{t+1} = embed_fn(where(m_t, targets[:, t], p_t))``. ``r = 0`` runs free.

    When the inputs do not depend on the outputs (``feedback=None``, or full teacher
    forcing with a Python ``teacher_forcing == 1``) the whole input sequence is known up
    front and one :func:`jaxrnn.unroll` runs it (the input projection is hoisted out of
    the loop); otherwise a ``lax.scan`` over ``cell.apply`` feeds each prediction back.

    Args:
      cell: a :class:`~jaxrnn.cells.Cell` or a :class:`~jaxrnn.unroll.Stack` of cells
        (a bidirectional layer would read the future and is rejected).
      params: its parameters.
      x0: the first input, ``(batch, input_size)`` or ``(input_size,)`` unbatched.
      num_steps: the number of steps (and outputs), a positive Python int.
      carry: the initial carry (``None``: zeros), e.g. an encoder's final carry.
      readout: ``readout(y_t) -> out_t`` (``None``: identity). Under full teacher
        forcing or ``feedback=None`` it is applied to all steps at once, so it must
        accept any leading dimensions.
      feedback: ``None`` (steps after the first read ``next_input``), ``"argmax"``
        (greedy decoding over a vocabulary), ``"output"`` (feed back a continuous
        prediction) or a callable ``out_t -> p_t``.
      embed_fn: maps predictions ``p_t`` (and ``targets[:, t]``) to inputs, over any
        leading dimensions. Default: one-hot of width ``input_size`` for ``"argmax"``,
        identity otherwise. Use e.g. ``lambda ids: emb.apply(emb_params, ids)``.
      next_input: with ``feedback=None``, the input of steps ``1 ..``:
        ``(input_size,)`` or ``(batch, input_size)``; default zeros.
      targets: ``(batch, num_steps, ...)``, the values the outputs are trained towards
        (token ids for ``"argmax"``); ``targets[:, t]`` is the teacher input of step
        ``t + 1`` (so ``targets[:, -1]`` is never read). ``None``: no teacher forcing.
      teacher_forcing: the probability ``r`` in ``[0, 1]`` of feeding the target instead
        of the prediction (a Python float, or a traced scalar for annealing under
        ``jit``).
      key: PRNG key for the coin flips; needed when ``r`` is not exactly 0 or 1.

    Returns:
      ``(carry, outs)``: the final carry and ``outs`` of shape ``(batch, num_steps, ...)``.

    Example (count upwards from a digit, greedy decoding)::

      >>> import jax, jax.numpy as jnp, jaxrnn as jr
      >>> cell, head = jr.gru(16), jr.layers.affine(10)
      >>> p, hp = cell.init(jax.random.key(0), 10), head.init(jax.random.key(1), 16)
      >>> x0 = jax.nn.one_hot(jnp.array([3, 7]), 10)
      >>> _, logits = jr.sequence.one_to_many(cell, p, x0, 4,
      ...     readout=lambda y: head.apply(hp, y), feedback="argmax")
      >>> logits.shape
      (2, 4, 10)
    """
    _check_decoder(cell, "cell")
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive Python int, got {num_steps!r}")
    check_rank("x0", x0, (1, 2), "((batch, input_size) or (input_size,) unbatched)")
    check_floating("x0", x0)
    if x0.ndim == 1:
        if targets is not None:
            check_rank("targets", targets, tuple(range(1, 8)), "(num_steps, ...) for an unbatched x0")
            targets = targets[None]
        if next_input is not None and next_input.ndim == 2:
            raise ValueError(
                f"next_input must have shape {shape_str(x0.shape)} for an unbatched x0, got {shape_str(next_input.shape)}"
            )
        carry_b = None if carry is None else jax.tree_util.tree_map(lambda a: a[None], carry)
        carry_b, outs = one_to_many(
            cell, params, x0[None], num_steps, carry_b, readout=readout, feedback=feedback,
            embed_fn=embed_fn, next_input=next_input, targets=targets,
            teacher_forcing=teacher_forcing, key=key,
        )
        return jax.tree_util.tree_map(lambda a: a[0], carry_b), outs[0]

    batch, input_size = x0.shape
    if feedback is not None and feedback not in _FEEDBACKS and not callable(feedback):
        raise ValueError(f"feedback must be None, 'argmax', 'output' or a callable, got {feedback!r}")
    if embed_fn is not None and not callable(embed_fn):
        raise TypeError(f"embed_fn must be a callable or None, got {type(embed_fn).__name__}")
    if carry is None:
        carry = cell.initial_carry(batch, x0.dtype)

    if feedback is None:
        if targets is not None:
            raise ValueError("targets (teacher forcing) need a feedback ('argmax', 'output' or a callable); got feedback=None")
        return _fixed_input(cell, params, x0, num_steps, carry, readout, next_input)
    if next_input is not None:
        raise ValueError("next_input is only read with feedback=None; with a feedback the next input comes from the prediction")
    if embed_fn is None:
        if feedback == "argmax":
            embed_fn = lambda ids: jax.nn.one_hot(ids, input_size, dtype=x0.dtype)  # noqa: E731
        else:
            embed_fn = lambda p: p  # noqa: E731
    embed = _checked_embed(embed_fn, x0, num_steps)

    ratio = teacher_forcing
    if _is_static_number(ratio):
        if not 0.0 <= float(ratio) <= 1.0:
            raise ValueError(f"teacher_forcing must lie in [0, 1], got {ratio}")
    else:
        check_floating("teacher_forcing", ratio)
        if jnp.ndim(ratio) != 0:
            raise ValueError(f"teacher_forcing must be a scalar, got shape {shape_str(jnp.shape(ratio))}")
    if targets is not None:
        _check_targets(targets, batch, num_steps, feedback)
        if _is_static_number(ratio) and float(ratio) == 0.0:
            targets = None  # free running; the targets are not read
    if targets is not None and _is_static_number(ratio) and float(ratio) == 1.0:
        return _teacher_forced(cell, params, x0, num_steps, carry, readout, embed, targets)
    if targets is not None and key is None:
        raise ValueError("key is required for teacher_forcing strictly between 0 and 1 (scheduled sampling), got None")
    return _free_running(cell, params, x0, num_steps, carry, readout, feedback, embed, targets, ratio, key)


def _fixed_input(cell, params, x0: Array, num_steps: int, carry, readout, next_input):
    """``feedback=None``: ``x0``, then ``next_input`` (default zeros): one unroll."""
    batch, input_size = x0.shape
    if next_input is None:
        rest = jnp.zeros((batch, num_steps - 1, input_size), x0.dtype)
    else:
        check_floating("next_input", next_input)
        if next_input.shape not in ((input_size,), (batch, input_size)):
            raise ValueError(
                f"next_input must have shape ({input_size},) or ({batch}, {input_size}) to match x0, "
                f"got {shape_str(next_input.shape)}"
            )
        ni = next_input.astype(x0.dtype)
        ni = ni if ni.ndim == 1 else ni[:, None, :]
        rest = jnp.broadcast_to(ni, (batch, num_steps - 1, input_size))
    xs = jnp.concatenate([x0[:, None, :], rest], axis=1)
    carry, ys = _unroll(cell, params, xs, carry)
    return carry, _apply_readout(readout, ys)


def _checked_embed(embed_fn: Callable, x0: Array, num_steps: int) -> Callable:
    """``embed(p, what)``: ``embed_fn(p)`` checked to give inputs of ``x0``'s size, for one
    step (``what="step"``) or for the whole teacher sequence (``"sequence"``)."""
    batch, input_size = x0.shape

    def embed(p, what):
        x = embed_fn(p)
        if not hasattr(x, "shape") or tuple(x.shape) != tuple(p.shape[:1 if what == "step" else 2]) + (input_size,):
            want = f"({batch}, {input_size})" if what == "step" else f"({batch}, {num_steps - 1}, {input_size})"
            got = shape_str(x.shape) if hasattr(x, "shape") else type(x).__name__
            raise ValueError(
                f"embed_fn must map predictions to inputs of x0's size: expected {want}, got {got}"
            )
        return x.astype(x0.dtype)

    return embed


def _teacher_forced(cell, params, x0: Array, num_steps: int, carry, readout, embed, targets):
    """Full teacher forcing: the inputs are known up front, one unroll."""
    rest = embed(targets[:, : num_steps - 1], "sequence")
    xs = jnp.concatenate([x0[:, None, :], rest], axis=1)
    carry, ys = _unroll(cell, params, xs, carry)
    return carry, _apply_readout(readout, ys)


def _free_running(cell, params, x0: Array, num_steps: int, carry, readout, feedback, embed, targets, ratio, key):
    """Each prediction fed back (mixed with the targets at rate ``ratio``): a ``lax.scan``
    over ``cell.apply``."""
    batch = x0.shape[0]

    def predict(out):
        if feedback == "argmax":
            return jnp.argmax(out, axis=-1)
        if feedback == "output":
            return out
        return feedback(out)

    tgt_tm = None if targets is None else jnp.swapaxes(targets, 0, 1)
    keys = None if targets is None else jax.random.split(key, num_steps)

    def body(state, inp):
        c, x = state
        tgt_t, key_t = inp
        c, y = cell.apply(params, c, x)
        out = _apply_readout(readout, y)
        p = predict(out)
        if tgt_t is not None:
            if tgt_t.shape != p.shape:
                raise ValueError(
                    f"targets[:, t] must have the shape of the prediction p_t {shape_str(p.shape)}, "
                    f"got {shape_str(tgt_t.shape)}"
                )
            m = jax.random.bernoulli(key_t, ratio, (batch,))
            m = m.reshape(m.shape + (1,) * (p.ndim - 1))
            p = jnp.where(m, tgt_t.astype(p.dtype), p)
        return (c, embed(p, "step")), out

    (carry, _), outs = jax.lax.scan(body, (carry, x0), (tgt_tm, keys), length=num_steps)
    return carry, jnp.swapaxes(outs, 0, 1)


def _check_targets(targets: Any, batch: int, num_steps: int, feedback) -> None:
    """``targets`` must be ``(batch, num_steps, ...)``; integer ids for ``feedback="argmax"``."""
    check_rank("targets", targets, tuple(range(2, 9)), "(batch, num_steps, ...)")
    if tuple(targets.shape[:2]) != (batch, num_steps):
        raise ValueError(
            f"targets must have shape ({batch}, {num_steps}, ...) (x0's batch and num_steps), "
            f"got {shape_str(targets.shape)}"
        )
    if feedback == "argmax":
        check_integer("targets", targets)
        if targets.ndim != 2:
            raise ValueError(f"targets for feedback='argmax' must be token ids of shape ({batch}, {num_steps}), got {shape_str(targets.shape)}")


# --------------------------------------------------------------------------- encoder-decoder


def encoder_decoder(
    encoder,
    enc_params,
    xs: Array,
    decoder,
    dec_params,
    start: Array,
    num_steps: int,
    *,
    lengths: Array | None = None,
    bridge: Callable[[Any], Any] | None = None,
    readout: Callable[[Array], Array] | None = None,
    feedback: str | Callable[[Array], Array] = "argmax",
    embed_fn: Callable[[Array], Array] | None = None,
    targets: Array | None = None,
    teacher_forcing: float | Array = 1.0,
    key: Array | None = None,
    backend: str = "xla",
):
    """Encoder-decoder: encode the whole input, decode from the encoder's final carry.

    Equations::

        enc_carry, _ = _unroll(encoder, enc_params, xs, lengths=lengths)
        carry_0      = bridge(enc_carry)                      # identity by default
        carry, outs  = one_to_many(decoder, dec_params, start, num_steps, carry_0, ...)

    Greedy decoding: ``feedback="argmax"`` and no ``targets``. Teacher forcing: pass the
    target ids; step ``t + 1`` reads ``embed_fn(targets[:, t])`` (see
    :func:`one_to_many`), and ``teacher_forcing < 1`` with a ``key`` mixes in the
    model's own predictions (scheduled sampling).

    Args:
      encoder: a :class:`~jaxrnn.cells.Cell`, :class:`~jaxrnn.unroll.Stack` or
        :class:`~jaxrnn.unroll.Bidirectional`.
      enc_params: its parameters.
      xs: ``(batch, time, features)`` source sequences.
      decoder: a :class:`~jaxrnn.cells.Cell` or :class:`~jaxrnn.unroll.Stack` of cells.
      dec_params: its parameters.
      start: the first decoder input (e.g. the embedded start token),
        ``(input_size,)`` (shared by all rows) or ``(batch, input_size)``.
      num_steps: the number of decoded steps (a positive Python int).
      lengths: integer ``(batch,)`` valid lengths of the source rows.
      bridge: ``bridge(enc_carry) -> dec_carry``, e.g. to join a bidirectional
        encoder's two carries; ``None`` passes the carry on unchanged (the encoder and
        decoder must then have the same carry structure).
      readout, feedback, embed_fn, targets, teacher_forcing, key: as in
        :func:`one_to_many`.
      backend: how the encoder runs, as in :func:`jaxrnn.unroll` (``"cudnn"`` /
        ``"auto"``: an LSTM encoder through cuDNN on a CUDA GPU); the decoder runs on
        the XLA path, as :func:`one_to_many` runs it.

    Returns:
      ``(carry, outs)``: the decoder's final carry and ``(batch, num_steps, ...)``
      outputs.

    Example (greedy decoding)::

      >>> import jax, jax.numpy as jnp, jaxrnn as jr
      >>> enc, dec, head = jr.gru(16), jr.gru(16), jr.layers.affine(10)
      >>> ep, dp = enc.init(jax.random.key(0), 10), dec.init(jax.random.key(1), 10)
      >>> hp = head.init(jax.random.key(2), 16)
      >>> src = jax.nn.one_hot(jnp.array([[1, 2, 3], [4, 5, 6]]), 10)
      >>> _, logits = jr.sequence.encoder_decoder(enc, ep, src, dec, dp, jnp.zeros(10), 3,
      ...     readout=lambda y: head.apply(hp, y))
      >>> logits.shape
      (2, 3, 10)
    """
    _check_decoder(decoder, "decoder")
    check_rank("xs", xs, (3,), "(batch, time, features)")
    enc_carry, _ = _unroll(encoder, enc_params, xs, lengths=lengths, backend=backend)
    if bridge is not None and not callable(bridge):
        raise TypeError(f"bridge must be a callable enc_carry -> dec_carry or None, got {type(bridge).__name__}")
    carry = enc_carry if bridge is None else bridge(enc_carry)
    check_rank("start", start, (1, 2), "((input_size,) or (batch, input_size))")
    check_floating("start", start)
    batch = xs.shape[0]
    if start.ndim == 1:
        start = jnp.broadcast_to(start, (batch,) + start.shape)
    elif start.shape[0] != batch:
        raise ValueError(f"start must have shape (input_size,) or ({batch}, input_size), got {shape_str(start.shape)}")
    return one_to_many(
        decoder, dec_params, start, num_steps, carry, readout=readout, feedback=feedback,
        embed_fn=embed_fn, targets=targets, teacher_forcing=teacher_forcing, key=key,
    )

"""Full backpropagation through time: one optimizer step per batch of whole sequences.

A training step differentiates the loss of the whole sequence with respect to the
parameters (``jax.grad`` through the ``lax.scan`` of the unroll) and applies an optax
update::

    (loss, carry_L), g = value_and_grad(loss_fn)(params, carry_0, x, y)
    grad_norm = ||g||                       (global norm, before any clipping)
    params, opt_state <- tx.update(g, opt_state, params)

Every step starts from the same initial carry ``state.carry`` (whole sequences are
independent), which the step leaves unchanged. This is the baseline that truncated BPTT
(:mod:`jaxrnn.tbptt`) is measured against: both use the same :class:`TrainState`, the
same ``loss_fn`` and return the same metrics, so the two can be compared line for line.
A TBPTT step over one segment as long as the sequence equals a full-BPTT step.

Activation memory grows linearly with the sequence length (every step's intermediates
are kept for the backward pass); pass ``remat=`` to :func:`jaxrnn.unroll` inside
``loss_fn`` to trade compute for memory.

Example::

  >>> import jax, jax.numpy as jnp, optax, jaxrnn as jr
  >>> cell = jr.rnn(8)
  >>> params = cell.init(jax.random.key(0), input_size=3)
  >>> def loss_fn(params, carry, x, y):
  ...     carry, ys = jr.unroll(cell, params, x, carry)
  ...     return jnp.mean((ys[..., :1] - y) ** 2), carry
  >>> tx = jr.clipped(optax.sgd(0.1), max_norm=1.0)
  >>> state = jr.bptt.init_state(params, tx, cell.initial_carry(4))
  >>> step = jr.bptt.make_step(loss_fn, tx)
  >>> x, y = jnp.ones((4, 20, 3), jnp.float32), jnp.zeros((4, 20, 1), jnp.float32)
  >>> state, metrics = step(state, x, y)
  >>> sorted(metrics), int(state.step)
  (['grad_norm', 'loss'], 1)
"""

from __future__ import annotations

from typing import Any

import optax

from jaxrnn._step import (  # the training core shared with jaxrnn.tbptt
    LossFn,
    Step,
    TrainState,
    _check_state,
    apply_gradients,
    check_fn,
    global_norm,
    init_state,
    input_check,
    value_and_grad,
)

__all__ = ["TrainState", "init_state", "make_step", "Step", "value_and_grad", "apply_gradients", "global_norm"]


def make_step(loss_fn: LossFn, tx: optax.GradientTransformation, *, donate: bool = True, mesh: Any = None) -> Step:
    """A jitted full-BPTT step: ``state, metrics = step(state, x, y)``.

    Args:
      loss_fn: ``loss_fn(params, carry, x, y) -> (loss, carry)``; ``loss`` a floating
        scalar, ``carry`` the final recurrent state (ignored here). ``x`` and ``y`` may
        be arrays or any pytrees (e.g. ``(inputs, lengths)``).
      tx: the optax transformation that ``state.opt_state`` belongs to.
      donate: donate the state's buffers to the new state.
      mesh: a ``jax.sharding.Mesh`` (:func:`jaxrnn.parallel.data_mesh`) to split the
        batch (axis 0 of ``x``, ``y`` and the carry) over, with the parameters and
        optimizer state replicated; ``None``: one device. The batch size must be a
        multiple of the number of devices (else ``ValueError``).

    Returns:
      A :class:`Step` ``step(state, x, y) -> (state, metrics)``. Every call starts from
      ``state.carry`` and leaves it unchanged; ``state.step`` grows by one.
      ``metrics = {"loss", "grad_norm"}`` with the global gradient norm before clipping,
      plus ``"skipped"`` when ``tx`` skips non-finite gradients.
    """
    check_fn(loss_fn, tx)

    def bptt_step(state: TrainState, x: Any, y: Any):
        """Full BPTT over whole sequences ``x`` with targets ``y`` from ``state.carry``."""
        _check_state(state)
        (loss, _), grads = value_and_grad(loss_fn, state.params, state.carry, x, y)
        params, opt_state, metrics = apply_gradients(tx, state.params, state.opt_state, grads, loss)
        return TrainState(params, opt_state, state.carry, state.step + 1), metrics

    return Step(bptt_step, donate=donate, name="bptt_step", mesh=mesh, check_inputs=input_check(loss_fn))


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

import warnings
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxrnn import optim, parallel
from jaxrnn._checks import shape_str

__all__ = ["TrainState", "init_state", "make_step", "Step"]

LossFn = Callable[..., tuple[jax.Array, Any]]


class TrainState(NamedTuple):
    """Everything a training loop carries from one step to the next.

    Attributes:
      params: the model parameters (any pytree).
      opt_state: the optax state of ``tx``.
      carry: the recurrent state. For TBPTT the forward state at the end of the last
        segment (the next segment starts from it); for full BPTT the initial carry used
        for every batch.
      step: int32 scalar, the number of steps taken (skipped ones included).
    """

    params: Any
    opt_state: Any
    carry: Any
    step: jax.Array


def _copy(tree: Any) -> Any:
    # Fresh buffers: the steps donate the state, which must not delete the caller's arrays.
    return jax.tree_util.tree_map(lambda a: jnp.array(a, copy=True), tree)


def init_state(params: Any, tx: optax.GradientTransformation, carry: Any = None) -> TrainState:
    """A fresh :class:`TrainState`: ``TrainState(params, tx.init(params), carry, step=0)``.

    ``params`` and ``carry`` are copied into new buffers, because the jitted steps donate
    the state they are given: the caller's arrays stay valid.

    Args:
      params: the model parameters.
      tx: an optax transformation (e.g. ``jr.clipped(optax.adam(1e-3), 5.0)``).
      carry: the initial recurrent state (e.g. ``cell.initial_carry(batch_size)``), or
        ``None`` when ``loss_fn`` makes its own.

    Returns:
      A :class:`TrainState`.
    """
    optim._check_tx("tx", tx)
    params = _copy(params)
    return TrainState(params, tx.init(params), _copy(carry), jnp.zeros((), jnp.int32))


def _check_loss_out(out: Any) -> tuple[jax.Array, Any]:
    if not isinstance(out, tuple) or len(out) != 2:
        raise TypeError(
            f"loss_fn(params, carry, x, y) must return a pair (loss, carry), got {type(out).__name__}"
            + (f" of length {len(out)}" if isinstance(out, tuple) else "")
        )
    loss, carry = out
    if not hasattr(loss, "shape") or loss.shape != () or not jnp.issubdtype(loss.dtype, jnp.floating):
        got = f"shape {shape_str(loss.shape)} dtype {loss.dtype}" if hasattr(loss, "shape") else type(loss).__name__
        raise ValueError(f"loss_fn must return a floating scalar loss as its first output, got {got}")
    return loss, carry


def value_and_grad(loss_fn: LossFn, params: Any, carry: Any, x: Any, y: Any):
    """``((loss, new_carry), grads)`` of ``loss_fn`` with respect to ``params`` only.

    The carry is an input held constant: no gradient flows into it.
    """

    def f(p):
        return _check_loss_out(loss_fn(p, carry, x, y))

    return jax.value_and_grad(f, has_aux=True)(params)


def global_norm(tree: Any) -> jax.Array:
    """``sqrt(Σ_leaves Σ x_i²)``, the norm ``optax.clip_by_global_norm`` clips."""
    leaves = jax.tree_util.tree_leaves(tree)
    if not leaves:
        return jnp.zeros(())
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in leaves))


def apply_gradients(tx: optax.GradientTransformation, params: Any, opt_state: Any, grads: Any, loss: jax.Array):
    """One optax update; returns ``(params, opt_state, metrics)``.

    ``metrics = {"loss", "grad_norm"}`` (the global norm of ``grads``, before any
    clipping in ``tx``), plus ``"skipped"`` (the total number of skipped steps so far)
    when ``tx`` skips non-finite gradients (:func:`jaxrnn.optim.skip_nonfinite`).
    """
    grad_norm = global_norm(grads)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    metrics = {"loss": loss, "grad_norm": grad_norm}
    skipped = optim.skipped_steps(opt_state)
    if skipped is not None:
        metrics["skipped"] = skipped
    return params, opt_state, metrics


class Step:
    """A jitted training step that counts how often it is traced.

    Calling it runs the compiled function; ``trace_count`` is the number of times JAX
    traced it (once per distinct set of input shapes, dtypes and tree structures), so a
    loop that never retraces keeps ``trace_count == 1``. The state argument is donated:
    its buffers are reused for the new state, so do not use a state after passing it in.

    With a ``mesh`` (:func:`jaxrnn.parallel.data_mesh`) the step is data-parallel: every
    call places the batch arguments split along ``batch_axis`` and the state as
    :func:`jaxrnn.parallel.shard_state` does, and the new state keeps those shardings.
    """

    def __init__(self, fn: Callable, *, donate: bool = True, name: str = "step", quiet_donation: bool = False,
                 mesh: Any = None, batch_axis: int = 0):
        self.trace_count = 0
        self._fn = fn
        self._quiet = quiet_donation and donate
        self.mesh, self._batch_axis = (None if mesh is None else parallel._check_mesh(mesh)), batch_axis

        def traced(state, *args, **kwargs):
            self.trace_count += 1
            if self.mesh is not None:
                return parallel.sharded_call(fn, self.mesh, state, args, kwargs, batch_axis)
            return fn(state, *args, **kwargs)

        traced.__name__ = name
        self.jitted = jax.jit(traced, donate_argnums=(0,) if donate else ())
        self.__name__ = name
        self.__doc__ = fn.__doc__

    def __call__(self, state, *args, **kwargs):
        if self.mesh is not None:
            state, args, kwargs = parallel.place_step_inputs(self._fn, self.mesh, state, args, kwargs, self._batch_axis)
        if not self._quiet:
            return self.jitted(state, *args, **kwargs)
        # A state whose buffers change shape on some calls (the filling history of
        # TBPTT(k1, k2)) cannot reuse all donated buffers on those calls; that is expected.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
            return self.jitted(state, *args, **kwargs)

    def unjitted(self, state, *args, **kwargs):
        """The same computation without ``jit`` (for composing into other transforms)."""
        return self._fn(state, *args, **kwargs)


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
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable as loss_fn(params, carry, x, y), got {type(loss_fn).__name__}")
    optim._check_tx("tx", tx)

    def bptt_step(state: TrainState, x: Any, y: Any):
        """Full BPTT over whole sequences ``x`` with targets ``y`` from ``state.carry``."""
        _check_state(state)
        (loss, _), grads = value_and_grad(loss_fn, state.params, state.carry, x, y)
        params, opt_state, metrics = apply_gradients(tx, state.params, state.opt_state, grads, loss)
        return TrainState(params, opt_state, state.carry, state.step + 1), metrics

    return Step(bptt_step, donate=donate, name="bptt_step", mesh=mesh)


def _check_state(state: Any) -> None:
    if not (isinstance(state, tuple) and all(hasattr(state, f) for f in ("params", "opt_state", "carry", "step"))):
        raise TypeError(
            f"state must be a TrainState (from jr.tbptt.init_state / jr.bptt.init_state), got {type(state).__name__}"
        )

"""The training core shared by :mod:`jaxrnn.bptt` and :mod:`jaxrnn.tbptt`.

Both kinds of step carry the same :class:`TrainState` and do the same update::

    (loss, carry'), g = value_and_grad(loss_fn)(params, carry, x, y)    # params only
    grad_norm = ||g||                      (global norm, before any clipping)
    params, opt_state <- tx.update(g, opt_state, params)

and return the same metrics, so the two can be compared line for line. This module
holds that update (:func:`value_and_grad`, :func:`apply_gradients`,
:func:`global_norm`), the state (:class:`TrainState`, :func:`init_state`), the jitted
:class:`Step` wrapper and the checks they share. What differs, the carry (full BPTT
keeps ``state.carry`` fixed; TBPTT passes the segment's final carry on through
``lax.stop_gradient``), lives in the two step modules, which re-export these names:
``jr.bptt.TrainState`` and ``jr.tbptt.TrainState`` are this class.

:class:`Step` also guards the host boundary: before the compiled step runs it calls
``loss_fn.check_inputs(x, y)`` when the loss function has one (``jr.lm.loss_fn`` checks
that token ids lie in the vocabulary), and a state whose buffers were donated to an
earlier call is reported by name instead of XLA's "buffer has been deleted or donated".
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxrnn import optim, parallel
from jaxrnn._checks import shape_str

__all__ = ["TrainState", "init_state", "Step", "value_and_grad", "apply_gradients", "global_norm", "LossFn"]

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
    its buffers are reused for the new state, so do not use a state after passing it in
    (doing so raises a ``ValueError`` that says so; ``donate=False`` keeps it usable).
    ``check_inputs(x, y)``, if given, runs on the batch before the compiled step (see
    :func:`input_check`).

    With a ``mesh`` (:func:`jaxrnn.parallel.data_mesh`) the step is data-parallel: every
    call places the batch arguments split along ``batch_axis`` and the state as
    :func:`jaxrnn.parallel.shard_state` does, and the new state keeps those shardings.
    """

    def __init__(self, fn: Callable, *, donate: bool = True, name: str = "step", quiet_donation: bool = False,
                 mesh: Any = None, batch_axis: int = 0, check_inputs: Callable | None = None):
        self.trace_count = 0
        self._fn = fn
        self.donate = bool(donate)
        self._quiet = quiet_donation and donate
        self._check_inputs = check_inputs
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
        if self._check_inputs is not None:
            x = args[0] if len(args) > 0 else kwargs.get("x", kwargs.get("xs"))
            y = args[1] if len(args) > 1 else kwargs.get("y", kwargs.get("ys"))
            self._check_inputs(x, y)
        counter = getattr(state, "step", None)  # donated with the rest: one cheap look before XLA complains
        if self.donate and getattr(counter, "is_deleted", None) is not None and counter.is_deleted():
            raise self._donated_error(".step")
        try:
            if self.mesh is not None:
                state, args, kwargs = parallel.place_step_inputs(self._fn, self.mesh, state, args, kwargs,
                                                                 self._batch_axis)
            if not self._quiet:
                return self.jitted(state, *args, **kwargs)
            # A state whose buffers change shape on some calls (the filling history of
            # TBPTT(k1, k2)) cannot reuse all donated buffers on those calls; that is expected.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
                return self.jitted(state, *args, **kwargs)
        except (ValueError, RuntimeError) as e:
            if "deleted" not in str(e) and "donated" not in str(e):
                raise
            where = _deleted_leaf(state)
            if where is None:
                raise
            raise self._donated_error(where) from None

    def _donated_error(self, where: str) -> ValueError:
        return ValueError(
            f"state was already passed to a step that donates its buffers (the array at state{where} has been "
            f"reused for the state that call returned): pass the state the last call returned, "
            f"`state, metrics = {self.__name__}(state, ...)`, or make the step with donate=False to keep "
            "old states usable"
        )

    def unjitted(self, state, *args, **kwargs):
        """The same computation without ``jit`` (for composing into other transforms)."""
        return self._fn(state, *args, **kwargs)


def _check_state(state: Any) -> None:
    if not (isinstance(state, tuple) and all(hasattr(state, f) for f in ("params", "opt_state", "carry", "step"))):
        raise TypeError(
            f"state must be a TrainState (from jr.tbptt.init_state / jr.bptt.init_state), got {type(state).__name__}"
        )


def _deleted_leaf(tree: Any) -> str | None:
    """The path of the first leaf of ``tree`` whose buffer was deleted or donated, else ``None``."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        is_deleted = getattr(leaf, "is_deleted", None)
        if is_deleted is not None and is_deleted():
            return jax.tree_util.keystr(path)
    return None


def check_fn(loss_fn: Any, tx: Any) -> None:
    """The argument checks every ``make_step`` does: a callable ``loss_fn`` and an optax ``tx``."""
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable as loss_fn(params, carry, x, y), got {type(loss_fn).__name__}")
    optim._check_tx("tx", tx)


def input_check(loss_fn: Any) -> Callable | None:
    """The host-side batch check a loss function offers: its ``check_inputs(x, y)``, if any.

    A loss function may carry a ``check_inputs`` attribute, called by every :class:`Step`
    with the batch before the compiled step runs (while the batch is still a host
    array), so bad values (e.g. token ids outside the vocabulary, which a gather inside
    ``jit`` would read silently) raise a ``ValueError`` naming ``x`` or ``y`` instead of
    training on them.
    """
    check = getattr(loss_fn, "check_inputs", None)
    if check is not None and not callable(check):
        raise TypeError(f"loss_fn.check_inputs must be callable as check_inputs(x, y), got {type(check).__name__}")
    return check

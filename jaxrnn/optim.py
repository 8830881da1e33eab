"""Optimizer chains for recurrent networks: global-norm clipping and non-finite skipping.

Recurrent gradients can explode: the Jacobian of ``h_s`` with respect to ``h_t`` is a
product of ``s - t`` step Jacobians, bounded by ``(γ_w γ_h)^(s - t)``, so a single long
dependency can produce a huge gradient. Clipping by the global norm rescales the whole
gradient, keeping its direction::

    g <- g · min(1, max_norm / ||g||),     ||g|| = sqrt(Σ_leaves Σ g_i²)

:func:`clipped` chains that rescaling before any optax optimizer. With
``skip_nonfinite=True`` a step whose gradient holds a NaN or an infinity is skipped
(zero update, optimizer state untouched) and counted, instead of writing NaNs into the
parameters.

Example::

  >>> import jax.numpy as jnp, optax, jaxrnn as jr
  >>> tx = jr.clipped(optax.sgd(1.0), max_norm=1.0)
  >>> params = {"w": jnp.zeros(2)}
  >>> updates, _ = tx.update({"w": jnp.array([3.0, 4.0])}, tx.init(params))
  >>> [round(float(u), 6) for u in updates["w"]]       # norm 5 rescaled to norm 1, then -lr
  [-0.6, -0.8]
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxrnn import _validate

__all__ = ["clipped", "skip_nonfinite", "skipped_steps", "has_skipping"]

# optax.apply_if_finite gives up (and applies the update) after more than this many
# consecutive non-finite gradients; its counter saturates at the int32 maximum, so this
# value means "never give up".
_NEVER = 2**31 - 1


def _check_tx(name: str, tx: Any) -> None:
    if not (hasattr(tx, "init") and hasattr(tx, "update") and callable(tx.init) and callable(tx.update)):
        raise TypeError(f"{name} must be an optax GradientTransformation (with init and update), got {type(tx).__name__}")


def skip_nonfinite(tx: optax.GradientTransformation, max_consecutive: int | None = None) -> optax.GradientTransformation:
    """Wrap ``tx`` so that a gradient holding a NaN or an infinity is skipped and counted.

    A skipped step returns a zero update (the parameters keep their values bit for bit)
    and leaves the inner optimizer state (moments, step count) unchanged. The wrapper is
    :func:`optax.apply_if_finite`; its state counts the skipped steps in
    ``total_notfinite`` (read it with :func:`skipped_steps`).

    Args:
      tx: the optax transformation to protect.
      max_consecutive: after more than this many consecutive non-finite gradients the
        update is applied anyway (optax's ``max_consecutive_errors``). ``None`` (default)
        means never.

    Returns:
      An ``optax.GradientTransformation``.
    """
    _check_tx("tx", tx)
    if max_consecutive is None:
        max_consecutive = _NEVER
    else:
        max_consecutive = _validate.number("max_consecutive", max_consecutive, integer=True, low=0,
                                           note="(or None: never)")
    return optax.apply_if_finite(tx, max_consecutive_errors=max_consecutive)


def clipped(
    optimizer: optax.GradientTransformation,
    max_norm: float,
    *,
    skip_nonfinite: bool = False,
) -> optax.GradientTransformation:
    """``optax.chain(optax.clip_by_global_norm(max_norm), optimizer)``.

    The gradient is rescaled to ``g · min(1, max_norm / ||g||)`` before ``optimizer`` sees
    it, so with ``optax.sgd(1.0)`` the update's global norm is exactly
    ``min(||g||, max_norm)``.

    Args:
      optimizer: any optax transformation (``optax.adam(1e-3)``, ``optax.sgd(1.0)``...).
      max_norm: the largest global gradient norm let through; a positive number.
      skip_nonfinite: wrap the chain with :func:`skip_nonfinite`: a step whose gradient
        is not finite changes nothing and is counted (``skipped_steps(opt_state)``; the
        steps of :mod:`jaxrnn.tbptt` / :mod:`jaxrnn.bptt` report it as
        ``metrics["skipped"]``).

    Returns:
      An ``optax.GradientTransformation``.

    Example::

      >>> import optax, jaxrnn as jr
      >>> tx = jr.clipped(optax.adam(1e-3), max_norm=5.0)
    """
    _check_tx("optimizer", optimizer)
    max_norm = _validate.positive("max_norm", max_norm)
    tx = optax.chain(optax.clip_by_global_norm(max_norm), optimizer)
    if skip_nonfinite:
        tx = _skip(tx)
    return tx


_skip = skip_nonfinite  # `clipped` has an argument of the same name


def _is_finite_state(x: Any) -> bool:
    return isinstance(x, optax.ApplyIfFiniteState)


def skipped_steps(opt_state: Any) -> jax.Array | None:
    """The number of skipped (non-finite) steps recorded in ``opt_state``.

    Looks for the state of :func:`skip_nonfinite` / ``optax.apply_if_finite`` anywhere in
    the optimizer state tree and returns its ``total_notfinite`` (an int32 scalar; the
    sum if there are several). Returns ``None`` when ``opt_state`` has no such state.
    Works inside ``jit``.
    """
    found = [
        s.total_notfinite
        for s in jax.tree_util.tree_leaves(opt_state, is_leaf=_is_finite_state)
        if _is_finite_state(s)
    ]
    if not found:
        return None
    total = found[0]
    for f in found[1:]:
        total = total + f
    return jnp.asarray(total)


def has_skipping(opt_state: Any) -> bool:
    """True when ``opt_state`` contains the state of :func:`skip_nonfinite`."""
    return any(_is_finite_state(s) for s in jax.tree_util.tree_leaves(opt_state, is_leaf=_is_finite_state))

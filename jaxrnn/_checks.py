"""Trace-time argument checks shared by the modules of jaxrnn.

Every check raises a ``ValueError`` (bad shape or value) or ``TypeError`` (bad kind of
object) whose message names the argument, what was expected and what was given. The
checks read only static information (shapes, dtypes, tree structure), so they run once
at trace time under ``jax.jit`` and cost nothing afterwards.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def shape_str(shape) -> str:
    return "(" + ", ".join(str(int(d)) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def check_array(name: str, x: Any) -> None:
    """Raise ``TypeError`` if ``x`` is not an array (or array-like scalar)."""
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"{name} must be an array, got {type(x).__name__}")


def check_rank(name: str, x: Any, ranks: tuple[int, ...], what: str) -> None:
    check_array(name, x)
    if x.ndim not in ranks:
        want = " or ".join(str(r) for r in ranks)
        raise ValueError(
            f"{name} must have rank {want} {what}, got shape {shape_str(x.shape)} (rank {x.ndim})"
        )


def check_floating(name: str, x: Any) -> None:
    check_array(name, x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{name} must have a floating dtype, got {x.dtype}")


def check_integer(name: str, x: Any) -> None:
    check_array(name, x)
    if not jnp.issubdtype(x.dtype, jnp.integer):
        raise TypeError(f"{name} must have an integer dtype, got {x.dtype}")


def is_concrete(x: Any) -> bool:
    """True when ``x`` holds known values (not a tracer inside ``jit``/``grad``/``vmap``)."""
    return not isinstance(x, jax.core.Tracer)


def concrete_values(x: Any):
    """``np.asarray(x)`` when the values are known at trace time, else ``None``."""
    if not is_concrete(x):
        return None
    try:
        return np.asarray(x)
    except Exception:  # pragma: no cover - e.g. a deleted buffer
        return None


def as_key(key: Any, name: str = "key") -> jax.Array:
    """A PRNG key from ``key``: an int seed, a typed key, or legacy ``uint32[2]`` key data.

    Raises ``TypeError`` naming ``name`` for anything else.
    """
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        return jax.random.key(int(key))
    if hasattr(key, "dtype") and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    if hasattr(key, "dtype") and key.dtype == jnp.uint32 and tuple(key.shape) == (2,):
        return jax.random.wrap_key_data(key)
    got = f"an array of dtype {key.dtype} and shape {shape_str(key.shape)}" if hasattr(key, "dtype") else type(key).__name__
    raise TypeError(f"{name} must be an int seed or a PRNG key (jax.random.key(seed)), got {got}")

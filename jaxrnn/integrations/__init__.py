"""Wrappers that let jaxrnn drop into Flax NNX and Equinox models.

Each submodule imports its framework, which is an optional extra, never a core
dependency; import the one you use explicitly::

    from jaxrnn.integrations.flax_nnx import RNN      # pip install "jaxrnn[flax]"
    from jaxrnn.integrations.equinox import RNN       # pip install "jaxrnn[equinox]"

Both hold any cell (built-in or your own, see :class:`jaxrnn.Cell`), stack or
bidirectional layer, and the parameters in jaxrnn's own layout (``{"w_x", "w_h", "b"}``, a list per
stacked layer, ``{"forward", "backward"}`` for a bidirectional layer) and run them with
the plain functions (:func:`jaxrnn.unroll`, ``cell.apply``), so outputs and gradients
are exactly those of the functional API.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxrnn.cells import check_cell
from jaxrnn.unroll import Bidirectional, Stack

__all__: list[str] = []


def _initial_params(cell: Any, input_size: Any, key: Any, params: Any, dtype: Any, key_name: str):
    """Check the constructor arguments shared by the wrappers; return the params pytree."""
    if not isinstance(cell, (Stack, Bidirectional)):
        check_cell(cell, "cell")
    if params is not None:
        if input_size is not None or key is not None:
            raise ValueError(f"pass either params, or input_size and {key_name}, not both")
        leaves = jax.tree_util.tree_leaves(params)
        if not leaves or not all(hasattr(v, "shape") and hasattr(v, "dtype") for v in leaves):
            raise TypeError("params must be a pytree of arrays in jaxrnn's layout (e.g. from cell.init)")
        return jax.tree_util.tree_map(jnp.asarray, params)
    if input_size is None or key is None:
        raise ValueError(f"pass input_size and {key_name} to initialise new parameters (or params=...)")
    return cell.init(key, input_size, dtype)

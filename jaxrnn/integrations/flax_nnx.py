"""jaxrnn inside Flax NNX: a module that holds jaxrnn parameters as ``nnx.Param``.

::

    from flax import nnx
    import jaxrnn as jr
    from jaxrnn.integrations.flax_nnx import RNN

    class Classifier(nnx.Module):
        def __init__(self, rngs):
            self.rnn = RNN(jr.lstm(32), input_size=8, rngs=rngs)
            self.head = nnx.Linear(32, 2, rngs=rngs)

        def __call__(self, xs, lengths):
            _, ys = self.rnn(xs, lengths=lengths)                  # jr.unroll
            return self.head(jr.sequence.last_valid(ys, lengths))

The parameters keep jaxrnn's layout (so :mod:`jaxrnn.interop` and every plain function
read them), and ``__call__`` is :func:`jaxrnn.unroll` on their values: the outputs and
gradients are those of the functional API. Needs ``flax`` (``pip install
"jaxrnn[flax]"``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxrnn.integrations import _initial_params
from jaxrnn.unroll import unroll as _unroll

__all__ = ["RNN"]


def _is_variable(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


class RNN(nnx.Module):
    """A jaxrnn cell, stack or bidirectional layer as a Flax NNX module.

    Attributes:
      cell: the jaxrnn :class:`~jaxrnn.cells.Cell`, :class:`~jaxrnn.unroll.Stack` or
        :class:`~jaxrnn.unroll.Bidirectional` (static: pure functions, no arrays).
      params: jaxrnn's parameter pytree with every array wrapped in ``nnx.Param``.

    Args:
      cell: what to run, e.g. ``jr.lstm(64)`` or ``jr.stack([jr.gru(64)] * 2)``.
      input_size: the feature size of the inputs (with ``rngs``, to initialise).
      rngs: ``nnx.Rngs``; ``rngs.params()`` seeds ``cell.init``.
      params: an existing jaxrnn params pytree to wrap instead (e.g. from
        ``cell.init`` or ``jr.interop.from_torch``); then leave ``input_size`` and
        ``rngs`` out.
      dtype: parameter dtype for a fresh initialisation.

    Example::

      >>> import jax.numpy as jnp, jaxrnn as jr
      >>> from flax import nnx
      >>> from jaxrnn.integrations.flax_nnx import RNN
      >>> rnn = RNN(jr.gru(16), input_size=4, rngs=nnx.Rngs(0))
      >>> carry, ys = rnn(jnp.ones((2, 7, 4)), lengths=jnp.array([7, 3]))
      >>> ys.shape
      (2, 7, 16)
    """

    def __init__(self, cell, input_size: int | None = None, *, rngs: nnx.Rngs | None = None,
                 params: Any = None, dtype=jnp.float32):
        if rngs is not None and not isinstance(rngs, nnx.Rngs):
            raise TypeError(f"rngs must be an nnx.Rngs, got {type(rngs).__name__}")
        key = None if rngs is None else rngs.params()
        params = _initial_params(cell, input_size, key, params, dtype, "rngs")
        self.cell = cell
        self.params = nnx.data(jax.tree_util.tree_map(nnx.Param, params))

    def param_tree(self):
        """The parameters as a plain jaxrnn pytree of arrays (the ``nnx.Param`` values)."""
        return jax.tree_util.tree_map(lambda v: v[...], self.params, is_leaf=_is_variable)

    def initial_carry(self, batch_size: Any = None, dtype=jnp.float32):
        """Zeros: ``cell.initial_carry(batch_size, dtype)``."""
        return self.cell.initial_carry(batch_size, dtype)

    def __call__(self, xs, carry=None, *, lengths=None, reverse: bool = False, time_major: bool = False,
                 unroll: int = 1, remat: Any = None, key=None):
        """``jr.unroll(self.cell, self.param_tree(), xs, carry, ...)``: returns ``(carry, ys)``."""
        return _unroll(self.cell, self.param_tree(), xs, carry, lengths=lengths, reverse=reverse,
                       time_major=time_major, unroll=unroll, remat=remat, key=key)

    def step(self, carry, x_t):
        """One time step, ``cell.apply(params, carry, x_t)`` (a Cell or a Stack of cells)."""
        if not hasattr(self.cell, "apply"):
            raise TypeError(f"step needs a Cell or a Stack of cells, this module holds a {type(self.cell).__name__}")
        return self.cell.apply(self.param_tree(), carry, x_t)

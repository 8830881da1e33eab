"""jaxrnn inside Equinox: a module whose ``params`` field is jaxrnn's parameter pytree.

::

    import equinox as eqx
    import jaxrnn as jr
    from jaxrnn.integrations.equinox import RNN

    class Classifier(eqx.Module):
        rnn: RNN
        head: eqx.nn.Linear

        def __init__(self, key):
            k1, k2 = jax.random.split(key)
            self.rnn = RNN(jr.lstm(32), input_size=8, key=k1)
            self.head = eqx.nn.Linear(32, 2, key=k2)

        def __call__(self, xs, length):                  # one sequence: (time, features)
            _, ys = self.rnn(xs, lengths=length)         # jr.unroll
            return self.head(jr.sequence.last_valid(ys, length))

    logits = jax.vmap(model)(xs, lengths)                # batch with vmap, as usual in Equinox

The module is a pytree of arrays in jaxrnn's layout, so :func:`equinox.filter_grad`,
``optax`` and every plain jaxrnn function work on it directly; ``__call__`` is
:func:`jaxrnn.unroll` and accepts batched or unbatched inputs. Needs ``equinox``
(``pip install "jaxrnn[equinox]"``).
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax.numpy as jnp

from jaxrnn.integrations import _initial_params
from jaxrnn.unroll import unroll as _unroll

__all__ = ["RNN"]


class RNN(eqx.Module):
    """A jaxrnn cell, stack or bidirectional layer as an Equinox module.

    Fields:
      cell: the jaxrnn :class:`~jaxrnn.cells.Cell`, :class:`~jaxrnn.unroll.Stack` or
        :class:`~jaxrnn.unroll.Bidirectional` (static).
      params: jaxrnn's parameter pytree (trainable arrays).

    Args:
      cell: what to run, e.g. ``jr.lstm(64)``.
      input_size: the feature size of the inputs (with ``key``, to initialise).
      key: PRNG key for ``cell.init``.
      params: an existing jaxrnn params pytree to hold instead (then leave
        ``input_size`` and ``key`` out).
      dtype: parameter dtype for a fresh initialisation.

    Example::

      >>> import jax, jax.numpy as jnp, jaxrnn as jr
      >>> from jaxrnn.integrations.equinox import RNN
      >>> rnn = RNN(jr.lstm(16), input_size=4, key=jax.random.key(0))
      >>> (h, c), ys = rnn(jnp.ones((7, 4)))                # one unbatched sequence
      >>> ys.shape
      (7, 16)
    """

    cell: Any = eqx.field(static=True)
    params: Any

    def __init__(self, cell, input_size: int | None = None, *, key=None, params: Any = None,
                 dtype=jnp.float32):
        self.params = _initial_params(cell, input_size, key, params, dtype, "key")
        self.cell = cell

    def initial_carry(self, batch_size: Any = None, dtype=jnp.float32):
        """Zeros: ``cell.initial_carry(batch_size, dtype)``."""
        return self.cell.initial_carry(batch_size, dtype)

    def __call__(self, xs, carry=None, *, lengths=None, reverse: bool = False, time_major: bool = False,
                 unroll: int = 1, remat: Any = None, key=None):
        """``jr.unroll(self.cell, self.params, xs, carry, ...)``: returns ``(carry, ys)``."""
        return _unroll(self.cell, self.params, xs, carry, lengths=lengths, reverse=reverse,
                       time_major=time_major, unroll=unroll, remat=remat, key=key)

    def step(self, carry, x_t):
        """One time step, ``cell.apply(params, carry, x_t)`` (a Cell or a Stack of cells)."""
        if not hasattr(self.cell, "apply"):
            raise TypeError(f"step needs a Cell or a Stack of cells, this module holds a {type(self.cell).__name__}")
        return self.cell.apply(self.params, carry, x_t)

"""Recurrent cells: one time step as pure functions.

A :class:`Cell` is a NamedTuple of pure functions (the optax / stax idea)::

    cell = jr.lstm(hidden_size=256)
    params = cell.init(key, input_size=128)       # {"w_x", "w_h", "b"}
    carry = cell.initial_carry(batch_size=32)     # zeros; LSTM: (h, c)
    carry, y = cell.apply(params, carry, x_t)     # x_t: (32, 128) -> y: (32, 256)

The package has one module per idea:

* :mod:`jaxrnn.cells.protocol`: the :class:`Cell` protocol and the trace-time checks
  of a cell of your own;
* :mod:`jaxrnn.cells.classic`: :func:`rnn`, :func:`lstm` and :func:`gru`, PyTorch's
  equations and weight layout, with a hand-written derivative (:mod:`jaxrnn.fused`);
* :mod:`jaxrnn.cells.minimal`: :func:`mingru` and :func:`minlstm` (Feng et al. 2024),
  whose recurrence is linear in ``h`` (``Cell.linear``), so :func:`jaxrnn.unroll` can
  run them with an associative scan;

and :data:`BUILTIN` names every cell the language model and ``jaxrnn train --cell``
can build.
"""

from __future__ import annotations

from typing import Callable

from jaxrnn.cells.classic import ELMAN, GATE_NAMES, check_carry, check_params, gru, is_builtin, lstm, rnn
from jaxrnn.cells.minimal import mingru, minlstm
from jaxrnn.cells.protocol import Cell, LogLinear, check_apply, check_cell, check_cell_carry, check_cell_params

__all__ = [
    "Cell", "LogLinear", "rnn", "lstm", "gru", "mingru", "minlstm", "BUILTIN", "GATE_NAMES", "ELMAN", "from_name", "is_builtin", "check_cell", "check_apply",
    "check_cell_params", "check_cell_carry", "check_params", "check_carry",
]


#: The built-in cells by name: the names :func:`jaxrnn.lm.language_model` and
#: ``jaxrnn train --cell`` accept. ``"rnn"`` is the tanh Elman cell.
BUILTIN: dict[str, Callable[[int], Cell]] = {
    "lstm": lstm,
    "gru": gru,
    "rnn": lambda hidden_size: rnn(hidden_size, "tanh"),
    "rnn_relu": lambda hidden_size: rnn(hidden_size, "relu"),
    "mingru": mingru,
    "minlstm": minlstm,
}


def from_name(name: str, hidden_size: int) -> Cell:
    """The built-in cell called ``name`` (a key of :data:`BUILTIN`) with ``hidden_size``.

    Example::

      >>> import jaxrnn as jr
      >>> jr.cells.from_name("rnn", 8).kind
      'rnn'
    """
    if name not in BUILTIN:
        raise ValueError(f"cell must be one of {sorted(BUILTIN)}, got {name!r}")
    return BUILTIN[name](hidden_size)

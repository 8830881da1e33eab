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
* :mod:`jaxrnn.cells.projected`: the LSTM with projections, ``lstm(H, proj_size=P)``
  (PyTorch's ``nn.LSTM(proj_size=P)``);
* :mod:`jaxrnn.cells.layernorm`: :func:`ln_lstm` and :func:`ln_gru`, layer-normalised
  (Ba et al. 2016);
* :mod:`jaxrnn.cells.mgu`: :func:`mgu`, the minimal gated unit (Flax's ``MGUCell``);
* :mod:`jaxrnn.cells.indrnn`: :func:`indrnn`, the independently recurrent ReLU cell;
* :mod:`jaxrnn.cells.minimal`: :func:`mingru` and :func:`minlstm` (Feng et al. 2024),
  whose recurrence is linear in ``h`` (``Cell.linear``), so :func:`jaxrnn.unroll` can
  run them with an associative scan;

and :data:`BUILTIN` names every cell the language model and ``jaxrnn train --cell``
can build.
"""

from __future__ import annotations

from typing import Callable

from jaxrnn.cells.classic import ELMAN, GATE_NAMES, check_carry, check_params, gru, is_builtin, lstm, rnn
from jaxrnn.cells.indrnn import indrnn
from jaxrnn.cells.layernorm import ln_gru, ln_lstm
from jaxrnn.cells.mgu import mgu
from jaxrnn.cells.minimal import mingru, minlstm
from jaxrnn.cells.projected import check_proj_size
from jaxrnn.cells.protocol import Cell, LogLinear, check_apply, check_cell, check_cell_carry, check_cell_params

__all__ = [
    "Cell", "LogLinear", "rnn", "lstm", "gru", "ln_lstm", "ln_gru", "mgu", "indrnn", "mingru", "minlstm", "BUILTIN",
    "PROJECTED", "GATE_NAMES", "ELMAN", "from_name", "check_proj_size", "is_builtin", "check_cell", "check_apply",
    "check_cell_params", "check_cell_carry", "check_params", "check_carry",
]


def _lstmp(hidden_size: int, proj_size: int | None = None) -> Cell:
    """``lstm(hidden_size, proj_size=P)`` with ``P = hidden_size // 2`` by default."""
    if proj_size is None:
        if not isinstance(hidden_size, int) or isinstance(hidden_size, bool) or hidden_size < 2:
            raise ValueError(f"the 'lstmp' cell projects to proj_size = hidden_size // 2 by default, so hidden_size "
                             f"must be an int >= 2, got {hidden_size!r}")
        proj_size = hidden_size // 2
    return lstm(hidden_size, proj_size=proj_size)


#: The built-in cells by name: the names :func:`jaxrnn.lm.language_model` and
#: ``jaxrnn train --cell`` accept, each a function of ``hidden_size``. ``"rnn"`` is the
#: tanh Elman cell; ``"lstmp"`` is ``lstm(H, proj_size=P)``, whose function also takes
#: ``proj_size`` (default ``H // 2``).
BUILTIN: dict[str, Callable[..., Cell]] = {
    "lstm": lstm,
    "gru": gru,
    "rnn": lambda hidden_size: rnn(hidden_size, "tanh"),
    "rnn_relu": lambda hidden_size: rnn(hidden_size, "relu"),
    "lstmp": _lstmp,
    "lnlstm": ln_lstm,
    "lngru": ln_gru,
    "mgu": mgu,
    "indrnn": indrnn,
    "mingru": mingru,
    "minlstm": minlstm,
}
#: The names in :data:`BUILTIN` that take a ``proj_size``.
PROJECTED = ("lstmp",)


def from_name(name: str, hidden_size: int, proj_size: int | None = None) -> Cell:
    """The built-in cell called ``name`` (a key of :data:`BUILTIN`) with ``hidden_size``.

    ``proj_size`` is for ``"lstmp"`` only (default ``hidden_size // 2``; an int in
    ``[1, hidden_size)``); for any other name it must stay ``None``.

    Example::

      >>> import jaxrnn as jr
      >>> jr.cells.from_name("rnn", 8).kind
      'rnn'
      >>> jr.cells.from_name("lstmp", 8, proj_size=3).hidden_size
      3
    """
    if name not in BUILTIN:
        raise ValueError(f"cell must be one of {sorted(BUILTIN)}, got {name!r}")
    if name in PROJECTED:
        return BUILTIN[name](hidden_size, proj_size)
    if proj_size is not None:
        raise ValueError(f"proj_size is for the cells {list(PROJECTED)} only; cell {name!r} takes no projection, "
                         f"got proj_size={proj_size!r}")
    return BUILTIN[name](hidden_size)

"""PyTorch <-> jaxrnn: weights, carries and the matching jaxrnn module.

PyTorch is imported lazily inside the functions, so ``import jaxrnn`` never imports it.

Supported modules: ``nn.RNN`` (tanh and relu), ``nn.LSTM`` and ``nn.GRU`` with any
``num_layers``, ``bidirectional``, ``bias`` and ``batch_first`` (which affects only the
input layout: pass ``time_major=not module.batch_first`` to :func:`jaxrnn.unroll`), and
the single-step ``nn.RNNCell``, ``nn.LSTMCell``, ``nn.GRUCell``. An ``nn.LSTM`` with
``proj_size=P > 0`` maps to ``jr.lstm(H, proj_size=P)`` (:mod:`jaxrnn.cells.projected`).

Parameter mapping for one layer and direction (``G`` gate blocks of ``H`` rows, in
PyTorch's gate order, which jaxrnn shares)::

    w_x = weight_ih.T                       (input_size, G*H)
    w_h = weight_hh.T                       (H, G*H)
    b   = bias_ih + bias_hh                 (G*H,)   RNN, LSTM
    b   = bias_ih + [bias_hh_r, bias_hh_z, 0]        GRU (the n block holds only b_in)
    b_hn = bias_hh_n                        (H,)     GRU only
    w_hr = weight_hr.T                      (H, P)   LSTM with proj_size=P only (then w_h is (P, 4H))

A module built with ``bias=False`` maps to zero biases. The params tree has the shape
:func:`jaxrnn.unroll` expects of :func:`cell_for`'s module:

* one layer, one direction: the cell's dict;
* one bidirectional layer: ``{"forward": dict, "backward": dict}``;
* several layers: a list with one entry per layer (a dict, or a forward/backward dict).

Example::

    >>> import torch, jax.numpy as jnp, jaxrnn as jr
    >>> from jaxrnn import interop
    >>> m = torch.nn.LSTM(3, 5, num_layers=2, bidirectional=True, batch_first=True)
    >>> xs = torch.randn(2, 7, 3)
    >>> ys_t, (h_t, c_t) = m(xs)
    >>> carry, ys = jr.unroll(interop.cell_for(m), interop.from_torch(m), jnp.asarray(xs.numpy()))
    >>> bool(jnp.allclose(ys, jnp.asarray(ys_t.detach().numpy()), atol=1e-5))
    True
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

from jaxrnn._checks import shape_str
from jaxrnn.cells import GATE_NAMES, Cell, gru, lstm, rnn
from jaxrnn.unroll import Bidirectional, Stack, bidirectional, stack

__all__ = ["from_torch", "to_torch", "cell_for", "carry_from_torch", "carry_to_torch"]



class _Spec(NamedTuple):
    """What jaxrnn needs to know about a PyTorch recurrent module."""

    kind: str  # "rnn" (tanh), "rnn_relu", "lstm" or "gru": the built-in cell names
    input_size: int
    hidden_size: int
    num_layers: int
    num_directions: int
    bias: bool
    dropout: float
    single_step: bool  # an nn.*Cell (one time step, no layer / direction suffixes)
    proj_size: int = 0  # an nn.LSTM's projection (0: none)

    @property
    def out_size(self) -> int:
        """The size of ``h`` and of each direction's outputs."""
        return self.proj_size or self.hidden_size

    @property
    def gates(self) -> int:
        return max(1, len(GATE_NAMES[self.kind]))

    def layer_input_size(self, layer: int) -> int:
        return self.input_size if layer == 0 else self.out_size * self.num_directions

    def names(self, layer: int, direction: int) -> tuple[str, str, str, str]:
        """PyTorch's (weight_ih, weight_hh, bias_ih, bias_hh) attribute names."""
        suffix = "" if self.single_step else f"_l{layer}" + ("_reverse" if direction else "")
        return tuple(f"{w}{suffix}" for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))


def _import_torch():
    try:
        import torch
    except ImportError as e:  # pragma: no cover - only without torch
        raise ImportError("jaxrnn.interop needs PyTorch: pip install torch") from e
    return torch


def _spec(module: Any) -> _Spec:
    torch = _import_torch()
    nn = torch.nn
    if isinstance(module, nn.RNNBase):
        modes = {"RNN_TANH": "rnn", "RNN_RELU": "rnn_relu", "LSTM": "lstm", "GRU": "gru"}
        if module.mode not in modes:
            raise ValueError(f"module has unsupported mode {module.mode!r}; expected one of {sorted(modes)}")
        return _Spec(
            modes[module.mode], int(module.input_size), int(module.hidden_size), int(module.num_layers),
            2 if module.bidirectional else 1, bool(module.bias), float(module.dropout), False,
            int(getattr(module, "proj_size", 0) or 0),
        )
    if isinstance(module, (nn.RNNCell, nn.LSTMCell, nn.GRUCell)):
        if isinstance(module, nn.LSTMCell):
            kind = "lstm"
        elif isinstance(module, nn.GRUCell):
            kind = "gru"
        else:
            kind = "rnn" if module.nonlinearity == "tanh" else "rnn_relu"
        return _Spec(kind, int(module.input_size), int(module.hidden_size), 1, 1, bool(module.bias), 0.0, True)
    raise TypeError(
        "module must be a torch.nn.RNN, nn.LSTM, nn.GRU, nn.RNNCell, nn.LSTMCell or nn.GRUCell, "
        f"got {type(module).__name__}"
    )


def _np64(t) -> np.ndarray:
    """A torch tensor as a float64 numpy array (exact for float16/bfloat16/32/64)."""
    torch = _import_torch()
    return t.detach().to(device="cpu", dtype=torch.float64).numpy()


def _jnp_dtype(torch_dtype):
    name = str(torch_dtype).split(".")[-1]
    if not jnp.issubdtype(jnp.dtype(name), jnp.floating):
        raise TypeError(f"module parameters must be floating point, got {torch_dtype}")
    return jnp.dtype(name)


# --------------------------------------------------------------------------- modules


def cell_for(module: Any) -> Cell | Stack | Bidirectional:
    """The jaxrnn module that computes what ``module`` computes.

    ``jr.unroll(cell_for(m), from_torch(m), xs, time_major=not m.batch_first)`` gives
    ``m(xs)``'s outputs and (in jaxrnn's carry layout, see :func:`carry_from_torch`) its
    final state. For an ``nn.*Cell`` it returns the jaxrnn :class:`~jaxrnn.cells.Cell`,
    whose ``apply`` is the module's ``forward``.

    Args:
      module: a ``torch.nn.RNN`` / ``LSTM`` / ``GRU`` (or their ``*Cell`` variants).

    Returns:
      A :class:`~jaxrnn.cells.Cell` (one layer, one direction), a
      :class:`~jaxrnn.unroll.Bidirectional` (one bidirectional layer) or a
      :class:`~jaxrnn.unroll.Stack` (several layers; ``dropout`` is the module's, active
      only when :func:`jaxrnn.unroll` gets a ``key``, like PyTorch's training mode).
    """
    spec = _spec(module)
    return _module_for(spec)


def _module_for(spec: _Spec):
    def make_cell() -> Cell:
        if spec.kind == "lstm":
            return lstm(spec.hidden_size, forget_bias=0.0, proj_size=spec.proj_size or None)
        if spec.kind == "gru":
            return gru(spec.hidden_size)
        return rnn(spec.hidden_size, activation="tanh" if spec.kind == "rnn" else "relu")

    cell = make_cell()
    layer = cell if spec.num_directions == 1 else bidirectional(cell, make_cell())
    if spec.num_layers == 1:
        return layer
    return stack([layer] * spec.num_layers, dropout=spec.dropout)


# --------------------------------------------------------------------------- params


def _hr_name(spec: _Spec, layer: int, direction: int) -> str:
    """PyTorch's name of the projection ``weight_hr`` of a layer and direction."""
    return f"weight_hr_l{layer}" + ("_reverse" if direction else "")


def _direction_from_torch(module: Any, spec: _Spec, layer: int, direction: int) -> dict:
    n_ih, n_hh, n_bih, n_bhh = spec.names(layer, direction)
    w_ih = getattr(module, n_ih)
    dtype = _jnp_dtype(w_ih.dtype)
    g, h = spec.gates, spec.hidden_size
    w_x = _np64(w_ih).T
    w_h = _np64(getattr(module, n_hh)).T
    if spec.bias:
        b_ih, b_hh = _np64(getattr(module, n_bih)), _np64(getattr(module, n_bhh))
    else:
        b_ih = b_hh = np.zeros((g * h,))
    if spec.kind == "gru":
        b = np.concatenate([b_ih[: 2 * h] + b_hh[: 2 * h], b_ih[2 * h :]])
        extra = {"b_hn": b_hh[2 * h :]}
    else:
        b = b_ih + b_hh
        extra = {}
    if spec.proj_size:
        extra["w_hr"] = _np64(getattr(module, _hr_name(spec, layer, direction))).T
    out = {"w_x": w_x, "w_h": w_h, "b": b, **extra}
    return {k: jnp.asarray(v, dtype=dtype) for k, v in out.items()}


def from_torch(module: Any):
    """Read a PyTorch recurrent module's weights as jaxrnn params.

    Args:
      module: a ``torch.nn.RNN`` / ``LSTM`` / ``GRU`` (or ``*Cell``); not modified.

    Returns:
      A params tree for :func:`cell_for`'s module, as ``jnp`` arrays in the module's
      dtype (float64 needs ``jax_enable_x64``, else JAX stores float32): the cell's
      ``{"w_x", "w_h", "b"[, "b_hn" | "w_hr"]}`` dict for one layer and one direction, ``{"forward": ..., "backward": ...}`` for a bidirectional layer, a list
      of those (one per layer) for several layers. See the module docstring for the
      mapping of each tensor.

    Raises:
      TypeError: ``module`` is not one of the supported PyTorch modules.
      ValueError: an unsupported mode.
    """
    spec = _spec(module)
    layers = []
    for layer in range(spec.num_layers):
        dirs = [_direction_from_torch(module, spec, layer, d) for d in range(spec.num_directions)]
        layers.append(dirs[0] if spec.num_directions == 1 else {"forward": dirs[0], "backward": dirs[1]})
    return layers[0] if spec.num_layers == 1 else layers


def _split_params(params: Any, spec: _Spec) -> list[list[tuple[str, Any]]]:
    """``params`` as ``[layer][direction] -> (path, cell_params)``, checking the structure."""
    if spec.num_layers == 1:
        per_layer = [("params", params)]
    else:
        if not isinstance(params, (list, tuple)) or len(params) != spec.num_layers:
            got = f"a {type(params).__name__} of length {len(params)}" if isinstance(params, (list, tuple)) else type(params).__name__
            raise TypeError(
                f"params for a {spec.num_layers}-layer module must be a list of {spec.num_layers} "
                f"per-layer params, got {got}"
            )
        per_layer = [(f"params[{i}]", p) for i, p in enumerate(params)]
    out = []
    for path, p in per_layer:
        if spec.num_directions == 1:
            out.append([(path, p)])
            continue
        if not isinstance(p, dict) or set(p) != {"forward", "backward"}:
            got = sorted(p) if isinstance(p, dict) else type(p).__name__
            raise TypeError(
                f"{path} of a bidirectional module must be a dict with keys ['backward', 'forward'], got {got}"
            )
        out.append([(f"{path}['forward']", p["forward"]), (f"{path}['backward']", p["backward"])])
    return out


def _check_cell_params(path: str, p: Any, spec: _Spec, input_size: int) -> None:
    g, h = spec.gates, spec.hidden_size
    want = {"w_x": (input_size, g * h), "w_h": (spec.out_size, g * h), "b": (g * h,)}
    if spec.kind == "gru":
        want["b_hn"] = (h,)
    if spec.proj_size:
        want["w_hr"] = (h, spec.proj_size)
    if not isinstance(p, dict) or set(p) != set(want):
        got = sorted(p) if isinstance(p, dict) else type(p).__name__
        raise TypeError(f"{path} must be a dict with keys {sorted(want)} for the module's {spec.kind} cells, got {got}")
    for k, shape in want.items():
        given = tuple(getattr(p[k], "shape", ()))
        if given != shape:
            raise ValueError(
                f"{path}['{k}'] must have shape {shape_str(shape)} to fit the module "
                f"(input_size={input_size}, hidden_size={h}, "
                + (f"proj_size={spec.proj_size}, " if spec.proj_size else "")
                + f"{g} gate block(s)), got {shape_str(given)}"
            )


def to_torch(params: Any, module: Any):
    """Copy jaxrnn params into a PyTorch recurrent module, in place.

    The inverse of :func:`from_torch`: ``from_torch(to_torch(params, m))`` equals
    ``params`` (up to the module's dtype), and ``m`` then computes what
    ``jr.unroll(cell_for(m), params, ...)`` computes. The summed bias ``b`` goes to
    ``bias_ih`` and ``bias_hh`` is zero, except the GRU's ``n`` block of ``bias_hh``,
    which receives ``b_hn``.

    Args:
      params: a params tree shaped like ``from_torch(module)``'s.
      module: the ``torch.nn.RNN`` / ``LSTM`` / ``GRU`` (or ``*Cell``) to overwrite.

    Returns:
      ``module`` itself, after the copy (done under ``torch.no_grad()``, keeping each
      tensor's dtype and device).

    Raises:
      TypeError: the params tree has the wrong structure for ``module``.
      ValueError: a shape does not fit the module (naming the entry, the expected and
        the given shapes), or ``module`` has ``bias=False`` but the biases are not zero.
    """
    torch = _import_torch()
    spec = _spec(module)
    layers = _split_params(params, spec)
    h = spec.hidden_size
    # Check and convert everything first, so a bad tree leaves the module untouched.
    updates = []
    for layer, dirs in enumerate(layers):
        for direction, (path, p) in enumerate(dirs):
            _check_cell_params(path, p, spec, spec.layer_input_size(layer))
            n_ih, n_hh, n_bih, n_bhh = spec.names(layer, direction)
            arr = {k: np.asarray(v, dtype=np.float64) for k, v in p.items()}
            b_ih = arr["b"]
            b_hh = np.zeros_like(b_ih)
            if spec.kind == "gru":
                b_hh[2 * h :] = arr["b_hn"]
            updates += [(n_ih, arr["w_x"].T), (n_hh, arr["w_h"].T)]
            if spec.proj_size:
                updates.append((_hr_name(spec, layer, direction), arr["w_hr"].T))
            if spec.bias:
                updates += [(n_bih, b_ih), (n_bhh, b_hh)]
            elif np.any(b_ih) or np.any(b_hh):
                raise ValueError(
                    f"module was built with bias=False, but {path} has nonzero biases "
                    "('b'" + (" or 'b_hn'" if spec.kind == "gru" else "") + "), which it cannot hold"
                )
    with torch.no_grad():
        for name, value in updates:
            target = getattr(module, name)
            target.copy_(torch.from_numpy(np.ascontiguousarray(value)).to(dtype=target.dtype, device=target.device))
    return module


# --------------------------------------------------------------------------- carries


def carry_from_torch(module: Any, hx: Any):
    """Convert a PyTorch hidden state into the matching jaxrnn carry.

    Args:
      module: the PyTorch module ``hx`` belongs to.
      hx: what the module takes as ``hx`` and returns as its final state: ``h`` for
        RNN / GRU, ``(h, c)`` for LSTM; each of shape ``(num_layers * num_directions,
        batch, H)`` (``(num_layers * num_directions, H)`` unbatched); with
        ``proj_size=P`` the ``h`` part has ``P`` features instead of ``H``. For an
        ``nn.*Cell``: ``(batch, H)`` or ``(H,)``.

    Returns:
      The carry :func:`cell_for`'s module uses: a cell carry (``h``, or ``(h, c)`` for an
      LSTM), a ``(forward, backward)`` pair for a bidirectional layer, a tuple with one
      entry per layer for several layers. Arrays keep ``hx``'s dtype.
    """
    spec = _spec(module)
    parts = list(hx) if spec.kind == "lstm" else [hx]
    if spec.kind == "lstm" and len(parts) != 2:
        raise TypeError(f"hx of an LSTM must be a pair (h, c), got {len(parts)} tensors")
    arrays = []
    for t in parts:
        arrays.append(jnp.asarray(_np64(t), dtype=_jnp_dtype(t.dtype)))
    if spec.single_step:
        return tuple(arrays) if spec.kind == "lstm" else arrays[0]
    n = spec.num_layers * spec.num_directions
    for name, a, size in zip(("h", "c"), arrays, (spec.out_size, spec.hidden_size)):
        if a.ndim not in (2, 3) or a.shape[0] != n or a.shape[-1] != size:
            raise ValueError(
                f"hx {name} must have shape ({n}, batch, {size}) or ({n}, {size}) "
                f"(num_layers * num_directions, ...), got {shape_str(a.shape)}"
            )

    def cell_carry(i):
        return tuple(a[i] for a in arrays) if spec.kind == "lstm" else arrays[0][i]

    layers = []
    for layer in range(spec.num_layers):
        dirs = [cell_carry(layer * spec.num_directions + d) for d in range(spec.num_directions)]
        layers.append(dirs[0] if spec.num_directions == 1 else tuple(dirs))
    return layers[0] if spec.num_layers == 1 else tuple(layers)


def carry_to_torch(module: Any, carry: Any):
    """Convert a jaxrnn carry of :func:`cell_for`'s module into PyTorch's ``hx`` layout.

    The inverse of :func:`carry_from_torch`: returns ``h`` (RNN / GRU) or ``(h, c)``
    (LSTM) as torch tensors of shape ``(num_layers * num_directions, *batch, H)``
    (``(*batch, H)`` for an ``nn.*Cell``), in the carry's dtype.
    """
    torch = _import_torch()
    spec = _spec(module)

    def to_tensor(a):
        a = jnp.asarray(a)
        t = torch.from_numpy(np.asarray(a, dtype=np.float64))
        return t.to(getattr(torch, jnp.dtype(a.dtype).name))

    def split_cell(c):
        if spec.kind == "lstm":
            if not isinstance(c, (tuple, list)) or len(c) != 2:
                raise TypeError(f"an LSTM carry must be a pair (h, c), got {type(c).__name__}")
            return list(c)
        return [c]

    if spec.single_step:
        parts = [to_tensor(a) for a in split_cell(carry)]
        return tuple(parts) if spec.kind == "lstm" else parts[0]
    per_layer = [carry] if spec.num_layers == 1 else list(carry)
    if len(per_layer) != spec.num_layers:
        raise TypeError(f"carry of a {spec.num_layers}-layer module must hold {spec.num_layers} entries, got {len(per_layer)}")
    cells = []
    for c in per_layer:
        if spec.num_directions == 2:
            if not isinstance(c, (tuple, list)) or len(c) != 2:
                raise TypeError("carry of a bidirectional layer must be a pair (forward, backward)")
            cells.extend(c)
        else:
            cells.append(c)
    parts = list(zip(*[split_cell(c) for c in cells]))
    stacked = [torch.stack([to_tensor(a) for a in part]) for part in parts]
    return tuple(stacked) if spec.kind == "lstm" else stacked[0]


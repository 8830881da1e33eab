"""The cuDNN LSTM path: ``jr.unroll(..., backend="cudnn")`` through ``jax.experimental.rnn``.

On a CUDA GPU, XLA runs a ``lax.scan`` recurrence as one or a few kernel launches per time
step; cuDNN's LSTM runs the whole sequence (and several layers, as a wavefront) inside
one call. ``jax.experimental.rnn.lstm`` wraps that call with a custom derivative (cuDNN's
own backward pass). This module feeds jaxrnn's LSTMs to it::

    carry, ys = jr.unroll(cell, params, xs, carry, lengths=lengths, backend="cudnn")

It is **opt-in** (``backend="xla"`` stays the default) until it has been measured on a
GPU. ``backend="auto"`` takes this path when :func:`unsupported` finds nothing against
it and a CUDA device is present, and the XLA path otherwise.

What it runs. A built-in ``jr.lstm`` cell, a ``jr.bidirectional`` of two of them, or a
``jr.stack`` of such layers, in float32, with or without ``lengths``, ``reverse`` (not for
a bidirectional layer, as on the XLA path), ``time_major``, unbatched ``(time,
features)`` inputs, and a stack's dropout with or without a ``key``. The results are
those of the XLA path (same ``lengths`` semantics, same carries, same outputs, same
dropout masks for the same key) up to float rounding; gradients flow to every param,
the inputs and the initial carry.

How. jaxrnn's params per layer and direction, ``w_x: (I, 4H)``, ``w_h: (H, 4H)``, ``b:
(4H,)`` (gate blocks ``i, f, g, o``, ``b`` = PyTorch's ``b_ih + b_hh``), are packed into
cuDNN's flat weight vector (layout in ``jax.experimental.rnn``'s docstring; pseudo-layer
``p = layer * D + direction``, ``D`` = 1 or 2)::

    [W_ih^0, W_hh^0, W_ih^1, W_hh^1, ..., b_ih^0, b_hh^0, b_ih^1, b_hh^1, ...]
    W_ih^p = w_x^T (4H, I_p)   W_hh^p = w_h^T (4H, H)   b_ih^p = b   b_hh^p = 0

cuDNN adds ``b_ih + b_hh``, so putting ``b`` in one and zeros (a constant) in the other
computes the same gates, and the gradient of ``b`` is exactly cuDNN's ``db_ih``. The
packing is transposes and a concatenation, so ``jax.grad`` carries cuDNN's weight
gradient back to ``w_x``, ``w_h`` and ``b``. Carries go from jaxrnn's per-layer ``(h, c)``
(``(B, H)`` each; a bidirectional layer holds ``((h_f, c_f), (h_b, c_b))``) to cuDNN's
``h_0, c_0: (num_layers * D, B, H)`` and back; ``xs`` goes to cuDNN's batch-major layout
and ``ys`` back to ``time_major`` when asked.

A stack runs as few cuDNN calls as it can: consecutive layers of one kind (all
unidirectional or all bidirectional) and one hidden size form one call; a stack with
dropout and a ``key`` runs one call per layer, with jaxrnn's own dropout
(:func:`jaxrnn.layers.dropout`, the same keys as the XLA path) between them.

``lengths``. cuDNN (``seq_lengths``) and jaxrnn agree: a row reads its first
``lengths[b]`` steps, its outputs after them are zero, its final carry is the state
after its last valid step, and the backward direction reads the valid steps from last
to first with the padding left in place (PyTorch's packed sequences). They differ at
zero: cuDNN fails on rows of length 0 (jax#17966: any zero length in the backward pass,
all zeros in the forward pass). So cuDNN is given ``max(lengths, 1)``, and the outputs
and final carries of zero-length rows are then replaced by zeros and the initial carry
(``jnp.where``; the one computed step gets a zero cotangent, so gradients are exact).

``reverse=True`` (unidirectional layers) reverses each row's valid steps before and
after the call, as the XLA path does.

Precision. ``jax.experimental.rnn`` lets cuDNN use TF32 tensor cores for float32 unless
the matmul precision is ``"highest"``: ``with jax.default_matmul_precision("highest"):``
turns TF32 off for this path and sets XLA's products to full float32 too.

Not supported (``backend="cudnn"`` raises a ``TypeError`` / ``ValueError`` naming the
argument; ``backend="auto"`` falls back to the XLA path):

* cells other than the built-in LSTM: GRU and plain RNN cells (``jax.experimental.rnn``
  has only the LSTM), cells put together by hand (their ``step`` may be anything), and a
  bidirectional layer whose two cells differ in hidden size;
* ``remat`` other than ``None``: cuDNN keeps its own per-step reserve space;
* dtypes other than float32 (bfloat16, float16, mixed dtypes): the wrapped kernel is
  float32 only;
* a sequence with no steps, an empty batch or a zero hidden/input size;
* any device but a CUDA GPU (the default JAX backend must be ``"gpu"`` with CUDA
  devices): ``backend="cudnn"`` raises a ``ValueError`` there.

``unroll`` (the scan's steps per iteration) has no meaning here and is only validated.

``jax.vmap`` of a call that takes this path fails (``NotImplementedError: Batching rule
for 'rnn_fwd' not implemented``: the cuDNN primitive has none), with ``"auto"`` too; put
the mapped axis into the batch instead. Data-parallel meshes (``jr.parallel``) have not
been tried with it.

The function that calls cuDNN is one argument (``_impl``) of :func:`unroll`;
:func:`lstm_reference` runs ``jax.experimental.rnn.lstm_ref`` (a ``lax.scan`` in plain
JAX, on any device, any float dtype) on the same packed weights, so every step of this
path except the kernel itself is tested on a CPU (``tests/test_cudnn.py``).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.experimental import rnn as _rnn

from jaxrnn._checks import check_floating, check_integer, check_rank, concrete_values, shape_str
from jaxrnn.cells import Cell, check_carry, check_params, is_builtin
from jaxrnn.layers import dropout as _dropout
from jaxrnn.unroll import Bidirectional, Stack, _check_stack_args, _check_unroll

Array = jax.Array

__all__ = ["BACKENDS", "check_backend", "available", "unsupported", "pack", "unpack", "unroll", "dispatch",
           "lstm_cudnn", "lstm_reference"]

BACKENDS = ("xla", "cudnn", "auto")


# --------------------------------------------------------------------------- the kernels


def lstm_cudnn(x, h0, c0, weights, seq_lengths, *, input_size, hidden_size, num_layers, bidirectional):
    """cuDNN's LSTM (``jax.experimental.rnn.lstm``): ``x (B, T, I)``, ``h0, c0 (L*D, B,
    H)``, flat ``weights``, int32 ``seq_lengths (B,)`` -> ``(y (B, T, D*H), h_n, c_n)``."""
    # dropout=False as in jax's own GPU tests (cuDNN's dropout is not jaxrnn's; see unroll).
    return _rnn.lstm(x, h0, c0, weights, seq_lengths, input_size, hidden_size, num_layers, False, bidirectional)


def lstm_reference(x, h0, c0, weights, seq_lengths, *, input_size, hidden_size, num_layers, bidirectional):
    """The same contract as :func:`lstm_cudnn`, computed by ``jax.experimental.rnn.lstm_ref``
    (a ``lax.scan`` in plain JAX) after ``jax.experimental.rnn.unpack_lstm_weights``:
    runs on any device, in any float dtype."""
    w_ih, w_hh, b_ih, b_hh = _rnn.unpack_lstm_weights(weights, input_size, hidden_size, num_layers, bidirectional)
    return _rnn.lstm_ref(x, h0, c0, w_ih, w_hh, b_ih, b_hh, seq_lengths, input_size, hidden_size,
                         num_layers, False, bidirectional)


def available() -> bool:
    """Whether cuDNN can run here: JAX's default backend is a GPU and its devices are CUDA's."""
    try:
        if jax.default_backend() != "gpu":
            return False
        try:
            return len(jax.devices("cuda")) > 0
        except RuntimeError:  # "cuda" not a known platform name: read the client's version string
            return "cuda" in str(getattr(jax.devices()[0].client, "platform_version", "")).lower()
    except RuntimeError:  # no backend at all
        return False


# --------------------------------------------------------------------------- what is supported


def _is_lstm(c: Any) -> bool:
    """A cell made by ``jr.lstm`` (the same test as the fused path's: the cell's explicit
    ``fused`` flag, so it computes the LSTM equations cuDNN computes)."""
    return is_builtin(c) and c.kind == "lstm"


def _describe(c: Any) -> str:
    if isinstance(c, Cell):
        kind = getattr(c, "kind", None)
        if kind == "lstm":
            return "an LSTM Cell with fused=False (its maths may not be jr.lstm's)"
        return f"a {kind} Cell" if kind else "a Cell written by hand"
    return f"a {type(c).__name__}"


def _layers(module: Any) -> list:
    return list(module.layers) if isinstance(module, Stack) else [module]


def _module_problem(module: Any) -> str | None:
    for i, layer in enumerate(_layers(module)):
        where = f"layer {i} of the Stack" if isinstance(module, Stack) else "cell"
        if isinstance(layer, Bidirectional):
            for name in ("forward", "backward"):
                part = getattr(layer, name)
                if not _is_lstm(part):
                    return f"{where} is a Bidirectional layer whose {name} cell is {_describe(part)}; cuDNN runs jr.lstm cells only"
            if layer.forward.hidden_size != layer.backward.hidden_size:
                return (f"{where} is a Bidirectional layer with hidden sizes {layer.forward.hidden_size} (forward) and "
                        f"{layer.backward.hidden_size} (backward); cuDNN needs one hidden size")
        elif not _is_lstm(layer):
            return f"{where} is {_describe(layer)}; cuDNN runs jr.lstm cells only (no GRU, plain RNN or hand-made cell)"
    return None


def unsupported(cell: Any, params: Any, xs: Any, carry: Any = None, *, reverse: bool = False,
                remat: Any = None, _impl: Callable | None = None) -> tuple[type, str] | None:
    """Why ``jr.unroll(..., backend="cudnn")`` cannot run this call, or ``None`` if it can.

    Returns ``(exception type, message)``; the message names the argument. Only what the
    cuDNN path cannot do is checked here (module kind, ``remat``, dtypes, empty arrays,
    the device); malformed arguments are reported by the path itself, as on the XLA path.
    """
    problem = _module_problem(cell)
    if problem is not None:
        return TypeError, f"backend='cudnn': {problem}"
    if reverse and any(isinstance(layer, Bidirectional) for layer in _layers(cell)):
        return ValueError, "reverse=True has no meaning for a Bidirectional layer (it already reads both ways)"
    if remat is not None:
        return ValueError, (f"backend='cudnn' needs remat=None (cuDNN keeps its own per-step reserve space), "
                            f"got remat={remat!r}")
    leaves = [("xs", xs)] + [("params", v) for v in jax.tree_util.tree_leaves(params)]
    leaves += [("carry", v) for v in jax.tree_util.tree_leaves(carry)]
    allowed = ("float32",) if _impl is None else ("float32", "float64")
    for name, v in leaves:
        if hasattr(v, "dtype") and str(jnp.dtype(v.dtype)) not in allowed:
            return TypeError, (f"backend='cudnn' runs in float32 only (jax.experimental.rnn's kernel); "
                               f"{name} has dtype {jnp.dtype(v.dtype)}")
    dtypes = {str(jnp.dtype(v.dtype)) for _, v in leaves if hasattr(v, "dtype")}
    if len(dtypes) > 1:
        return TypeError, f"backend='cudnn' needs xs, params and carry in one dtype, got {sorted(dtypes)}"
    if hasattr(xs, "shape") and any(d == 0 for d in xs.shape):
        return ValueError, f"backend='cudnn' needs xs without empty axes, got shape {shape_str(xs.shape)}"
    if _impl is None and not available():
        try:
            devices = [str(d) for d in jax.devices()]
        except RuntimeError:  # pragma: no cover
            devices = []
        return ValueError, (f"backend='cudnn' needs a CUDA GPU, but JAX's default backend is "
                            f"{jax.default_backend()!r} (devices: {devices}); use backend='xla' or 'auto'")
    return None


# --------------------------------------------------------------------------- packing


def _groups(layers: list, split_every_layer: bool) -> list[list[int]]:
    """Indices of consecutive layers that one cuDNN call can run: same direction count
    and hidden size (every layer alone when dropout runs between layers)."""
    groups: list[list[int]] = []
    sig = None
    for i, layer in enumerate(layers):
        s = (isinstance(layer, Bidirectional), _hidden(layer))
        if groups and s == sig and not split_every_layer:
            groups[-1].append(i)
        else:
            groups.append([i])
        sig = s
    return groups


def _hidden(layer) -> int:
    return layer.forward.hidden_size if isinstance(layer, Bidirectional) else layer.hidden_size


def _directions(layer, p) -> list:
    """The per-direction params of one layer, in cuDNN's pseudo-layer order."""
    return [p["forward"], p["backward"]] if isinstance(layer, Bidirectional) else [p]


def _pack(dir_params: list[dict]) -> Array:
    mats, biases = [], []
    for p in dir_params:
        mats += [p["w_x"].T.reshape(-1), p["w_h"].T.reshape(-1)]
        biases += [p["b"], jnp.zeros_like(p["b"])]
    return jnp.concatenate(mats + biases)


def _one_group(module: Any, name: str = "cell") -> tuple[list, bool, int]:
    layers = _layers(module)
    problem = _module_problem(module)
    if problem is not None:
        raise TypeError(f"{name}: {problem}")
    sigs = {(isinstance(layer, Bidirectional), _hidden(layer)) for layer in layers}
    if len(sigs) != 1:
        raise ValueError(
            f"{name}: one cuDNN weight vector holds layers of one kind and one hidden size, got "
            f"{sorted(sigs)} as (bidirectional, hidden_size); jr.unroll(backend='cudnn') splits such a stack itself"
        )
    bi, hidden = sigs.pop()
    return layers, bi, hidden


def _check_module_params(layers: list, params: Any, input_size: int, module: Any) -> list:
    """Check each layer's params; return the per-layer params list."""
    if isinstance(module, Stack):
        _check_stack_args(module, params, None)
        plist = list(params)
    else:
        plist = [params]
    size = input_size
    for i, (layer, p) in enumerate(zip(layers, plist)):
        where = f"params[{i}]" if isinstance(module, Stack) else "params"
        if isinstance(layer, Bidirectional):
            if not isinstance(p, dict) or set(p) != {"forward", "backward"}:
                got = sorted(p) if isinstance(p, dict) else type(p).__name__
                raise TypeError(f"{where} of a Bidirectional layer must be a dict with keys ['backward', 'forward'], got {got}")
            parts = [(p["forward"], layer.forward), (p["backward"], layer.backward)]
        else:
            parts = [(p, layer)]
        for q, c in parts:
            got_in = check_params(q, "lstm", c.hidden_size)
            if got_in != size:
                raise ValueError(
                    f"{where} expects {got_in} input features (params['w_x'] has shape "
                    f"{shape_str(q['w_x'].shape)}), but this layer reads {size}"
                )
        size = _hidden(layer) * (2 if isinstance(layer, Bidirectional) else 1)
    return plist


def pack(module: Any, params: Any) -> Array:
    """jaxrnn params -> cuDNN's flat LSTM weight vector (``jax.experimental.rnn`` layout).

    Args:
      module: a ``jr.lstm`` cell, a ``jr.bidirectional`` of two, or a ``jr.stack`` of
        such layers that are all of one kind (unidirectional or bidirectional) and one
        hidden size (what one cuDNN call runs).
      params: its params (``module.init``'s structure).

    Returns:
      ``(get_num_params_in_lstm(I, H, num_layers, bidirectional),)``: per pseudo-layer
      ``w_x^T`` and ``w_h^T`` flattened, then per pseudo-layer ``b`` and zeros (cuDNN's
      ``b_ih`` and ``b_hh``). Differentiable.

    Example::

      >>> import jax, jaxrnn as jr
      >>> from jaxrnn import cudnn
      >>> cell = jr.lstm(8)
      >>> w = cudnn.pack(cell, cell.init(jax.random.key(0), input_size=3))
      >>> w.shape  # 4*8*3 + 4*8*8 + 2 * 4*8
      (416,)
    """
    layers, _, _ = _one_group(module, "module")
    first = params[0] if isinstance(module, Stack) and isinstance(params, (list, tuple)) and params else params
    probe = first["forward"] if isinstance(layers[0], Bidirectional) and isinstance(first, dict) and "forward" in first else first
    if not isinstance(probe, dict) or "w_x" not in probe or not hasattr(probe["w_x"], "shape"):
        raise TypeError(f"params must be the params of module (dicts with 'w_x', 'w_h', 'b'), got {type(params).__name__}")
    plist = _check_module_params(layers, params, int(probe["w_x"].shape[0]), module)
    return _pack([q for layer, p in zip(layers, plist) for q in _directions(layer, p)])


def unpack(module: Any, weights: Array, input_size: int) -> Any:
    """cuDNN's flat LSTM weight vector -> jaxrnn params of ``module`` (inverse of :func:`pack`).

    Reads the vector with ``jax.experimental.rnn.unpack_lstm_weights``; per pseudo-layer
    ``w_x = W_ih^T``, ``w_h = W_hh^T``, ``b = b_ih + b_hh``. So weights made by
    ``jax.experimental.rnn.init_lstm_weight`` (or trained by it) become jaxrnn params
    computing the same function, and ``unpack(module, pack(module, params), I) == params``.
    """
    layers, bi, hidden = _one_group(module, "module")
    if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size <= 0:
        raise ValueError(f"input_size must be a positive int, got {input_size!r}")
    check_rank("weights", weights, (1,), "(cuDNN's flat weight vector)")
    n = len(layers)
    want = _rnn.get_num_params_in_lstm(input_size, hidden, n, bi)
    if weights.shape[0] != want:
        raise ValueError(
            f"weights must have shape ({want},) for {n} {'bidirectional ' if bi else ''}LSTM layer(s) with "
            f"input_size={input_size}, hidden_size={hidden}, got {shape_str(weights.shape)}"
        )
    w_ih, w_hh, b_ih, b_hh = _rnn.unpack_lstm_weights(weights, input_size, hidden, n, bi)
    d = 2 if bi else 1

    def direction(q):
        return {"w_x": w_ih[q].T, "w_h": w_hh[q].T, "b": b_ih[q] + b_hh[q]}

    out = []
    for i in range(n):
        out.append({"forward": direction(i * d), "backward": direction(i * d + 1)} if bi else direction(i))
    return out if isinstance(module, Stack) else out[0]


# --------------------------------------------------------------------------- unrolling


def _reverse_valid(x_bm: Array, lengths: Array | None) -> Array:
    """Reverse each row's first ``lengths[b]`` steps along axis 1; padding stays put."""
    steps = x_bm.shape[1]
    if lengths is None:
        return jnp.flip(x_bm, axis=1)
    t = jnp.arange(steps)[None, :]
    idx = jnp.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)
    return jnp.take_along_axis(x_bm, idx[..., None], axis=1)


def _check_layer_carry(layer, c, batch: tuple, where: str):
    """Check one layer's carry; return its list of (h, c) per direction."""
    if isinstance(layer, Bidirectional):
        if not isinstance(c, (tuple, list)) or len(c) != 2:
            raise TypeError(f"{where} of a Bidirectional layer must be a pair (forward_carry, backward_carry)")
        parts = [(c[0], layer.forward, f"{where}[0]"), (c[1], layer.backward, f"{where}[1]")]
    else:
        parts = [(c, layer, where)]
    out = []
    for cc, cell, name in parts:
        got = check_carry(cc, "lstm", cell.hidden_size, name)
        if got != batch:
            raise ValueError(f"{name} has batch shape {shape_str(got)} but xs has batch shape {shape_str(batch)}; they must match")
        out.append(tuple(cc))
    return out


def unroll(cell: Any, params: Any, xs: Array, carry: Any = None, *, lengths: Array | None = None,
           reverse: bool = False, time_major: bool = False, unroll: int = 1, remat: Any = None,
           key: Array | None = None, _impl: Callable | None = None):
    """``jr.unroll`` of an LSTM, a bidirectional LSTM or a stack of them through cuDNN.

    Arguments and results are those of :func:`jaxrnn.unroll` (see the module docstring
    for what is supported). ``_impl`` replaces the kernel: ``None`` is
    :func:`lstm_cudnn`; :func:`lstm_reference` runs the same path on any device.
    """
    reason = unsupported(cell, params, xs, carry, reverse=reverse, remat=remat, _impl=_impl)
    if reason is not None:
        raise reason[0](reason[1])
    impl = lstm_cudnn if _impl is None else _impl
    check_rank("xs", xs, (2, 3), "((batch, time, features), (time, batch, features) with time_major=True, "
               "or (time, features) unbatched)")
    check_floating("xs", xs)
    _check_unroll(unroll)
    batched = xs.ndim == 3
    x = (jnp.swapaxes(xs, 0, 1) if time_major else xs) if batched else xs[None]
    batch, steps = x.shape[0], x.shape[1]
    batch_shape = (batch,) if batched else ()
    if lengths is not None:
        check_integer("lengths", lengths)
        if tuple(lengths.shape) != batch_shape:
            raise ValueError(f"lengths must have shape {shape_str(batch_shape)} (one length per row of xs), "
                             f"got {shape_str(lengths.shape)}")
        values = concrete_values(lengths)
        if values is not None and values.size:
            lo, hi = int(values.min()), int(values.max())
            if lo < 0 or hi > steps:
                raise ValueError(f"lengths must lie in [0, {steps}] (the time length of xs), got values in [{lo}, {hi}]")
        lengths = jnp.reshape(lengths, (batch,)).astype(jnp.int32)

    layers = _layers(cell)
    plist = _check_module_params(layers, params, int(x.shape[-1]), cell)
    if carry is None:
        carries = [[(jnp.zeros((batch, _hidden(layer)), x.dtype),) * 2 for _ in range(2 if isinstance(layer, Bidirectional) else 1)]
                   for layer in layers]
    else:
        if isinstance(cell, Stack):
            _check_stack_args(cell, params, carry)
            clist = list(carry)
        else:
            clist = [carry]
        carries = []
        for i, (layer, c) in enumerate(zip(layers, clist)):
            parts = _check_layer_carry(layer, c, batch_shape, f"carry[{i}]" if isinstance(cell, Stack) else "carry")
            carries.append([(h if batched else h[None], cc if batched else cc[None]) for h, cc in parts])

    # cuDNN fails on zero lengths (jax#17966): it reads at least one step of every row,
    # and the rows of length 0 get their outputs and final carries fixed afterwards.
    seq = jnp.full((batch,), steps, jnp.int32) if lengths is None else jnp.maximum(lengths, 1)
    valid_t = None if lengths is None else (jnp.arange(steps)[None, :] < lengths[:, None])[..., None]
    nonempty = None if lengths is None else (lengths > 0)[:, None]

    drop = isinstance(cell, Stack) and key is not None and cell.dropout > 0 and len(layers) > 1
    keys = list(jax.random.split(key, len(layers))) if drop else None
    new_carries: list = [None] * len(layers)
    y = x
    for group in _groups(layers, drop):
        first = group[0]
        if drop and first > 0:
            # jaxrnn's dropout on the time-major outputs, as the XLA path applies it.
            y_tm = jnp.swapaxes(y, 0, 1) if batched else y[0]
            y_tm = _dropout(y_tm, cell.dropout, keys[first])
            y = jnp.swapaxes(y_tm, 0, 1) if batched else y_tm[None]
        bi = isinstance(layers[first], Bidirectional)
        hidden = _hidden(layers[first])
        w = _pack([q for i in group for q in _directions(layers[i], plist[i])])
        h0 = jnp.stack([hc[0] for i in group for hc in carries[i]])
        c0 = jnp.stack([hc[1] for i in group for hc in carries[i]])
        x_in = _reverse_valid(y, lengths) if reverse else y
        y, h_n, c_n = impl(x_in, h0, c0, w, seq, input_size=int(y.shape[-1]), hidden_size=hidden,
                           num_layers=len(group), bidirectional=bi)
        if reverse:
            y = _reverse_valid(y, lengths)
        if lengths is not None:
            y = jnp.where(valid_t, y, jnp.zeros_like(y))
            h_n = jnp.where(nonempty, h_n, h0)
            c_n = jnp.where(nonempty, c_n, c0)
        d = 2 if bi else 1
        for j, i in enumerate(group):
            parts = [(h_n[j * d + k], c_n[j * d + k]) for k in range(d)]
            if not batched:
                parts = [(h[0], c[0]) for h, c in parts]
            new_carries[i] = (parts[0], parts[1]) if bi else parts[0]

    ys = (jnp.swapaxes(y, 0, 1) if time_major else y) if batched else y[0]
    out_carry = tuple(new_carries) if isinstance(cell, Stack) else new_carries[0]
    return out_carry, ys


def check_backend(backend: Any) -> str:
    """``backend`` if it is one of :data:`BACKENDS`, else a ``ValueError`` naming it."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    return backend


def dispatch(backend: str, cell: Any, params: Any, xs: Array, carry: Any = None, **kwargs):
    """The hook ``jr.unroll`` calls for ``backend != "xla"``: the cuDNN path's ``(carry,
    ys)``, or ``None`` when ``backend="auto"`` and the call is not supported (the caller
    then takes the XLA path)."""
    check_backend(backend)
    if backend == "auto":
        reason = unsupported(cell, params, xs, carry, reverse=kwargs.get("reverse", False),
                             remat=kwargs.get("remat"))
        if reason is not None:
            return None
    return unroll(cell, params, xs, carry, **kwargs)

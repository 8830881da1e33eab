"""The recurrent language model: loss, evaluation, perplexity and sampling.

Architecture (every step a pure function; ``p`` is the dropout rate)::

    e_t      = dropout(E[w_t], p)                    # embedding, (B, T, embed)
    y_t      = stack(cells, dropout=p)(e_t)          # recurrent layers, (B, T, out); out = hidden
                                                     # (proj_size for the projected LSTM "lstmp")
    logits_t = dropout(y_t, p) W + b                 # (B, T, V); W = E^T with weight tying
    loss     = mean_t,b  -log softmax(logits_t)[w_{t+1}]

Dropout sits on the embeddings, between recurrent layers and before the output layer
(Zaremba et al. 2014, PyTorch's word_language_model); it is active only when a key is
passed. With ``tie=True`` the output projection reuses the embedding table,
``logits = y E^T + b`` (Press & Wolf 2017), which needs ``hidden == embed``.

Parameters are a dict::

    {"embed": {"table": (V, embed)},
     "rnn":   [layer_0, ..., layer_{L-1}],          # jaxrnn cell params (w_x, w_h, b, ...)
     "out":   {"w": (out, V), "b": (V,)}}           # tied: {"b": (V,)} only

Training with :mod:`jaxrnn.tbptt` uses :func:`loss_fn`, whose carry is the pair
``(rnn_carry, key_data)``: the recurrent state and the raw data of a PRNG key. Each
step splits the key, uses one half for this segment's dropout masks and carries the
other half to the next segment, so dropout is reproducible, checkpointable with the
rest of the state (plain ``uint32`` data) and different in every step.

Memory: with ``remat=None`` (the default) :func:`loss` computes the ``(B, T, V)`` logits
of the whole segment, and the backward pass keeps them, their gradient and every step's
outputs, so its memory grows like ``T V``. With ``remat`` set (``"step"``, ``"sqrt"`` or
an int ``k``) :func:`loss` runs the segment in blocks (:func:`jaxrnn.unroll.reduce_blocks`):
embedding, recurrent stack, output layer and cross-entropy of each block of ``k`` steps
run under :func:`jax.checkpoint`, the logits of a block a few positions at a time
(:func:`jaxrnn.layers.affine_cross_entropy`, about ``2^20`` logits per chunk), so no
``(B, T, V)`` array exists in the forward or backward pass; only the token ids, the
carry at each block boundary and the summed loss cross blocks. With ``"sqrt"`` (``k``
near ``sqrt(T)``) the memory of a full-BPTT gradient grows like ``sqrt(T)``. Values and
gradients equal ``remat=None``'s to float tolerance; with dropout each block draws its
masks from ``fold_in(key, s)`` (``s`` its first step), the same distribution but other
masks than ``remat=None``.

Metrics: with the mean negative log-likelihood ``nll`` in nats per token,
``perplexity = exp(nll)`` and ``bits per character = nll / ln 2``.

Example::

    >>> import jax, jax.numpy as jnp, jaxrnn as jr
    >>> model = jr.lm.language_model(vocab_size=11, cell="lstm", hidden=16, embed=8)
    >>> params = model.init(jax.random.key(0))
    >>> tokens = jnp.zeros((2, 5), jnp.int32)
    >>> carry, logits = model.apply(params, model.initial_carry(2), tokens)
    >>> logits.shape
    (2, 5, 11)
    >>> ids = jr.lm.greedy(model, params, jnp.array([1, 2]), length=4)
    >>> ids.shape
    (4,)
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxrnn._checks import as_key, check_integer, shape_str
from jaxrnn.cells import BUILTIN, PROJECTED, check_cell, from_name
from jaxrnn.cudnn import check_backend
from jaxrnn.layers import dropout as _dropout
from jaxrnn.layers import affine_cross_entropy, embedding, softmax_cross_entropy
from jaxrnn.unroll import Stack, check_remat, reduce_blocks, stack, unroll

Array = jax.Array

__all__ = [
    "CELLS", "LanguageModel", "language_model", "train_carry", "loss", "loss_fn",
    "perplexity", "bits_per_char", "evaluate", "sample", "greedy",
]

#: Cell names accepted by :func:`language_model` (the keys of :data:`jaxrnn.cells.BUILTIN`);
#: it also takes a cell object.
CELLS = tuple(BUILTIN)

#: With ``remat`` set, the output layer and cross-entropy run on chunks of at most this
#: many logits (``max(1, CE_LOGITS // V)`` positions at a time; 4 MiB in float32).
CE_LOGITS = 2**20


class LanguageModel(NamedTuple):
    """An RNN language model as pure functions (build it with :func:`language_model`).

    Attributes:
      init: ``init(key, dtype=float32) -> params``.
      initial_carry: ``initial_carry(batch_size, dtype=float32) -> carry``: zeros, one
        entry per layer.
      apply: ``apply(params, carry, tokens, key=None) -> (carry, logits)``; ``tokens``
        are integer ids ``(B, T)``, ``logits`` ``(B, T, V)``. ``key`` turns dropout on.
      step: ``step(params, carry, token_t) -> (carry, logits_t)``: one token ``(B,)`` to
        logits ``(B, V)`` (no dropout), for generation.
      vocab_size, cell, hidden, embed, layers, dropout, tie, proj_size: the
        hyper-parameters; ``cell`` is the name of a built-in cell or the cell object that
        was passed; ``proj_size`` is ``None`` except for the ``"lstmp"`` cell.
      net: the recurrent :class:`~jaxrnn.unroll.Stack`.
      nll_sum: ``nll_sum(params, carry, x, y, key=None, remat=remat) -> (carry, total)``:
        the summed next-token NLL of a segment (``x``, ``y`` ids ``(B, T)``), computed
        block by block as ``remat`` says (see the module docstring); :func:`loss` calls it
        with ``model.remat`` and divides by ``B T``.
      remat: ``None``, ``"step"``, ``"sqrt"`` or an int block length: how :func:`loss`
        trades memory for recomputation.
    """

    init: Callable
    initial_carry: Callable
    apply: Callable
    step: Callable
    vocab_size: int
    cell: Any
    hidden: int
    embed: int
    layers: int
    dropout: float
    tie: bool
    net: Stack
    proj_size: int | None = None
    nll_sum: Callable | None = None
    remat: Any = None
    backend: str = "xla"

    def config(self) -> dict:
        """The hyper-parameters as a dict; ``language_model(**config)`` rebuilds the model.
        JSON-able when the cell was given by name. ``proj_size`` and ``remat`` are there
        only when set, ``backend`` only when it is not ``"xla"``."""
        out = {"vocab_size": self.vocab_size, "cell": self.cell, "hidden": self.hidden, "embed": self.embed,
               "layers": self.layers, "dropout": self.dropout, "tie": self.tie}
        for name in ("proj_size", "remat"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.backend != "xla":
            out["backend"] = self.backend
        return out


def _positive_int(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return int(v)


def language_model(
    vocab_size: int, cell: Any = "lstm", hidden: int | None = None, embed: int = 64, layers: int = 1,
    dropout: float = 0.0, tie: bool = False, remat: Any = None, proj_size: int | None = None,
    backend: str = "xla",
) -> LanguageModel:
    """Build an RNN language model.

    Args:
      vocab_size: ``V``, the number of tokens.
      cell: a name in :data:`CELLS` (``"lstm"``, ``"gru"``, ``"rnn"`` (tanh),
        ``"rnn_relu"``, ``"lstmp"`` (LSTM with projections), ``"lnlstm"``, ``"lngru"``
        (layer-normalised), ``"mgu"``, ``"indrnn"``, ``"mingru"``, ``"minlstm"`` (the
        last two run as ``jr.unroll``'s ``scan="auto"`` decides); see
        :data:`jaxrnn.cells.BUILTIN`), or a cell object: a built-in one or one of your
        own (any object with ``init``, ``initial_carry``, ``apply`` and ``hidden_size``,
        see :class:`jaxrnn.Cell`). Every layer is that cell, with its own parameters.
      hidden: the size of every recurrent layer: default 256 for a named cell (for
        ``"lstmp"`` the size of the cell state ``c``; the layer outputs ``proj_size``
        features); for a cell object it is ``cell.hidden_size`` (passing another value
        is an error).
      embed: embedding size.
      layers: number of stacked recurrent layers.
      dropout: rate in ``[0, 1)`` on the embeddings, between layers and before the
        output layer (training only).
      tie: reuse the embedding table as output weights; needs the layers' output size
        (``hidden``, or ``proj_size``) to equal ``embed``.
      remat: what the backward pass of :func:`loss` keeps. ``None``: everything (the
        ``(B, T, V)`` logits and their gradient, every step's outputs). ``"step"``: the
        carry of every step. An int ``k``: the carry every ``k`` steps, and one block of
        ``k`` steps at a time (its logits a few positions at a time). ``"sqrt"``: ``k`` near
        ``sqrt(T)``, memory growing like ``sqrt(T)``. See the module docstring.
      proj_size: for ``cell="lstmp"`` only: ``P`` in ``[1, hidden)``, the size of
        ``h`` and of each layer's outputs (default ``hidden // 2``).
      backend: how the recurrent stack runs over a segment (``jr.unroll``'s
        ``backend``, see :mod:`jaxrnn.cudnn`): ``"xla"`` (default), ``"cudnn"`` (an
        LSTM stack through cuDNN on a CUDA GPU; raises there for what cuDNN cannot run,
        e.g. another cell, bfloat16 or ``remat``... and on any other device) or
        ``"auto"`` (cuDNN where it can run, XLA otherwise). With dropout, the masks
        between layers and the outputs are the same on both paths for the same key.
        :attr:`LanguageModel.step` (sampling, one token at a time) always runs the
        cells' own step.

    Returns:
      A :class:`LanguageModel`.

    Initialisation: the cells' own scheme (see :mod:`jaxrnn.cells`; LSTM forget bias
    1); embedding ``N(0, 1)`` (tied: ``N(0, 1/embed)``, so the tied logits have the same
    scale as the untied ones); output weights ``N(0, 1/out)`` (``out`` the layers' output
    size), biases 0.
    """
    vocab_size = _positive_int("vocab_size", vocab_size)
    if isinstance(cell, str):
        if cell not in CELLS:
            raise ValueError(f"cell must be one of {CELLS} or a cell object, got {cell!r}")
        hidden = 256 if hidden is None else _positive_int("hidden", hidden)
        layer = from_name(cell, hidden, proj_size)
        if cell in PROJECTED:
            proj_size = int(layer.hidden_size)
    else:
        if proj_size is not None:
            raise ValueError(f"proj_size is for a cell given by name ('lstmp'); with a cell object, build the "
                             f"projection into it (jr.lstm(H, proj_size=P)); got proj_size={proj_size!r}")
        layer = check_cell(cell, "cell")
        if hidden is not None and _positive_int("hidden", hidden) != int(layer.hidden_size):
            raise ValueError(
                f"hidden={hidden} differs from cell.hidden_size={layer.hidden_size}; leave hidden out "
                "when passing a cell object"
            )
        hidden = int(layer.hidden_size)
    embed = _positive_int("embed", embed)
    layers = _positive_int("layers", layers)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be a float in [0, 1), got {dropout!r}")
    dropout = float(dropout)
    tie = bool(tie)
    remat = check_remat(remat)
    backend = check_backend(backend)
    out_size = int(layer.hidden_size)  # what the output layer reads (proj_size for "lstmp")
    if tie and out_size != embed:
        what = "hidden" if out_size == hidden else "proj_size"
        raise ValueError(
            f"tie=True reuses the embedding table (vocab_size, embed) as the output weights, so {what} "
            f"must equal embed; got {what}={out_size}, embed={embed}"
        )
    net = stack([layer] * layers, dropout=dropout)
    emb = embedding(vocab_size, embed, scale=(1.0 / math.sqrt(embed)) if tie else 1.0)

    def init(key: Array, dtype=jnp.float32) -> dict:
        if not jnp.issubdtype(jnp.dtype(dtype), jnp.floating):
            raise TypeError(f"dtype must be a floating dtype, got {jnp.dtype(dtype)}")
        k_e, k_r, k_o = jax.random.split(key, 3)
        params = {"embed": emb.init(k_e, dtype), "rnn": net.init(k_r, embed, dtype)}
        if tie:
            params["out"] = {"b": jnp.zeros((vocab_size,), dtype)}
        else:
            w = jax.random.normal(k_o, (out_size, vocab_size), jnp.float32) / math.sqrt(out_size)
            params["out"] = {"w": w.astype(dtype), "b": jnp.zeros((vocab_size,), dtype)}
        return params

    def initial_carry(batch_size: Any, dtype=jnp.float32):
        return net.initial_carry(batch_size, dtype)

    def _check(params) -> None:
        if not isinstance(params, dict) or set(params) != {"embed", "rnn", "out"}:
            got = sorted(params) if isinstance(params, dict) else type(params).__name__
            raise TypeError(f"params must be a dict with keys ['embed', 'out', 'rnn'], got {got}")
        want = {"b"} if tie else {"w", "b"}
        if not isinstance(params["out"], dict) or set(params["out"]) != want:
            got = sorted(params["out"]) if isinstance(params["out"], dict) else type(params["out"]).__name__
            raise TypeError(
                f"params['out'] must have keys {sorted(want)} for a model with tie={tie}, got {got}"
            )
        if not tie and params["out"]["w"].shape != (out_size, vocab_size):
            raise ValueError(
                f"params['out']['w'] must have shape {shape_str((out_size, vocab_size))}, "
                f"got {shape_str(params['out']['w'].shape)}"
            )

    def _output_layer(params):
        """``(w, b)`` of the output layer (``w = E^T`` when tied)."""
        out = params["out"]
        return (params["embed"]["table"].T if tie else out["w"]), out["b"]

    def _logits(params, y):
        w, b = _output_layer(params)
        return y @ w + b

    def _features(params, carry, tokens, key):
        """Embedding, recurrent stack and dropout: what the output layer reads."""
        k_in = k_net = k_out = None
        if key is not None and dropout > 0.0:
            k_in, k_net, k_out = jax.random.split(key, 3)
        x = _dropout(emb.apply(params["embed"], tokens), dropout, k_in)
        carry, ys = unroll(net, params["rnn"], x, carry, key=k_net, backend=backend)
        return carry, _dropout(ys, dropout, k_out)

    def apply(params: dict, carry, tokens: Array, key: Array | None = None):
        _check(params)
        check_integer("tokens", tokens)
        if tokens.ndim != 2:
            raise ValueError(f"tokens must have shape (batch, time), got {shape_str(tokens.shape)}")
        carry, ys = _features(params, carry, tokens, key)
        return carry, _logits(params, ys)

    ce_rows = max(1, CE_LOGITS // vocab_size)
    built_remat = remat

    def nll_sum(params: dict, carry, x: Array, y: Array, key: Array | None = None, remat: Any = built_remat):
        remat = check_remat(remat)
        _check(params)
        for name, ids in (("x", x), ("y", y)):
            check_integer(name, ids)
            if ids.ndim != 2:
                raise ValueError(f"{name} must have shape (batch, time), got {shape_str(ids.shape)}")
        if y.shape != x.shape:
            raise ValueError(f"y must have the shape of x, {shape_str(x.shape)}, got {shape_str(y.shape)}")
        if carry is None:
            carry = initial_carry(x.shape[0], params["embed"]["table"].dtype)
        w, b = _output_layer(params)

        def block(c, xy, start):
            x_b, y_b = xy
            k_b = key
            if key is not None and dropout > 0.0 and remat is not None:
                k_b = jax.random.fold_in(key, start)
            c, ys = _features(params, c, x_b, k_b)
            chunk = None if remat is None else ce_rows
            return c, affine_cross_entropy(ys, w, b, y_b, reduction="sum", chunk=chunk)

        return reduce_blocks(block, carry, (x, y), remat=remat)

    def step(params: dict, carry, token_t: Array):
        _check(params)
        check_integer("token_t", token_t)
        x = emb.apply(params["embed"], token_t)
        carry, y = net.apply(params["rnn"], carry, x)
        return carry, _logits(params, y)

    return LanguageModel(init, initial_carry, apply, step, vocab_size, cell, hidden, embed, layers,
                         dropout, tie, net, proj_size, nll_sum, remat, backend)


# --------------------------------------------------------------------------- training


def _key(key) -> Array:
    return as_key(key)


def train_carry(model: LanguageModel, batch_size: int, key, dtype=jnp.float32):
    """The initial carry of :func:`loss_fn`: ``(model.initial_carry(batch_size),
    key_data)``, where ``key_data`` (``uint32``) seeds the dropout masks.

    Args:
      model: the :class:`LanguageModel`.
      batch_size: ``B``.
      key: an int seed or a PRNG key.
    """
    return model.initial_carry(batch_size, dtype), jax.random.key_data(_key(key))


def loss(model: LanguageModel, params: dict, carry, x: Array, y: Array, key: Array | None = None):
    """Mean next-token cross-entropy of a segment.

    Args:
      model: the :class:`LanguageModel`.
      params: its parameters.
      carry: the recurrent state at the start of the segment.
      x: input ids ``(B, T)``.
      y: target ids ``(B, T)`` (``x`` shifted by one token).
      key: dropout key or ``None``.

    Returns:
      ``(loss, carry)``: the mean negative log-likelihood in nats per token and the
      state after the segment.

    With ``model.remat`` set the loss is ``model.nll_sum(...) / (B T)``, computed block
    by block without the ``(B, T, V)`` logits (see the module docstring); with ``None``
    it is the cross-entropy of ``model.apply``'s logits.
    """
    if model.remat is not None:
        carry, total = model.nll_sum(params, carry, x, y, key=key, remat=model.remat)
        return total / max(x.size, 1), carry
    carry, logits = model.apply(params, carry, x, key=key)
    return softmax_cross_entropy(logits, y), carry


def loss_fn(model: LanguageModel) -> Callable:
    """``loss_fn(params, carry, x, y) -> (loss, carry)`` for :func:`jaxrnn.tbptt.make_step`.

    ``carry = (rnn_carry, key_data)`` (start from :func:`train_carry`): the key is split
    every call, one half drives this segment's dropout (unused when
    ``model.dropout == 0``), the other is carried on.

    Example::

      >>> import jax, jax.numpy as jnp, jaxrnn as jr
      >>> model = jr.lm.language_model(7, hidden=8, embed=4, dropout=0.5, layers=2)
      >>> params = model.init(jax.random.key(0))
      >>> f = jr.lm.loss_fn(model)
      >>> x = jnp.zeros((3, 5), jnp.int32)
      >>> l, carry = f(params, jr.lm.train_carry(model, 3, key=1), x, x)
      >>> l.shape
      ()
    """
    if not isinstance(model, LanguageModel):
        raise TypeError(f"model must be a LanguageModel, got {type(model).__name__}")

    def fn(params, carry, x, y):
        if not isinstance(carry, (tuple, list)) or len(carry) != 2:
            raise TypeError("carry must be the pair (rnn_carry, key_data) made by jr.lm.train_carry")
        rnn_carry, key_data = carry
        key, sub = jax.random.split(jax.random.wrap_key_data(key_data))
        value, rnn_carry = loss(model, params, rnn_carry, x, y, key=sub if model.dropout > 0 else None)
        return value, (rnn_carry, jax.random.key_data(key))

    def check_inputs(x, y):  # run by the jr.tbptt / jr.bptt steps on the host batch
        _check_ids("x", x, model.vocab_size)
        _check_ids("y", y, model.vocab_size)

    fn.check_inputs = check_inputs
    return fn


def _check_ids(name: str, ids: Any, vocab_size: int) -> None:
    """Raise ``ValueError`` naming ``name`` if host token ids fall outside ``[0, vocab_size)``.

    Inside ``jit`` an out-of-range id is not an error: the embedding gather clamps it to
    the last row and the cross-entropy of a target id ``>= V`` is NaN, so the step would
    train on wrong data or write NaN. The check runs on NumPy arrays (and lists), where
    the batches of :mod:`jaxrnn.data` are before a step is called; device arrays and
    tracers are left alone (reading them back would stall the device).
    """
    if isinstance(ids, (list, tuple)):
        ids = np.asarray(ids)
    if not isinstance(ids, np.ndarray) or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
        return
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        where = tuple(int(i) for i in np.argwhere(ids == bad)[0])
        raise ValueError(
            f"{name} holds the token id {bad} at index {where}, outside the vocabulary: ids must be in "
            f"[0, {vocab_size - 1}] (vocab_size={vocab_size})"
        )


# --------------------------------------------------------------------------- metrics


def perplexity(nll):
    """``exp(nll)``: perplexity from the mean negative log-likelihood in nats per token."""
    return jnp.exp(jnp.asarray(nll))


def bits_per_char(nll):
    """``nll / ln 2``: bits per character (token) from the mean NLL in nats per token."""
    return jnp.asarray(nll) / math.log(2.0)


@partial(jax.jit, static_argnums=0)
def _segment_nll(model: LanguageModel, params, carry, x, y, mask):
    """The carry after segment ``x`` and the NLL sum over the positions where ``mask``."""
    carry, logits = model.apply(params, carry, x)
    return carry, softmax_cross_entropy(logits, y, mask=mask, reduction="sum")


def evaluate(model: LanguageModel, params: dict, tokens, batch_size: int, seq_len: int) -> float:
    """Mean negative log-likelihood (nats per token) of a token stream, without dropout.

    The stream is cut into ``B = batch_size`` rows of ``L = (N - 1) // B`` steps: row
    ``b`` reads ``tokens[b L : (b + 1) L]`` and predicts ``tokens[b L + 1 : (b + 1) L +
    1]``, ``seq_len`` steps at a time, with the carry passed from segment to segment
    (as in training with offset batches). ``B L`` tokens are predicted, each once; the
    last ``(N - 1) mod B`` are left out. Each segment is one call of a jitted function;
    a shorter last segment is padded and masked, so one compilation serves every split
    of the same ``(B, T)``. The sum is accumulated in float64 on the host.

    Args:
      model: the :class:`LanguageModel`.
      params: its parameters.
      tokens: 1-D integer ids, ``N >= batch_size + 1``.
      batch_size: ``B``.
      seq_len: segment length ``T``.

    Returns:
      The mean NLL as a Python float (feed it to :func:`perplexity` or
      :func:`bits_per_char`).
    """
    batch_size = _positive_int("batch_size", batch_size)
    seq_len = _positive_int("seq_len", seq_len)
    tokens = np.asarray(tokens)
    if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"tokens must be a 1-D integer array, got dtype {tokens.dtype} and shape {shape_str(tokens.shape)}")
    _check_ids("tokens", tokens, model.vocab_size)
    n = tokens.shape[0]
    length = (n - 1) // batch_size
    if length < 1:
        raise ValueError(f"tokens must hold at least batch_size + 1 = {batch_size + 1} tokens, got {n}")
    segments = -(-length // seq_len)
    padded = segments * seq_len
    x = np.zeros((batch_size, padded), np.int32)
    y = np.zeros((batch_size, padded), np.int32)
    x[:, :length] = tokens[: batch_size * length].reshape(batch_size, length)
    y[:, :length] = tokens[1 : batch_size * length + 1].reshape(batch_size, length)
    mask = np.zeros((1, padded), bool)
    mask[:, :length] = True
    carry = model.initial_carry(batch_size, params["embed"]["table"].dtype)
    sums = []
    for i in range(segments):
        seg = slice(i * seq_len, (i + 1) * seq_len)
        carry, total = _segment_nll(model, params, carry, x[:, seg], y[:, seg], mask[:, seg])
        sums.append(total)
    return float(np.sum(np.asarray(jax.device_get(sums), np.float64))) / (batch_size * length)


# --------------------------------------------------------------------------- generation


def _pick(logits: Array, key: Array, temperature, top_k: int | None, greedy: bool) -> Array:
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32)) / temperature
    if top_k is not None:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


@partial(jax.jit, static_argnames=("model", "length", "top_k", "greedy"))
def _generate(model: LanguageModel, params, key, prompt, temperature, *, length: int, top_k, greedy: bool):
    carry = model.initial_carry(prompt.shape[0], params["embed"]["table"].dtype)
    carry, logits = model.apply(params, carry, prompt)

    def body(state, k):
        c, lg = state
        tok = _pick(lg, k, temperature, top_k, greedy)
        c, lg = model.step(params, c, tok)
        return (c, lg), tok

    _, toks = jax.lax.scan(body, (carry, logits[:, -1]), jax.random.split(key, length))
    return toks.T


def _check_prompt(model: LanguageModel, prompt_ids) -> tuple[Array, bool]:
    p = jnp.asarray(prompt_ids)
    check_integer("prompt_ids", p)
    if p.ndim not in (1, 2) or p.shape[-1] < 1:
        raise ValueError(
            f"prompt_ids must have shape (P,) or (batch, P) with P >= 1 (generation starts from at least one "
            f"token), got {shape_str(p.shape)}"
        )
    values = np.asarray(p)
    if values.min() < 0 or values.max() >= model.vocab_size:
        raise ValueError(
            f"prompt_ids must lie in [0, {model.vocab_size}) (vocab_size), got values in [{values.min()}, {values.max()}]"
        )
    return (p[None] if p.ndim == 1 else p).astype(jnp.int32), p.ndim == 1


def sample(model: LanguageModel, params: dict, key, prompt_ids, length: int, temperature: float = 1.0,
           top_k: int | None = None) -> Array:
    """Sample ``length`` tokens after a prompt.

    The prompt is read in one unroll; then each step draws ``w ~ softmax(logits / T)``
    (restricted to the ``top_k`` most likely tokens when given) and feeds it back through
    ``model.step``, all in one jitted ``lax.scan``.

    Args:
      model: the :class:`LanguageModel`.
      params: its parameters.
      key: PRNG key (or int seed).
      prompt_ids: integer ids ``(P,)`` or ``(batch, P)``, ``P >= 1``.
      length: number of tokens to generate.
      temperature: ``T > 0``; below 1 sharpens, above 1 flattens the distribution.
      top_k: keep only the ``k`` largest logits (``1 <= k <= V``), or ``None``.

    Returns:
      The generated ids (without the prompt), ``(length,)`` or ``(batch, length)``.

    Example::

      >>> import jax, jax.numpy as jnp, jaxrnn as jr
      >>> model = jr.lm.language_model(5, hidden=8, embed=4)
      >>> params = model.init(jax.random.key(0))
      >>> jr.lm.sample(model, params, jax.random.key(1), jnp.array([0]), 6, top_k=2).shape
      (6,)
    """
    length = _positive_int("length", length)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
    if top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or not 1 <= top_k <= model.vocab_size:
            raise ValueError(f"top_k must be None or an int in [1, {model.vocab_size}] (vocab_size), got {top_k!r}")
        top_k = int(top_k)
    prompt, single = _check_prompt(model, prompt_ids)
    out = _generate(model, params, _key(key), prompt, jnp.float32(temperature), length=length, top_k=top_k,
                    greedy=False)
    return out[0] if single else out


def greedy(model: LanguageModel, params: dict, prompt_ids, length: int) -> Array:
    """Greedy decoding: after the prompt, repeatedly emit the most likely token.

    Args:
      model, params: the model and its parameters.
      prompt_ids: integer ids ``(P,)`` or ``(batch, P)``, ``P >= 1``.
      length: number of tokens to generate.

    Returns:
      The generated ids (without the prompt), ``(length,)`` or ``(batch, length)``.
    """
    length = _positive_int("length", length)
    prompt, single = _check_prompt(model, prompt_ids)
    out = _generate(model, params, jax.random.key(0), prompt, jnp.float32(1.0), length=length, top_k=None,
                    greedy=True)
    return out[0] if single else out

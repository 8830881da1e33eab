"""jaxrnn.sequence: every sequence shape against a hand-written Python loop over cell.apply."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrnn as jr
from jaxrnn import sequence as seq

F32 = jnp.float32
TOL = dict(rtol=2e-5, atol=2e-5)


def _init(module, in_size, seed=0):
    """Random float32 params of ``module``'s layout, drawn with NumPy (no XLA compiles)."""
    shapes = jax.eval_shape(lambda k: module.init(k, in_size, F32), jax.random.key(0))
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda s: jnp.asarray(0.6 * rng.standard_normal(s.shape), F32), shapes)


def _normal(shape, seed):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), F32)


def _readout(in_size, out_size, seed):
    head = jr.layers.affine(out_size)
    hp = {"w": _normal((in_size, out_size), seed) / np.sqrt(in_size), "b": _normal((out_size,), seed + 1)}
    return lambda y: head.apply(hp, y)


_JITTED = {}


def _signature(cell):
    if isinstance(cell, jr.Stack):
        return tuple(_signature(c) for c in cell.layers)
    return (cell.kind, cell.hidden_size)


def _apply(cell):
    """``jax.jit(cell.apply)``, shared by cells of the same kind and size (compiled once)."""
    sig = _signature(cell)
    if sig not in _JITTED:
        _JITTED[sig] = jax.jit(cell.apply)
    return _JITTED[sig]


def _step_loop(cell, params, xs_row, carry):
    """Run ``cell.apply`` step by step over ``xs_row`` (T, F) for one row; list of outputs."""
    ys = []
    for t in range(xs_row.shape[0]):
        carry, y = _apply(cell)(params, carry, xs_row[t][None])
        ys.append(y[0])
    return carry, ys


def _row_carry(cell, batch_carry, b):
    if batch_carry is None:
        return cell.initial_carry(1, F32)
    return jax.tree_util.tree_map(lambda a: a[b : b + 1], batch_carry)


def _assert_tree_close(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **TOL)


def _setup(cell, batch=4, steps=6, feat=3, out=5, seed=0):
    params = _init(cell, feat, seed)
    xs = _normal((batch, steps, feat), seed + 1)
    return params, xs, _readout(jr.output_size(cell), out, seed + 2)


# --------------------------------------------------------------------------- last_valid


def test_last_valid_picks_last_valid_step_and_zero_for_empty_rows():
    ys = jnp.arange(2 * 4 * 3, dtype=F32).reshape(2, 4, 3)
    out = seq.last_valid(ys, jnp.array([2, 0]))
    np.testing.assert_array_equal(out, np.stack([np.asarray(ys[0, 1]), np.zeros(3, np.float32)]))
    np.testing.assert_array_equal(seq.last_valid(ys), ys[:, -1])
    tm = jnp.swapaxes(ys, 0, 1)
    np.testing.assert_array_equal(seq.last_valid(tm, jnp.array([4, 3]), time_major=True), np.stack([ys[0, 3], ys[1, 2]]))
    np.testing.assert_array_equal(seq.last_valid(ys[0], jnp.array(3)), ys[0, 2])  # unbatched


def test_last_valid_rejects_bad_lengths():
    ys = jnp.zeros((2, 4, 3), F32)
    with pytest.raises(ValueError, match=r"lengths must have shape \(2,\)"):
        seq.last_valid(ys, jnp.array([1, 2, 3]))
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, 4\]"):
        seq.last_valid(ys, jnp.array([1, 5]))
    with pytest.raises(TypeError, match="lengths must have an integer dtype"):
        seq.last_valid(ys, jnp.array([1.0, 2.0]))


# --------------------------------------------------------------------------- many-to-one


@pytest.mark.parametrize("kind", ["lstm", "gru", "stack"])
def test_many_to_one_matches_loop_with_lengths(kind):
    cell = {"lstm": jr.lstm(6), "gru": jr.gru(6), "stack": jr.stack([jr.gru(6), jr.lstm(6)])}[kind]
    params, xs, readout = _setup(cell)
    lengths = jnp.array([6, 3, 1, 0])
    carry, out = seq.many_to_one(cell, params, xs, lengths=lengths, readout=readout)
    for b, n in enumerate(np.asarray(lengths)):
        c_b, ys_b = _step_loop(cell, params, xs[b, :n], _row_carry(cell, None, b))
        y_last = ys_b[-1] if n else jnp.zeros(6, F32)
        np.testing.assert_allclose(out[b], readout(y_last), **TOL)
        _assert_tree_close(jax.tree_util.tree_map(lambda a: a[b], carry), jax.tree_util.tree_map(lambda a: a[0], c_b))


def test_many_to_one_reverse_summary_is_output_after_reading_step_zero():
    cell = jr.lstm(6)
    params, xs, readout = _setup(cell)
    lengths = jnp.array([6, 4, 2, 5])
    _, out = seq.many_to_one(cell, params, xs, lengths=lengths, readout=readout, reverse=True)
    for b, n in enumerate(np.asarray(lengths)):
        _, ys_b = _step_loop(cell, params, xs[b, :n][::-1], cell.initial_carry(1, F32))
        np.testing.assert_allclose(out[b], readout(ys_b[-1]), **TOL)


def test_many_to_one_bidirectional_joins_forward_last_and_backward_first():
    bi = jr.bidirectional(jr.gru(3), jr.lstm(3))
    params, xs, readout = _setup(bi)
    lengths = jnp.array([6, 2, 5, 1])
    _, out = seq.many_to_one(bi, params, xs, lengths=lengths, readout=readout)
    for b, n in enumerate(np.asarray(lengths)):
        _, yf = _step_loop(bi.forward, params["forward"], xs[b, :n], bi.forward.initial_carry(1, F32))
        _, yb = _step_loop(bi.backward, params["backward"], xs[b, :n][::-1], bi.backward.initial_carry(1, F32))
        np.testing.assert_allclose(out[b], readout(jnp.concatenate([yf[-1], yb[-1]])), **TOL)


def test_many_to_one_time_major_and_initial_carry():
    cell = jr.rnn(6)
    params, xs, readout = _setup(cell)
    c0 = _normal((4, 6), 9)
    lengths = jnp.array([1, 6, 3, 2])
    carry, out = seq.many_to_one(cell, params, jnp.swapaxes(xs, 0, 1), c0, lengths=lengths, time_major=True)
    for b, n in enumerate(np.asarray(lengths)):
        c_b, ys_b = _step_loop(cell, params, xs[b, :n], c0[b : b + 1])
        np.testing.assert_allclose(out[b], ys_b[-1], **TOL)
        np.testing.assert_allclose(carry[b], c_b[0], **TOL)


# --------------------------------------------------------------------------- many-to-many


@pytest.mark.parametrize("kind", ["lstm", "stack", "bidirectional"])
def test_many_to_many_matches_loop_and_zeroes_padding(kind):
    cell = {
        "lstm": jr.lstm(6),
        "stack": jr.stack([jr.lstm(6), jr.gru(6)]),
        "bidirectional": jr.bidirectional(jr.gru(3)),
    }[kind]
    params, xs, readout = _setup(cell)
    lengths = jnp.array([6, 4, 0, 2])
    _, outs = seq.many_to_many(cell, params, xs, lengths=lengths, readout=readout)
    assert outs.shape == (4, 6, 5)
    for b, n in enumerate(np.asarray(lengths)):
        if kind == "bidirectional":
            _, yf = _step_loop(cell.forward, params["forward"], xs[b, :n], cell.forward.initial_carry(1, F32))
            _, yb = _step_loop(cell.backward, params["backward"], xs[b, :n][::-1], cell.backward.initial_carry(1, F32))
            ys_b = [jnp.concatenate([f, r]) for f, r in zip(yf, yb[::-1])]
        else:
            _, ys_b = _step_loop(cell, params, xs[b, :n], cell.initial_carry(1, F32))
        for t in range(6):
            want = readout(ys_b[t]) if t < n else jnp.zeros(5, F32)
            np.testing.assert_allclose(outs[b, t], want, **TOL)


def test_many_to_many_without_readout_is_unroll():
    cell = jr.gru(6)
    params, xs, _ = _setup(cell)
    c1, ys1 = seq.many_to_many(cell, params, xs)
    c2, ys2 = jr.unroll(cell, params, xs)
    np.testing.assert_array_equal(ys1, ys2)
    np.testing.assert_array_equal(c1, c2)


def test_backend_and_scan_pass_through_to_unroll():
    """many_to_one, many_to_many and encoder_decoder hand ``backend`` (and the first two
    ``scan``) to :func:`jaxrnn.unroll`: without a CUDA GPU ``"auto"`` is the XLA path
    (equal results), ``"cudnn"`` raises naming the backend, and a minGRU run with
    ``scan="associative"`` equals the sequential scan."""
    if jr.cudnn.available():
        pytest.skip("on a CUDA machine 'auto' takes cuDNN (tests/test_cudnn.py compares them)")
    cell = jr.lstm(6)
    params, xs, _ = _setup(cell)
    lengths = jnp.array([6, 4, 1, 0])
    for fn in (seq.many_to_one, seq.many_to_many):
        want = fn(cell, params, xs, lengths=lengths)
        got = fn(cell, params, xs, lengths=lengths, backend="auto")
        jax.tree_util.tree_map(np.testing.assert_array_equal, got, want)
        with pytest.raises(ValueError, match="backend='cudnn' needs a CUDA GPU"):
            fn(cell, params, xs, lengths=lengths, backend="cudnn")
        with pytest.raises(ValueError, match="backend must be one of"):
            fn(cell, params, xs, backend="tpu")
    ep, dp, src, _, readout, embed, start = _s2s_setup(jr.lstm(6), jr.lstm(6))
    args = (jr.lstm(6), ep, src, jr.lstm(6), dp, start, 3)
    want = seq.encoder_decoder(*args, readout=readout, embed_fn=embed)
    got = seq.encoder_decoder(*args, readout=readout, embed_fn=embed, backend="auto")
    jax.tree_util.tree_map(np.testing.assert_array_equal, got, want)
    with pytest.raises(ValueError, match="backend='cudnn' needs a CUDA GPU"):
        seq.encoder_decoder(*args, readout=readout, embed_fn=embed, backend="cudnn")
    mg = jr.mingru(5)
    mp, mxs, _ = _setup(mg)
    for fn in (seq.many_to_one, seq.many_to_many):
        a = fn(mg, mp, mxs, lengths=lengths, scan="associative")
        b = fn(mg, mp, mxs, lengths=lengths, scan="sequential")
        jax.tree_util.tree_map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6), a, b)


# --------------------------------------------------------------------------- one-to-many


def _decode_loop(cell, params, x0, n, carry, readout, next_fn):
    """Hand-written decoder: next_fn(t, out_t) -> x_{t+1} of shape (batch, F)."""
    outs, x = [], x0
    for t in range(n):
        carry, y = _apply(cell)(params, carry, x)
        o = readout(y)
        outs.append(o)
        x = next_fn(t, o)
    return carry, jnp.stack(outs, axis=1)


def _gen_setup(cell, vocab=6, batch=3, seed=1):
    params = _init(cell, vocab, seed)
    x0 = jax.nn.one_hot(jnp.arange(batch) % vocab, vocab, dtype=F32)
    return params, x0, _readout(jr.output_size(cell), vocab, seed + 1)


def test_one_to_many_fixed_next_input_matches_loop():
    cell = jr.lstm(6)
    params, x0, readout = _gen_setup(cell)
    go = jnp.linspace(-1, 1, 6, dtype=F32)
    carry, outs = seq.one_to_many(cell, params, x0, 5, readout=readout, next_input=go)
    c_ref, o_ref = _decode_loop(cell, params, x0, 5, cell.initial_carry(3, F32), readout,
                                lambda t, o: jnp.broadcast_to(go, x0.shape))
    np.testing.assert_allclose(outs, o_ref, **TOL)
    _assert_tree_close(carry, c_ref)
    # default next input: zeros
    _, outs0 = seq.one_to_many(cell, params, x0, 5, readout=readout)
    _, o_ref0 = _decode_loop(cell, params, x0, 5, cell.initial_carry(3, F32), readout, lambda t, o: jnp.zeros_like(x0))
    np.testing.assert_allclose(outs0, o_ref0, **TOL)


@pytest.mark.parametrize("kind", ["gru", "stack"])
def test_one_to_many_greedy_feedback_matches_loop(kind):
    cell = jr.gru(6) if kind == "gru" else jr.stack([jr.lstm(6), jr.gru(6)])
    params, x0, readout = _gen_setup(cell)
    c0 = cell.initial_carry(3, F32)
    carry, outs = seq.one_to_many(cell, params, x0, 7, readout=readout, feedback="argmax")
    c_ref, o_ref = _decode_loop(cell, params, x0, 7, c0, readout,
                                lambda t, o: jax.nn.one_hot(jnp.argmax(o, -1), 6, dtype=F32))
    np.testing.assert_allclose(outs, o_ref, **TOL)
    _assert_tree_close(carry, c_ref)


def test_one_to_many_output_feedback_with_embed_fn_and_jit():
    cell = jr.rnn(6)
    params = _init(cell, 2, 3)
    readout = _readout(6, 4, 4)
    embed = lambda p: jnp.tanh(p[..., :2] - p[..., 2:])  # noqa: E731
    x0 = jnp.array([[0.5, -1.0], [2.0, 0.1]], F32)
    f = jax.jit(lambda p, x: seq.one_to_many(cell, p, x, 6, readout=readout, feedback="output", embed_fn=embed))
    _, outs = f(params, x0)
    _, o_ref = _decode_loop(cell, params, x0, 6, cell.initial_carry(2, F32), readout, lambda t, o: embed(o))
    np.testing.assert_allclose(outs, o_ref, **TOL)


def test_one_to_many_teacher_forcing_matches_loop_and_scan_path():
    cell = jr.lstm(6)
    params, x0, readout = _gen_setup(cell)
    targets = jnp.array([[1, 2, 3, 4, 5], [0, 0, 1, 1, 2], [5, 4, 3, 2, 1]])
    onehot = lambda ids: jax.nn.one_hot(ids, 6, dtype=F32)  # noqa: E731
    carry, outs = seq.one_to_many(cell, params, x0, 5, readout=readout, feedback="argmax", targets=targets)
    c_ref, o_ref = _decode_loop(cell, params, x0, 5, cell.initial_carry(3, F32), readout,
                                lambda t, o: onehot(targets[:, t]))
    np.testing.assert_allclose(outs, o_ref, **TOL)
    _assert_tree_close(carry, c_ref)
    # a traced ratio of 1 takes the lax.scan path; same values and same gradients
    key = jax.random.key(0)

    def loss(p, ratio):
        _, o = seq.one_to_many(cell, p, x0, 5, readout=readout, feedback="argmax", targets=targets,
                               teacher_forcing=ratio, key=key)
        return jr.layers.softmax_cross_entropy(o, targets)

    l1, g1 = jax.jit(jax.value_and_grad(loss), static_argnums=1)(params, 1.0)
    l2, g2 = jax.jit(jax.value_and_grad(loss))(params, jnp.asarray(1.0, F32))
    np.testing.assert_allclose(l1, l2, **TOL)
    _assert_tree_close(g1, g2)


def test_one_to_many_scheduled_sampling_matches_loop():
    cell = jr.gru(6)
    params, x0, readout = _gen_setup(cell, batch=5)
    targets = jnp.asarray(np.random.default_rng(4).integers(0, 6, (5, 6)))
    key = jax.random.key(11)
    ratio = 0.5
    _, outs = seq.one_to_many(cell, params, x0, 6, readout=readout, feedback="argmax", targets=targets,
                              teacher_forcing=ratio, key=key)
    keys = jax.random.split(key, 6)
    coins = [np.asarray(jax.random.bernoulli(keys[t], ratio, (5,))) for t in range(6)]
    assert 0 < sum(c.sum() for c in coins) < 30  # both kinds of step happen

    def next_fn(t, o):
        ids = jnp.where(coins[t], targets[:, t], jnp.argmax(o, -1))
        return jax.nn.one_hot(ids, 6, dtype=F32)

    _, o_ref = _decode_loop(cell, params, x0, 6, cell.initial_carry(5, F32), readout, next_fn)
    np.testing.assert_allclose(outs, o_ref, **TOL)
    # ratio 0 ignores the targets: free running
    _, free = seq.one_to_many(cell, params, x0, 6, readout=readout, feedback="argmax", targets=targets,
                              teacher_forcing=0.0)
    _, greedy = seq.one_to_many(cell, params, x0, 6, readout=readout, feedback="argmax")
    np.testing.assert_allclose(free, greedy, **TOL)


def test_one_to_many_unbatched_equals_batched_row():
    cell = jr.lstm(6)
    params, x0, readout = _gen_setup(cell)
    (h, c), outs = seq.one_to_many(cell, params, x0, 4, readout=readout, feedback="argmax")
    (h1, c1), outs1 = seq.one_to_many(cell, params, x0[1], 4, readout=readout, feedback="argmax")
    np.testing.assert_allclose(outs1, outs[1], **TOL)
    np.testing.assert_allclose(h1, h[1], **TOL)


def test_one_to_many_argument_errors():
    cell = jr.gru(6)
    params, x0, readout = _gen_setup(cell)
    with pytest.raises(TypeError, match="Bidirectional layer reads the future"):
        seq.one_to_many(jr.bidirectional(cell), {"forward": params, "backward": params}, x0, 3)
    with pytest.raises(ValueError, match="num_steps must be a positive Python int"):
        seq.one_to_many(cell, params, x0, 0)
    with pytest.raises(ValueError, match="feedback must be None, 'argmax', 'output' or a callable"):
        seq.one_to_many(cell, params, x0, 3, feedback="beam")
    with pytest.raises(ValueError, match=r"targets must have shape \(3, 4, ...\)"):
        seq.one_to_many(cell, params, x0, 4, readout=readout, feedback="argmax", targets=jnp.zeros((3, 5), jnp.int32))
    with pytest.raises(TypeError, match="targets must have an integer dtype"):
        seq.one_to_many(cell, params, x0, 4, readout=readout, feedback="argmax", targets=jnp.zeros((3, 4), F32))
    with pytest.raises(ValueError, match="key is required"):
        seq.one_to_many(cell, params, x0, 4, readout=readout, feedback="argmax",
                        targets=jnp.zeros((3, 4), jnp.int32), teacher_forcing=0.5)
    with pytest.raises(ValueError, match=r"teacher_forcing must lie in \[0, 1\]"):
        seq.one_to_many(cell, params, x0, 4, readout=readout, feedback="argmax",
                        targets=jnp.zeros((3, 4), jnp.int32), teacher_forcing=1.5)
    with pytest.raises(ValueError, match="targets .* need a feedback"):
        seq.one_to_many(cell, params, x0, 4, targets=jnp.zeros((3, 4), jnp.int32))
    with pytest.raises(ValueError, match="embed_fn must map predictions to inputs"):
        seq.one_to_many(cell, params, x0, 4, readout=readout, feedback="argmax",
                        embed_fn=lambda ids: jax.nn.one_hot(ids, 5))
    with pytest.raises(ValueError, match=r"next_input must have shape \(6,\) or \(3, 6\)"):
        seq.one_to_many(cell, params, x0, 4, next_input=jnp.zeros(5, F32))


# --------------------------------------------------------------------------- encoder-decoder


def _encode_loop(cell, params, xs, lengths):
    """Per-row final carry of a forward cell over the valid steps, stacked."""
    rows = []
    for b, n in enumerate(np.asarray(lengths)):
        c, _ = _step_loop(cell, params, xs[b, :n], cell.initial_carry(1, F32))
        rows.append(c)
    return jax.tree_util.tree_map(lambda *a: jnp.concatenate(a, 0), *rows)


def _s2s_setup(enc, dec, vocab=5, batch=4, steps=5, seed=2):
    ep = _init(enc, vocab, seed)
    dp = _init(dec, vocab + 1, seed + 1)  # decoder inputs: vocab + a start symbol
    src = jnp.asarray(np.random.default_rng(seed).integers(0, vocab, (batch, steps)))
    xs = jax.nn.one_hot(src, vocab, dtype=F32)
    embed = lambda ids: jax.nn.one_hot(ids, vocab + 1, dtype=F32)  # noqa: E731
    start = jax.nn.one_hot(vocab, vocab + 1, dtype=F32)
    return ep, dp, xs, src, _readout(dec.hidden_size, vocab, seed + 2), embed, start


def test_encoder_decoder_greedy_matches_loop():
    enc, dec = jr.lstm(6), jr.lstm(6)
    ep, dp, xs, _, readout, embed, start = _s2s_setup(enc, dec)
    lengths = jnp.array([5, 3, 1, 4])
    carry, outs = seq.encoder_decoder(enc, ep, xs, dec, dp, start, 6, lengths=lengths, readout=readout,
                                      embed_fn=embed)
    c0 = _encode_loop(enc, ep, xs, lengths)
    c_ref, o_ref = _decode_loop(dec, dp, jnp.broadcast_to(start, (4, 6)), 6, c0, readout,
                                lambda t, o: embed(jnp.argmax(o, -1)))
    np.testing.assert_allclose(outs, o_ref, **TOL)
    _assert_tree_close(carry, c_ref)


def test_encoder_decoder_teacher_forcing_and_bridge_match_loop():
    enc, dec = jr.bidirectional(jr.gru(3)), jr.gru(6)
    ep, dp, xs, src, readout, embed, start = _s2s_setup(enc, dec)
    lengths = jnp.array([2, 5, 4, 3])
    targets = src[:, ::-1]
    bridge = lambda c: jnp.concatenate(c, axis=-1)  # noqa: E731
    _, outs = seq.encoder_decoder(enc, ep, xs, dec, dp, start, 5, lengths=lengths, bridge=bridge,
                                  readout=readout, embed_fn=embed, targets=targets)
    cf = _encode_loop(enc.forward, ep["forward"], xs, lengths)
    cb = jnp.concatenate([
        _step_loop(enc.backward, ep["backward"], xs[b, :n][::-1], enc.backward.initial_carry(1, F32))[0]
        for b, n in enumerate(np.asarray(lengths))
    ])
    c0 = jnp.concatenate([cf, cb], axis=-1)
    _, o_ref = _decode_loop(dec, dp, jnp.broadcast_to(start, (4, 6)), 5, c0, readout, lambda t, o: embed(targets[:, t]))
    np.testing.assert_allclose(outs, o_ref, **TOL)


def test_encoder_decoder_errors():
    enc, dec = jr.gru(6), jr.lstm(6)
    ep, dp, xs, _, readout, embed, start = _s2s_setup(enc, dec)
    with pytest.raises(TypeError, match="carry of an LSTM cell must be a pair"):
        seq.encoder_decoder(enc, ep, xs, dec, dp, start, 3, readout=readout, embed_fn=embed)
    with pytest.raises(ValueError, match=r"start must have shape \(input_size,\) or \(4, input_size\)"):
        seq.encoder_decoder(enc, ep, xs, dec, dp, jnp.zeros((3, 6), F32), 3, readout=readout, embed_fn=embed,
                            bridge=lambda h: (h, h))

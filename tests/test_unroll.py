"""Unrolling: equality with a Python loop over cell.apply (masking and per-row reverse),
finite-difference gradients in float64, jit/vmap/grad composition, dtypes, remat modes,
stacks with dropout, bidirectional layers, and one test per argument error."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

import jaxrnn as jr
from conftest import KINDS, assert_trees_close, make_cell, random_carry, random_params




_APPLY_CACHE = {}


def _jitted_apply(cell):
    if cell not in _APPLY_CACHE:
        _APPLY_CACHE[cell] = jax.jit(cell.apply)
    return _APPLY_CACHE[cell]


def loop_reference(cell, params, xs, carry, lengths=None, reverse=False):
    """Row by row, step by step with ``cell.apply`` on unbatched inputs: row ``b`` reads
    its steps ``0..lengths[b]-1`` (backwards when ``reverse``); other outputs are zero."""
    step = _jitted_apply(cell)
    xs = np.asarray(xs)
    B, T, _ = xs.shape
    lengths = np.full(B, T) if lengths is None else np.asarray(lengths)
    ys = np.zeros((B, T, cell.hidden_size), xs.dtype)
    finals = []
    for b in range(B):
        c = jax.tree.map(lambda a: a[b], carry)
        order = range(lengths[b])
        for t in (reversed(order) if reverse else order):
            c, y = step(params, c, jnp.asarray(xs[b, t]))
            ys[b, t] = np.asarray(y)
        finals.append(c)
    final = jax.tree.map(lambda *rows: jnp.stack(rows), *finals)
    return final, ys




# ------------------------------------------------------------------- loop equality


@pytest.mark.parametrize("kind", KINDS)
def test_unroll_equals_python_loop(kind):
    rng = np.random.default_rng(0)
    cell = make_cell(kind, 4)
    params = random_params(cell, 3, rng)
    xs = jnp.asarray(rng.normal(size=(3, 5, 3)), jnp.float32)
    carry = random_carry(cell, 3, rng)
    lengths = jnp.array([5, 0, 2], jnp.int32)
    run = jax.jit(lambda p, x, c, n, r: jr.unroll(cell, p, x, c, lengths=n, reverse=r), static_argnums=4)
    for n in (None, lengths):
        for reverse in (False, True):
            got = run(params, xs, carry, n, reverse)
            want = loop_reference(cell, params, xs, carry, n, reverse)
            assert_trees_close(got, want)
    # a zero-length row keeps its initial carry
    got_carry, got_ys = run(params, xs, carry, lengths, False)
    assert_trees_close(jax.tree.map(lambda a: a[1], got_carry), jax.tree.map(lambda a: a[1], carry), rtol=0, atol=0)
    assert not np.any(np.asarray(got_ys[1]))


@settings(max_examples=4, deadline=None)
@given(data=st.data())
def test_unroll_equals_loop_random_shapes(data):
    kind = data.draw(st.sampled_from(KINDS))
    B = data.draw(st.integers(1, 3))
    T = data.draw(st.integers(1, 5))
    F = data.draw(st.integers(1, 3))
    lengths = np.array(data.draw(st.lists(st.integers(0, T), min_size=B, max_size=B)), np.int32)
    reverse = data.draw(st.booleans())
    rng = np.random.default_rng(data.draw(st.integers(0, 1000)))
    cell = make_cell(kind, 3)
    params = random_params(cell, F, rng)
    xs = jnp.asarray(rng.normal(size=(B, T, F)), jnp.float32)
    carry = cell.initial_carry(B)
    got = jax.jit(lambda p, x, n: jr.unroll(cell, p, x, lengths=n, reverse=reverse))(params, xs, jnp.asarray(lengths))
    assert_trees_close(got, loop_reference(cell, params, xs, carry, lengths, reverse))


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_time_major_and_unbatched_layouts(kind):
    rng = np.random.default_rng(1)
    cell = make_cell(kind, 4)
    params = random_params(cell, 3, rng)
    xs = jnp.asarray(rng.normal(size=(3, 6, 3)), jnp.float32)
    lengths = jnp.array([6, 1, 4], jnp.int32)

    @jax.jit
    def layouts(params, xs):
        batch = jr.unroll(cell, params, xs, lengths=lengths, reverse=True)
        tm_carry, tm_ys = jr.unroll(cell, params, jnp.swapaxes(xs, 0, 1), lengths=lengths, reverse=True, time_major=True)
        one = jax.vmap(lambda x, n: jr.unroll(cell, params, x, lengths=n, reverse=True))(xs, lengths)
        return batch, (tm_carry, jnp.swapaxes(tm_ys, 0, 1)), one

    batch, tm, one = layouts(params, xs)
    assert_trees_close(tm, batch, rtol=1e-6)
    assert_trees_close(one, batch, rtol=1e-6)  # vmap over unbatched (T, F) == batched call


# ------------------------------------------------------------------- gradients / transforms


@pytest.mark.parametrize("kind", KINDS)
def test_unroll_gradients_match_finite_differences_float64(kind):
    rng = np.random.default_rng(2)
    cell = make_cell(kind, 3)
    params = random_params(cell, 2, rng, jnp.float64)
    if kind == "rnn_relu":  # keep pre-activations away from relu's kink
        params = dict(params, b=params["b"] + 1.5)
    xs = jnp.asarray(rng.normal(size=(2, 4, 2)))
    carry = random_carry(cell, 2, rng, jnp.float64)
    lengths = jnp.array([4, 2], jnp.int32)
    f = jax.jit(lambda p, x, c: jr.unroll(cell, p, x, c, lengths=lengths, reverse=True))
    check_grads(f, (params, xs, carry), order=1, modes=("rev",), atol=1e-6, rtol=1e-6)


def test_jit_vmap_grad_compose():
    """vmap over an ensemble of params, grad through it, under jit: equals a Python loop."""
    rng = np.random.default_rng(3)
    cell = jr.gru(4)
    ens = [random_params(cell, 3, rng) for _ in range(3)]
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *ens)
    xs = jnp.asarray(rng.normal(size=(2, 5, 3)), jnp.float32)
    lengths = jnp.array([5, 3], jnp.int32)

    def loss(p, xs):
        carry, ys = jr.unroll(cell, p, xs, lengths=lengths)
        return jnp.sum(ys**2) + jnp.sum(jnp.sin(carry))

    g_vmapped = jax.jit(jax.vmap(jax.grad(loss, argnums=(0, 1)), in_axes=(0, None)))(stacked, xs)
    grad_one = jax.jit(jax.grad(loss, argnums=(0, 1)))
    for i, p in enumerate(ens):
        g_p, g_x = grad_one(p, xs)
        assert_trees_close(jax.tree.map(lambda a: a[i], g_vmapped[0]), g_p)
        np.testing.assert_allclose(g_vmapped[1][i], g_x, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_bfloat16_and_float64_close_to_float32(kind):
    rng = np.random.default_rng(4)
    cell = make_cell(kind, 8)
    p32 = random_params(cell, 4, rng)
    xs32 = jnp.asarray(rng.normal(size=(2, 6, 4)), jnp.float32)
    run = jax.jit(lambda p, x: jr.unroll(cell, p, x))
    c32, y32 = run(p32, xs32)
    for dtype, tol in ((jnp.float64, 1e-5), (jnp.bfloat16, 1e-1)):
        carry, ys = run(jax.tree.map(lambda a: a.astype(dtype), p32), xs32.astype(dtype))
        assert ys.dtype == dtype and all(a.dtype == dtype for a in jax.tree.leaves(carry))
        err = np.linalg.norm(np.asarray(ys, np.float64) - np.asarray(y32)) / np.linalg.norm(np.asarray(y32))
        assert err < tol


def test_mixed_dtypes_default_carry_and_carry_dtype_error():
    """bfloat16 inputs with float32 weights compute (and carry) in float32; a carry
    narrower than the computation is rejected with a message instead of a scan error."""
    cell = jr.lstm(4)
    params = random_params(cell, 3, np.random.default_rng(11))
    xs = jnp.asarray(np.random.default_rng(12).normal(size=(2, 5, 3)), jnp.bfloat16)
    run = jax.jit(lambda p, x, c=None: jr.unroll(cell, p, x, c))
    carry, ys = run(params, xs)
    assert ys.dtype == jnp.float32 and all(a.dtype == jnp.float32 for a in jax.tree.leaves(carry))
    assert_trees_close((carry, ys), run(params, xs.astype(jnp.float32)), rtol=1e-6)
    wide = jax.tree.map(lambda a: a.astype(jnp.float64), cell.initial_carry(2))
    assert run(params, xs, wide)[1].dtype == jnp.float64  # a wider carry promotes
    with pytest.raises(TypeError, match=r"carry has dtype bfloat16 but the step computes in float32 .*"
                       r"pass a carry of dtype float32"):
        run(params, xs, cell.initial_carry(2, jnp.bfloat16))


def test_remat_modes_match_no_remat():
    rng = np.random.default_rng(5)
    net = jr.lstm(4)
    params = random_params(net, 3, rng)
    xs = jnp.asarray(rng.normal(size=(2, 7, 3)), jnp.float32)  # T=7: not divisible by 3
    lengths = jnp.array([7, 5], jnp.int32)

    def loss(p, xs, remat):
        carry, ys = jr.unroll(net, p, xs, lengths=lengths, reverse=True, remat=remat)
        return jnp.sum(ys * jnp.cos(ys)) + sum(jnp.sum(a) for a in jax.tree.leaves(carry)), (carry, ys)

    vg = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True), static_argnums=2)
    (l0, aux0), g0 = vg(params, xs, None)
    for remat in ("step", "sqrt", 3):
        (l1, aux1), g1 = vg(params, xs, remat)
        np.testing.assert_allclose(l1, l0, rtol=1e-6)
        assert_trees_close(aux1, aux0, rtol=1e-6)
        assert_trees_close(g1, g0, rtol=1e-5)


# ------------------------------------------------------------------- stacks / bidirectional


def test_stack_equals_layer_by_layer_and_stack_apply():
    rng = np.random.default_rng(6)
    layers = [jr.lstm(4), jr.bidirectional(jr.rnn(3)), jr.gru(2)]
    net = jr.stack(layers)
    params = random_params(net, 3, rng)
    xs = jnp.asarray(rng.normal(size=(2, 5, 3)), jnp.float32)
    lengths = jnp.array([5, 3], jnp.int32)
    @jax.jit
    def both(params, xs):
        h, want_carry = xs, []
        for layer, p in zip(layers, params):
            c, h = jr.unroll(layer, p, h, lengths=lengths)
            want_carry.append(c)
        return jr.unroll(net, params, xs, lengths=lengths), (tuple(want_carry), h)

    (carry, ys), want = both(params, xs)
    assert_trees_close((carry, ys), want)
    assert jr.output_size(net) == 2 and ys.shape == (2, 5, 2)
    # Stack.apply: one step through plain-cell layers == unroll over a length-1 sequence
    plain = jr.stack([jr.lstm(4), jr.gru(2)])
    pp = random_params(plain, 3, rng)
    c0 = random_carry(plain, 2, rng)
    (c1, y1), (cu, yu) = jax.jit(lambda p, c, x: (plain.apply(p, c, x[:, 0]), jr.unroll(plain, p, x[:, :1], c)))(pp, c0, xs)
    assert_trees_close((c1, y1), (cu, yu[:, 0]))
    with pytest.raises(TypeError, match=r"layer 1 is a Bidirectional, which needs the whole sequence"):
        net.apply(params, net.initial_carry(2), xs[:, 0])


def test_stack_dropout_deterministic_without_key_random_with_key():
    rng = np.random.default_rng(7)
    net = jr.stack([jr.gru(6), jr.gru(6)], dropout=0.5)
    params = random_params(net, 3, rng)
    xs = jnp.asarray(rng.normal(size=(2, 5, 3)), jnp.float32)
    run = jax.jit(lambda p, x, k: jr.unroll(net, p, x, key=k))
    no_key, no_dropout = jax.jit(lambda p, x: (jr.unroll(net, p, x), jr.unroll(jr.stack(net.layers), p, x)))(params, xs)
    assert_trees_close(no_key, no_dropout, rtol=0, atol=0)
    a = run(params, xs, jax.random.key(1))
    b = run(params, xs, jax.random.key(1))
    c = run(params, xs, jax.random.key(2))
    assert_trees_close(a, b, rtol=0, atol=0)
    assert not np.allclose(a[1], c[1]) and not np.allclose(a[1], no_key[1])
    # layer 0 never sees dropout: its final carry is the same with or without a key
    np.testing.assert_array_equal(a[0][0], no_key[0][0])


def test_stack_dropout_scaling_and_expectation():
    """A stack whose second layer is the identity on nonnegative inputs (ReLU RNN with
    w_x = I, w_h = 0, b = 0) exposes the dropped-out first-layer outputs: every entry is
    0 or y / (1 - p), and the mean over many keys is y (the expectation is preserved)."""
    rng = np.random.default_rng(8)
    p_drop, H = 0.4, 4
    net = jr.stack([jr.rnn(H, "relu"), jr.rnn(H, "relu")], dropout=p_drop)
    first = random_params(net.layers[0], 3, rng)
    first = dict(first, b=jnp.abs(first["b"]) + 0.5)  # mostly positive outputs
    ident = {"w_x": jnp.eye(H, dtype=jnp.float32), "w_h": jnp.zeros((H, H), jnp.float32), "b": jnp.zeros(H, jnp.float32)}
    params = [first, ident]
    xs = jnp.asarray(rng.normal(size=(2, 5, 3)), jnp.float32)
    _, y = jr.unroll(net, params, xs)
    n_keys = 4000
    keys = jax.random.split(jax.random.key(0), n_keys)
    ys = jax.jit(jax.vmap(lambda k: jr.unroll(net, params, xs, key=k)[1]))(keys)
    ys, y = np.asarray(ys, np.float64), np.asarray(y, np.float64)
    scaled = y / (1 - p_drop)
    is_zero = ys == 0
    assert np.all(is_zero | np.isclose(ys, scaled, rtol=1e-6, atol=0))
    keep_rate = 1 - is_zero[:, y > 0].mean()
    assert abs(keep_rate - (1 - p_drop)) < 0.01
    # mean over keys within 5 standard errors of y, entrywise
    se = y * np.sqrt(p_drop / (1 - p_drop) / n_keys)
    assert np.all(np.abs(ys.mean(0) - y) <= 5 * se + 1e-7)


def test_bidirectional_equals_forward_and_reversed_runs():
    rng = np.random.default_rng(9)
    bi = jr.bidirectional(jr.lstm(3), jr.gru(2))
    params = random_params(bi, 4, rng)
    xs = jnp.asarray(rng.normal(size=(3, 6, 4)), jnp.float32)
    lengths = jnp.array([6, 2, 4], jnp.int32)
    (cf, cb), ys = jr.unroll(bi, params, xs, lengths=lengths)
    assert ys.shape == (3, 6, 5) and jr.output_size(bi) == 5
    want_f = loop_reference(bi.forward, params["forward"], xs, bi.forward.initial_carry(3), lengths)
    want_b = loop_reference(bi.backward, params["backward"], xs, bi.backward.initial_carry(3), lengths, reverse=True)
    assert_trees_close((cf, ys[..., :3]), want_f)
    assert_trees_close((cb, ys[..., 3:]), want_b)
    # the backward half at t reads x[t..len-1]: reversing each row's valid part of the
    # input by hand and running forwards gives the backward outputs reversed back
    x_np = np.asarray(xs)
    x_rev = x_np.copy()
    for b, n in enumerate(np.asarray(lengths)):
        x_rev[b, :n] = x_np[b, :n][::-1]
    _, y_rev = jr.unroll(bi.backward, params["backward"], jnp.asarray(x_rev), lengths=lengths)
    y_back = np.asarray(y_rev).copy()
    for b, n in enumerate(np.asarray(lengths)):
        y_back[b, :n] = np.asarray(y_rev)[b, :n][::-1]
    np.testing.assert_allclose(ys[..., 3:], y_back, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------- errors (point 6)


@pytest.fixture
def gru_setup():
    cell = jr.gru(4)
    return cell, random_params(cell, 3, np.random.default_rng(0))


def test_error_xs_wrong_rank(gru_setup):
    cell, params = gru_setup
    with pytest.raises(ValueError, match=r"xs must have rank 2 or 3 .*got shape \(2, 5, 3, 1\) \(rank 4\)"):
        jr.unroll(cell, params, jnp.ones((2, 5, 3, 1), jnp.float32))
    with pytest.raises(ValueError, match=r"xs must have rank 2 or 3 .*got shape \(3,\) \(rank 1\)"):
        jax.jit(lambda x: jr.unroll(cell, params, x))(jnp.ones((3,), jnp.float32))


def test_error_xs_wrong_feature_size(gru_setup):
    cell, params = gru_setup
    with pytest.raises(ValueError, match=r"xs must have shape \(\.\.\., 3\) \(the input_size of params\['w_x'\]\), "
                       r"got xs with 5 features in its last axis"):
        jax.jit(lambda x: jr.unroll(cell, params, x))(jnp.ones((2, 5, 5), jnp.float32))


def test_error_xs_and_carry_batch_mismatch(gru_setup):
    cell, params = gru_setup
    with pytest.raises(ValueError, match=r"carry has batch shape \(3,\) but xs has batch shape \(2,\); they must match"):
        jax.jit(lambda x, c: jr.unroll(cell, params, x, c))(jnp.ones((2, 5, 3), jnp.float32), cell.initial_carry(3))


def test_error_lengths_wrong_shape(gru_setup):
    cell, params = gru_setup
    with pytest.raises(ValueError, match=r"lengths must have shape \(2,\) \(one length per row of xs\), got \(3,\)"):
        jax.jit(lambda x, n: jr.unroll(cell, params, x, lengths=n))(jnp.ones((2, 5, 3), jnp.float32), jnp.ones(3, jnp.int32))
    with pytest.raises(TypeError, match=r"lengths must have an integer dtype, got float32"):
        jr.unroll(cell, params, jnp.ones((2, 5, 3), jnp.float32), lengths=jnp.ones(2, jnp.float32))


def test_error_lengths_out_of_range(gru_setup):
    cell, params = gru_setup
    xs = jnp.ones((2, 5, 3), jnp.float32)
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, 5\] \(the time length of xs\), got values in \[1, 7\]"):
        jr.unroll(cell, params, xs, lengths=jnp.array([1, 7]))
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, 5\].*got values in \[-1, 2\]"):
        jr.unroll(cell, params, xs, lengths=jnp.array([-1, 2]))


def test_error_params_from_another_cell_type(gru_setup):
    cell, _ = gru_setup
    lstm_params = random_params(jr.lstm(4), 3, np.random.default_rng(0))
    with pytest.raises(TypeError, match=r"params for a GRU cell must have keys \['b', 'b_hn', 'w_h', 'w_x'\], "
                       r"got \['b', 'w_h', 'w_x'\] \(these look like params of an LSTM\)"):
        jax.jit(lambda p, x: jr.unroll(cell, p, x))(lstm_params, jnp.ones((2, 5, 3), jnp.float32))
    rnn_params = random_params(jr.rnn(4), 3, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"params\['w_h'\] must have shape \(4, 16\) for an LSTM cell with "
                       r"hidden_size=4, got \(4, 4\) \(these look like params of a plain RNN\)"):
        jr.unroll(jr.lstm(4), rnn_params, jnp.ones((2, 5, 3), jnp.float32))


def test_error_module_structure():
    xs = jnp.ones((2, 5, 3), jnp.float32)
    net = jr.stack([jr.gru(4), jr.gru(4)])
    params = random_params(net, 3, np.random.default_rng(0))
    with pytest.raises(TypeError, match=r"params of a 2-layer Stack must be a list of 2 per-layer params, got a list of length 1"):
        jr.unroll(net, params[:1], xs)
    with pytest.raises(TypeError, match=r"carry of a 2-layer Stack must be a tuple of 2 per-layer carries"):
        jr.unroll(net, params, xs, (net.layers[0].initial_carry(2),))
    bi = jr.bidirectional(jr.gru(4))
    with pytest.raises(TypeError, match=r"params of a Bidirectional layer must be a dict with keys \['backward', 'forward'\], got \['b', 'b_hn', 'w_h', 'w_x'\]"):
        jr.unroll(bi, params[0], xs)
    with pytest.raises(TypeError, match=r"cell must be a recurrent cell: an object with init, initial_carry, apply and hidden_size.*got a function"):
        jr.unroll(lambda: None, params, xs)


def test_error_options():
    cell = jr.rnn(4)
    params = random_params(cell, 3, np.random.default_rng(0))
    xs = jnp.ones((2, 5, 3), jnp.float32)
    with pytest.raises(ValueError, match=r"remat must be None, 'step', 'sqrt' or a positive int block length, got 0"):
        jr.unroll(cell, params, xs, remat=0)
    with pytest.raises(ValueError, match=r"unroll must be a positive int, got 0"):
        jr.unroll(cell, params, xs, unroll=0)
    with pytest.raises(TypeError, match=r"xs must have a floating dtype, got int32"):
        jr.unroll(cell, params, jnp.ones((2, 5, 3), jnp.int32))
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\), got 1.0"):
        jr.stack([cell], dropout=1.0)
    with pytest.raises(ValueError, match=r"reverse=True has no meaning for a Bidirectional layer"):
        bi = jr.bidirectional(cell)
        jr.unroll(bi, random_params(bi, 3, np.random.default_rng(0)), xs, reverse=True)


# --------------------------------------------------------------------------- padding and seeds


@pytest.mark.parametrize("kind", KINDS)
def test_nan_padding_changes_no_gradient(kind):
    """Whatever the padding after `lengths` holds (NaN, Inf), outputs and every gradient
    equal those with zeros there: fast path and generic path, both reading
    directions without remat, and every remat mode with one of them."""
    cell = make_cell(kind, 4)
    rng = np.random.default_rng(0)
    params = random_params(cell, 3, rng)
    carry = random_carry(cell, (3,), rng)
    xs = jnp.asarray(rng.normal(size=(3, 9, 3)), jnp.float32)
    lengths = jnp.array([9, 4, 0])
    pad = jnp.arange(9)[None, :, None] >= lengths[:, None, None]
    clean = jnp.where(pad, 0.0, xs)
    poisoned = jnp.where(pad, jnp.where(jnp.arange(3) % 2 == 0, jnp.nan, jnp.inf), xs)
    generic = cell._replace(fused=False)
    for c in (cell, generic):
        for remat, reverse in ((None, False), (None, True), ("step", True), (2, False), ("sqrt", True)):
            def loss(p, x, c0, c=c, remat=remat, reverse=reverse):
                cT, ys = jr.unroll(c, p, x, c0, lengths=lengths, remat=remat, reverse=reverse)
                return jnp.sum(ys ** 2) + sum(jnp.sum(v) for v in jax.tree.leaves(cT))

            g = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
            want, got = g(params, clean, carry), g(params, poisoned, carry)
            for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
                assert np.all(np.isfinite(np.asarray(a))), (kind, c.fused, remat, reverse)
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_init_takes_an_int_seed():
    for cell in (jr.lstm(4), jr.gru(4), jr.rnn(4), jr.stack([jr.gru(4), jr.lstm(3)]), jr.bidirectional(jr.rnn(2))):
        a, b = cell.init(7, 3), cell.init(jax.random.key(7), 3)
        for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
            np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
    with pytest.raises(TypeError, match=r"key must be an int seed or a PRNG key \(jax.random.key\(seed\)\), got str"):
        jr.lstm(4).init("0", 3)
    with pytest.raises(TypeError, match=r"key must be an int seed or a PRNG key .*got an array of dtype float32 and shape \(2,\)"):
        jr.gru(4).init(jnp.zeros(2, jnp.float32), 3)

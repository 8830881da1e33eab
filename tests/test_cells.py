"""Cells: one step against hand-written NumPy equations, initialisation, finite-difference
gradients in float64, jit/vmap/grad composition, dtypes and argument errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

import jaxrnn as jr
from conftest import KINDS, make_cell

GATES = {"rnn": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}




def random_params(kind, input_size, hidden_size, rng, dtype=jnp.float32, scale=0.5):
    """Random params with every entry nonzero (biases included), unlike ``init``."""
    g, h = GATES[kind], hidden_size
    shapes = {"w_x": (input_size, g * h), "w_h": (h, g * h), "b": (g * h,)}
    if kind == "gru":
        shapes["b_hn"] = (h,)
    return {k: jnp.asarray(scale * rng.normal(size=s), dtype) for k, s in shapes.items()}


def random_carry(kind, batch, hidden_size, rng, dtype=jnp.float32):
    draw = lambda: jnp.asarray(0.5 * rng.normal(size=tuple(batch) + (hidden_size,)), dtype)  # noqa: E731
    return (draw(), draw()) if kind == "lstm" else draw()


def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def numpy_step(kind, p, carry, x):
    """The cell equations written out again in float64 NumPy (PyTorch's documented forms)."""
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    x = np.asarray(x, np.float64)
    if kind.startswith("rnn"):
        h = np.asarray(carry, np.float64)
        pre = x @ p["w_x"] + p["b"] + h @ p["w_h"]
        h2 = np.tanh(pre) if kind == "rnn" else np.maximum(pre, 0.0)
        return h2, h2
    if kind == "lstm":
        h, c = (np.asarray(a, np.float64) for a in carry)
        H = h.shape[-1]
        z = x @ p["w_x"] + p["b"] + h @ p["w_h"]
        i, f, g, o = (z[..., k * H : (k + 1) * H] for k in range(4))
        c2 = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        h2 = sigmoid(o) * np.tanh(c2)
        return (h2, c2), h2
    h = np.asarray(carry, np.float64)
    H = h.shape[-1]
    gx = x @ p["w_x"] + p["b"]
    gh = h @ p["w_h"]
    r = sigmoid(gx[..., :H] + gh[..., :H])
    z = sigmoid(gx[..., H : 2 * H] + gh[..., H : 2 * H])
    n = np.tanh(gx[..., 2 * H :] + r * (gh[..., 2 * H :] + p["b_hn"]))
    h2 = (1 - z) * n + z * h
    return h2, h2


# ------------------------------------------------------------------- equations


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("batch", [(), (3,), (2, 3)])
def test_apply_matches_numpy_equations(kind, batch):
    rng = np.random.default_rng(0)
    cell = make_cell(kind, 5)
    params = random_params(kind, 4, 5, rng, jnp.float64)
    carry = random_carry(kind, batch, 5, rng, jnp.float64)
    x = jnp.asarray(rng.normal(size=batch + (4,)))
    new_carry, y = cell.apply(params, carry, x)
    ref_carry, ref_y = numpy_step(kind, params, carry, x)
    np.testing.assert_allclose(y, ref_y, rtol=1e-12, atol=1e-12)
    for a, b in zip(jax.tree.leaves(new_carry), jax.tree.leaves(ref_carry)):
        assert a.shape == batch + (5,)
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    # apply == step(project(x))
    c2, y2 = cell.step(params, carry, cell.project(params, x))
    np.testing.assert_allclose(y2, y, rtol=1e-14)


@settings(max_examples=8, deadline=None)
@given(
    kind=st.sampled_from(KINDS),
    input_size=st.integers(1, 6),
    hidden_size=st.integers(1, 6),
    batch=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_apply_matches_numpy_random_shapes(kind, input_size, hidden_size, batch, seed):
    rng = np.random.default_rng(seed)
    cell = make_cell(kind, hidden_size)
    params = random_params(kind, input_size, hidden_size, rng, jnp.float64, scale=1.0)
    carry = random_carry(kind, (batch,), hidden_size, rng, jnp.float64)
    x = jnp.asarray(rng.normal(size=(batch, input_size)))
    _, y = cell.apply(params, carry, x)
    np.testing.assert_allclose(y, numpy_step(kind, params, carry, x)[1], rtol=1e-11, atol=1e-12)


def test_lstm_forget_gate_keeps_memory():
    """With the forget gate saturated open and the input gate shut, c' == c exactly-ish."""
    cell = jr.lstm(3)
    h = 3
    b = np.zeros(4 * h)
    b[0:h] = -50.0  # i -> 0
    b[h : 2 * h] = 50.0  # f -> 1
    params = {"w_x": jnp.zeros((2, 4 * h)), "w_h": jnp.zeros((h, 4 * h)), "b": jnp.asarray(b)}
    c = jnp.array([[0.3, -1.2, 2.0]])
    (h2, c2), _ = cell.apply(params, (jnp.zeros((1, h)), c), jnp.ones((1, 2)))
    np.testing.assert_allclose(c2, c, atol=1e-15)
    np.testing.assert_allclose(h2, 0.5 * np.tanh(np.asarray(c)), atol=1e-15)  # o = sigmoid(0)


def test_gru_reset_gate_multiplies_hidden_bias():
    """b_hn sits inside r * (.): with r -> 0 it has no effect; with r -> 1 it adds to n."""
    cell = jr.gru(2)
    h0 = jnp.array([[0.7, -0.4]])
    base = {"w_x": jnp.zeros((1, 6)), "w_h": jnp.zeros((2, 6)), "b_hn": jnp.array([0.9, -0.3])}
    for r_bias, want_n in ((-60.0, 0.0), (60.0, np.tanh([0.9, -0.3]))):
        b = jnp.zeros(6).at[0:2].set(r_bias).at[2:4].set(-60.0)  # z -> 0: h' = n
        h1, _ = cell.apply(dict(base, b=b), h0, jnp.zeros((1, 1)))
        np.testing.assert_allclose(h1[0], want_n, atol=1e-12)


# ------------------------------------------------------------------- init / carry


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float64])
def test_init_shapes_dtypes_values(kind, dtype):
    h, n_in = 6, 40
    cell = make_cell(kind, h)
    g = GATES[kind]
    assert cell.num_gates == g and cell.hidden_size == h and cell.kind == kind
    p = cell.init(jax.random.key(0), n_in, dtype=dtype)
    want = {"w_x": (n_in, g * h), "w_h": (h, g * h), "b": (g * h,)}
    if kind == "gru":
        want["b_hn"] = (h,)
        assert not np.any(np.asarray(p["b_hn"], np.float32))
    assert {k: v.shape for k, v in p.items()} == want
    assert all(v.dtype == dtype for v in p.values())
    w_h = np.asarray(p["w_h"], np.float64)
    tol = 2e-2 if dtype == jnp.bfloat16 else 1e-5
    for k in range(g):  # every gate block is orthogonal
        q = w_h[:, k * h : (k + 1) * h]
        np.testing.assert_allclose(q.T @ q, np.eye(h), atol=tol)
    b = np.asarray(p["b"], np.float64)
    if kind == "lstm":  # forget_bias=1.0 by default, zeros elsewhere
        np.testing.assert_array_equal(b[h : 2 * h], 1.0)
        b = np.concatenate([b[:h], b[2 * h :]])
    assert not np.any(b)
    # LeCun normal: sample variance of w_x near 1/input_size (n_in * g * h >= 240 draws)
    var = float(np.var(np.asarray(p["w_x"], np.float64))) * n_in
    assert 0.6 < var < 1.5


def test_lstm_forget_bias_argument():
    p = jr.lstm(4, forget_bias=0.0).init(jax.random.key(1), 3)
    assert not np.any(np.asarray(p["b"]))
    p = jr.lstm(4, forget_bias=2.5).init(jax.random.key(1), 3)
    np.testing.assert_array_equal(p["b"][4:8], 2.5)


@pytest.mark.parametrize("kind", KINDS)
def test_initial_carry_shapes(kind):
    cell = make_cell(kind, 5)
    for batch_size, shape in ((3, (3, 5)), ((2, 4), (2, 4, 5)), (None, (5,)), ((), (5,))):
        carry = cell.initial_carry(batch_size, dtype=jnp.bfloat16)
        leaves = jax.tree.leaves(carry)
        assert len(leaves) == (2 if kind == "lstm" else 1)
        assert all(a.shape == shape and a.dtype == jnp.bfloat16 and not np.any(np.asarray(a, np.float32)) for a in leaves)
    assert jax.tree.leaves(cell.initial_carry())[0].shape == (5,)


# ------------------------------------------------------------------- gradients / transforms


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_match_finite_differences_float64(kind):
    rng = np.random.default_rng(3)
    cell = make_cell(kind, 3)
    params = random_params(kind, 2, 3, rng, jnp.float64)
    carry = random_carry(kind, (2,), 3, rng, jnp.float64)
    if kind == "rnn_relu":  # keep pre-activations away from the kink at 0
        params = dict(params, b=params["b"] + 2.0)
    x = jnp.asarray(rng.normal(size=(2, 2)))
    f = jax.jit(lambda p, c, x: cell.apply(p, c, x))
    check_grads(f, (params, carry, x), order=1, modes=("rev",), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("kind", ["lstm", "gru"])  # tuple and single-array carries
def test_jit_vmap_grad_compose(kind):
    rng = np.random.default_rng(4)
    cell = make_cell(kind, 4)
    params = random_params(kind, 3, 4, rng)
    carry = random_carry(kind, (5,), 4, rng)
    x = jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)
    eager = cell.apply(params, carry, x)
    jitted = jax.jit(cell.apply)(params, carry, x)
    mapped = jax.vmap(cell.apply, in_axes=(None, 0, 0))(params, carry, x)  # unbatched apply per row
    for a, b, c in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted), jax.tree.leaves(mapped)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(a, c, rtol=1e-6, atol=1e-6)

    def loss(p, c, x):
        return jnp.sum(cell.apply(p, c, x)[1] ** 2)

    g_batch = jax.grad(loss)(params, carry, x)
    # per-example grads via vmap(grad) summed == grad of the summed loss
    g_rows = jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0, 0)))(params, carry, x)
    for a, b in zip(jax.tree.leaves(g_batch), jax.tree.leaves(g_rows)):
        np.testing.assert_allclose(a, jnp.sum(b, axis=0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["lstm", "gru"])  # all kinds: tests/test_unroll.py
def test_bfloat16_and_float64_close_to_float32(kind):
    rng = np.random.default_rng(5)
    cell = make_cell(kind, 8)
    p32 = random_params(kind, 4, 8, rng)
    c32 = random_carry(kind, (3,), 8, rng)
    x32 = jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)
    _, y32 = cell.apply(p32, c32, x32)
    for dtype, tol in ((jnp.float64, 1e-6), (jnp.bfloat16, 5e-2)):
        cast = lambda t: jax.tree.map(lambda a: a.astype(dtype), t)  # noqa: E731
        carry, y = cell.apply(cast(p32), cast(c32), x32.astype(dtype))
        assert y.dtype == dtype and all(a.dtype == dtype for a in jax.tree.leaves(carry))
        np.testing.assert_allclose(np.asarray(y, np.float32), y32, atol=tol, rtol=tol)


def shaped_params(cell, input_size):
    """Zero params with the shapes ``cell.init`` gives (traced only, nothing compiled)."""
    shapes = jax.eval_shape(lambda: cell.init(jax.random.key(0), input_size))
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


# ------------------------------------------------------------------- errors


def test_error_params_from_another_cell_type_keys():
    gru_params = shaped_params(jr.gru(4), 3)
    with pytest.raises(TypeError, match=r"params for an LSTM cell must have keys \['b', 'w_h', 'w_x'\], "
                       r"got \['b', 'b_hn', 'w_h', 'w_x'\] \(these look like params of a GRU\)"):
        jr.lstm(4).apply(gru_params, jr.lstm(4).initial_carry(2), jnp.ones((2, 3), jnp.float32))


def test_error_params_from_another_cell_type_shapes():
    rnn_params = shaped_params(jr.rnn(4), 3)
    with pytest.raises(ValueError, match=r"params\['w_h'\] must have shape \(4, 16\) for an LSTM cell with "
                       r"hidden_size=4, got \(4, 4\) \(these look like params of a plain RNN\)"):
        jr.lstm(4).apply(rnn_params, jr.lstm(4).initial_carry(2), jnp.ones((2, 3), jnp.float32))


def test_error_x_wrong_feature_size():
    cell = jr.gru(4)
    p = shaped_params(cell, 3)
    with pytest.raises(ValueError, match=r"x_t must have shape \(\.\.\., 3\) to match params\['w_x'\] "
                       r"\(input_size=3\), got \(2, 5\)"):
        jax.jit(cell.apply)(p, cell.initial_carry(2), jnp.ones((2, 5), jnp.float32))


def test_error_x_and_carry_batch_mismatch():
    cell = jr.rnn(4)
    p = shaped_params(cell, 3)
    with pytest.raises(ValueError, match=r"x_t has batch shape \(2,\) but carry has batch shape \(3,\)"):
        cell.apply(p, cell.initial_carry(3), jnp.ones((2, 3), jnp.float32))


def test_error_carry_structure_and_size():
    lstm = jr.lstm(4)
    p = shaped_params(lstm, 3)
    x = jnp.ones((2, 3), jnp.float32)
    with pytest.raises(TypeError, match=r"carry of an LSTM cell must be a pair \(h, c\).*got ArrayImpl"):
        lstm.apply(p, jnp.zeros((2, 4)), x)
    with pytest.raises(ValueError, match=r"carry c must have shape \(\.\.\., 4\) for hidden_size=4, got \(2, 5\)"):
        lstm.apply(p, (jnp.zeros((2, 4)), jnp.zeros((2, 5))), x)
    g = jr.gru(4)
    with pytest.raises(TypeError, match=r"carry of a GRU cell must be one array.*\(an LSTM carry\?\)"):
        g.apply(shaped_params(g, 3), lstm.initial_carry(2), x)


def test_error_step_projected_input_shape():
    cell = jr.lstm(4)
    p = shaped_params(cell, 3)
    with pytest.raises(ValueError, match=r"xp_t must have shape \(2, 16\).*got \(2, 12\)"):
        cell.step(p, cell.initial_carry(2), jnp.ones((2, 12), jnp.float32))


def test_error_constructor_and_init_arguments():
    with pytest.raises(ValueError, match=r"activation must be 'tanh' or 'relu', got 'sigmoid'"):
        jr.rnn(4, activation="sigmoid")
    with pytest.raises(ValueError, match=r"hidden_size must be a positive int, got 0"):
        jr.gru(0)
    with pytest.raises(TypeError, match=r"hidden_size must be a positive int, got 4.0"):
        jr.lstm(4.0)
    with pytest.raises(ValueError, match=r"input_size must be a positive int, got -1"):
        jr.gru(4).init(jax.random.key(0), -1)
    with pytest.raises(TypeError, match=r"dtype must be a floating dtype, got int32"):
        jr.gru(4).init(jax.random.key(0), 3, dtype=jnp.int32)
    with pytest.raises(TypeError, match=r"batch_size must be an int, a tuple of ints or None, got 2.5"):
        jr.gru(4).initial_carry(2.5)
    with pytest.raises(TypeError, match=r"x_t must have a floating dtype, got int32"):
        jr.rnn(4).apply(shaped_params(jr.rnn(4), 3), jr.rnn(4).initial_carry(2), jnp.ones((2, 3), jnp.int32))

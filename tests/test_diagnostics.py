"""Tests of jaxrnn.diagnostics: bounds on random cells, parity with direct jax.grad /
jax.jacobian through jr.unroll, hand-computed Elman Jacobians, reductions, errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrnn as jr
from jaxrnn import diagnostics as dg

F64 = jnp.float64
HIDDEN = 5
# One cell object per kind, so jitted functions below are traced once per kind.
CELLS = {
    "rnn": jr.rnn(HIDDEN, "tanh"),
    "rnn_relu": jr.rnn(HIDDEN, "relu"),
    "lstm": jr.lstm(HIDDEN),
    "gru": jr.gru(HIDDEN),
}
_JN = {k: jax.jit(functools.partial(dg.jacobian_norms, c)) for k, c in CELLS.items()}
_BOUND = {k: jax.jit(functools.partial(dg.elman_bound, CELLS[k]), static_argnums=1) for k in ("rnn", "rnn_relu")}


def _random_setup(kind, seed, inputs=3, steps=7, batch=None, w_scale=None):
    """A cell with random (not only orthogonal) weights, inputs and a non-zero carry."""
    cell = CELLS[kind]
    hidden = HIDDEN
    k = jax.random.split(jax.random.key(seed), 6)
    params = cell.init(k[0], inputs, F64)
    if w_scale is not None:
        w = jax.random.normal(k[1], params["w_h"].shape, F64) / np.sqrt(hidden)
        params = dict(params, w_h=w_scale * w)
    params = dict(params, b=0.3 * jax.random.normal(k[2], params["b"].shape, F64))
    shape = (steps, inputs) if batch is None else (batch, steps, inputs)
    xs = jax.random.normal(k[3], shape, F64)
    bshape = () if batch is None else (batch,)
    h0 = 0.5 * jax.random.normal(k[4], bshape + (hidden,), F64)
    carry = (h0, 0.5 * jax.random.normal(k[5], bshape + (hidden,), F64)) if kind == "lstm" else h0
    return cell, params, xs, carry


# ----------------------------------------------------------------- bounds


@pytest.mark.parametrize("kind", ["rnn", "rnn_relu"])
@pytest.mark.parametrize("w_scale", [0.5, 1.0, 1.7, 3.0])
def test_elman_jacobian_products_never_exceed_bound(kind, w_scale):
    for seed in range(3):
        cell, params, xs, carry = _random_setup(kind, seed, steps=9, w_scale=w_scale)
        jn = _JN[kind](params, xs, carry)
        bound = _BOUND[kind](params, 9)
        gamma = float(dg.spectral_norm(params["w_h"])) * dg.activation_bound(cell)
        tol = 1 + 1e-9
        lower = np.tril(np.ones((9, 9), bool))
        assert np.all(np.asarray(jn.products) <= np.asarray(bound) * tol)
        assert np.all(np.asarray(jn.step_bound) <= np.asarray(bound) * tol)
        assert np.all(np.asarray(jn.products) <= np.asarray(jn.step_bound) * tol)
        assert np.all(np.asarray(jn.steps) <= gamma * tol)
        np.testing.assert_allclose(np.diagonal(jn.products), 1.0, rtol=1e-12)
        assert np.all(np.asarray(jn.products)[~lower] == 0)
        # the bound is (gamma)^(s - t) exactly
        s, t = 6, 2
        np.testing.assert_allclose(float(bound[s, t]), gamma ** (s - t), rtol=1e-12)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_gated_products_below_step_bound(kind):
    for seed in range(3):
        cell, params, xs, carry = _random_setup(kind, seed, steps=6, w_scale=2.0)
        jn = _JN[kind](params, xs, carry)
        assert np.all(np.asarray(jn.products) <= np.asarray(jn.step_bound) * (1 + 1e-9))


def test_relative_gradients_below_products_and_bound():
    cell, params, xs, carry = _random_setup("rnn", 4, steps=9, w_scale=1.3)
    v = jax.random.normal(jax.random.key(9), (HIDDEN,), F64)
    loss_fn = lambda ys: jnp.tanh(ys @ v) ** 2  # noqa: E731  L_s reads step s only
    rel = jax.jit(dg.gradient_norms, static_argnums=(0, 3, 5))(cell, params, xs, loss_fn, carry, True)
    jn = _JN["rnn"](params, xs, carry)
    bound = _BOUND["rnn"](params, 9)
    np.testing.assert_allclose(np.diagonal(rel), 1.0, rtol=1e-12)
    assert np.all(np.asarray(rel) <= np.asarray(jn.products) * (1 + 1e-9))
    assert np.all(np.asarray(rel) <= np.asarray(bound) * (1 + 1e-9))
    assert np.any(np.asarray(rel)[np.tril_indices(9, -1)] < 0.5)  # it does vanish somewhere


# ----------------------------------------------------------------- parity


def _flat(kind, c):
    return jnp.concatenate(c, -1) if kind == "lstm" else c


def _out(kind, c):
    return c[0] if kind == "lstm" else c


def _unflat(kind, v):
    return (v[..., :HIDDEN], v[..., HIDDEN:]) if kind == "lstm" else v


@pytest.mark.parametrize("kind", list(CELLS))
def test_jacobian_products_match_direct_jacobian(kind):
    steps = 6
    cell, params, xs, carry = _random_setup(kind, 1, steps=steps)

    @jax.jit
    def direct(params, xs, carry):
        # Independent path: a Python loop of cell.apply and jax.jacfwd of h_t -> h_s.
        states, c = [], carry
        for k in range(steps):
            c, _ = cell.apply(params, c, xs[k])
            states.append(c)
        out = []
        for t in range(steps - 1):

            def later(v, t=t):
                c, res = _unflat(kind, v), []
                for k in range(t + 1, steps):
                    c, _ = cell.apply(params, c, xs[k])
                    res.append(_flat(kind, c))
                return jnp.stack(res)

            out.append(jax.jacfwd(later)(_flat(kind, states[t])))  # (steps-t-1, D, D)
        return out

    jacs = direct(params, xs, carry)
    jn = _JN[kind](params, xs, carry)
    jn_fro = jax.jit(functools.partial(dg.jacobian_norms, cell, ord="fro"))(params, xs, carry)
    for t in range(steps - 1):
        for s in range(t + 1, steps):
            jac = np.asarray(jacs[t][s - t - 1])
            np.testing.assert_allclose(float(jn.products[s, t]), np.linalg.norm(jac, 2), rtol=1e-10)
            np.testing.assert_allclose(float(jn_fro.products[s, t]), np.linalg.norm(jac, "fro"), rtol=1e-10)


@pytest.mark.parametrize("kind", ["rnn", "rnn_relu"])
def test_elman_step_jacobians_by_hand(kind):
    cell, params, xs, carry = _random_setup(kind, 2, steps=4)
    jac = dg.step_jacobians(cell, params, xs, carry)
    h = np.asarray(carry)
    w_x, w_h, b = (np.asarray(params[k]) for k in ("w_x", "w_h", "b"))
    for k in range(4):
        z = np.asarray(xs[k]) @ w_x + b + h @ w_h
        dphi = 1 - np.tanh(z) ** 2 if kind == "rnn" else (z > 0).astype(float)
        np.testing.assert_allclose(np.asarray(jac[k]), np.diag(dphi) @ w_h.T, rtol=1e-12, atol=1e-14)
        h = np.tanh(z) if kind == "rnn" else np.maximum(z, 0)


@pytest.mark.parametrize("kind,batch", [("rnn", None), ("rnn_relu", 2), ("lstm", 2), ("gru", None)])
def test_state_gradients_match_direct_grad(kind, batch):
    steps = 4
    cell, params, xs, carry = _random_setup(kind, 3, steps=steps, batch=batch)
    v = jax.random.normal(jax.random.key(7), (5, 3), F64)
    target = jax.random.randint(jax.random.key(8), (steps,), 0, 3)

    def loss_fn(ys):  # per-step cross-entropy of a linear head, averaged over the batch
        logits = ys @ v
        logp = jax.nn.log_softmax(logits, -1)
        picked = jnp.take_along_axis(logp, jnp.broadcast_to(target[:, None], logp.shape[:-1] + (1,)), -1)[..., 0]
        return -(picked.mean(0) if batch else picked)

    grads, norms = jax.jit(
        lambda p, x, c: (dg.state_gradients(cell, p, x, loss_fn, c), dg.gradient_norms(cell, p, x, loss_fn, c))
    )(params, xs, carry)
    t_ax = 0 if batch is None else 1

    @jax.jit
    def direct(params, xs, carry):
        # Independent path: run jr.unroll to h_t, then jax.jacrev of all losses w.r.t. h_t.
        out = []
        for t in range(steps):
            c_t, ys_before = jr.unroll(cell, params, jax.lax.slice_in_dim(xs, 0, t + 1, axis=t_ax), carry)

            def from_t(c, t=t, ys_before=ys_before):
                parts = [jax.lax.slice_in_dim(ys_before, 0, t, axis=t_ax), jnp.expand_dims(_out(kind, c), t_ax)]
                if t + 1 < steps:
                    parts.append(jr.unroll(cell, params, jax.lax.slice_in_dim(xs, t + 1, steps, axis=t_ax), c)[1])
                return loss_fn(jnp.concatenate(parts, axis=t_ax))

            out.append(jax.jacrev(from_t)(c_t))  # leaves (s, *state)
        return out

    wants = direct(params, xs, carry)
    for t in range(steps):
        want = wants[t]
        got = jax.tree_util.tree_map(lambda g: g[:, t], grads)
        for w, g in zip(jax.tree_util.tree_leaves(want), jax.tree_util.tree_leaves(got)):
            np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-10, atol=1e-13)
        want_norm = np.sqrt(sum(np.sum(np.asarray(w).reshape(steps, -1) ** 2, 1) for w in jax.tree_util.tree_leaves(want)))
        np.testing.assert_allclose(np.asarray(norms[:, t]), want_norm, rtol=1e-10, atol=1e-13)
    # causality: no gradient from L_s to a later state
    assert np.all(np.asarray(norms)[np.triu_indices(steps, 1)] == 0)


def test_jit_matches_eager_and_batched_is_per_row():
    cell, params, xs, carry = _random_setup("gru", 5, batch=2, steps=6)
    # With a loss summed over the rows, row b's gradient is that of row b alone, so the
    # batched norm is the root sum of squares of the per-row norms.
    batched = jax.jit(dg.gradient_norms, static_argnums=(0, 3))(
        cell, params, xs, lambda ys: jnp.sum(jnp.tanh(ys) ** 2, axis=(0, 2)), carry
    )
    row_norms = jax.jit(functools.partial(dg.gradient_norms, cell, loss_fn=lambda ys: jnp.sum(jnp.tanh(ys) ** 2, axis=-1)))
    rows = [np.asarray(row_norms(params, xs[b], carry=carry[b])) for b in range(2)]
    np.testing.assert_allclose(np.asarray(batched), np.sqrt(rows[0] ** 2 + rows[1] ** 2), rtol=1e-12)
    jn = jax.jit(functools.partial(dg.jacobian_norms, cell))(params, xs, carry)
    assert jn.products.shape == (2, 6, 6) and jn.steps.shape == (2, 6)
    for b in range(2):
        one = _JN["gru"](params, xs[b], carry[b])  # unbatched, shares its compile with other tests
        np.testing.assert_allclose(np.asarray(jn.products[b]), np.asarray(one.products), rtol=1e-12)
        np.testing.assert_allclose(np.asarray(jn.step_bound[b]), np.asarray(one.step_bound), rtol=1e-12)


# ----------------------------------------------------------------- weight norms


def test_spectral_and_gate_norms():
    cell = jr.lstm(4)
    params = cell.init(jax.random.key(0), 2, F64)
    # orthogonal init: each gate block has norm 1, the four side by side have norm 2
    for g, v in jax.jit(dg.recurrent_norms, static_argnums=0)(cell, params).items():
        assert float(v) == pytest.approx(2.0 if g == "w_h" else 1.0, abs=1e-6)  # float32 orthogonal, cast
    params = dict(params, w_h=jax.random.normal(jax.random.key(1), (4, 16), F64))
    norms = jax.jit(dg.recurrent_norms, static_argnums=0)(cell, params)
    w = np.asarray(params["w_h"])
    np.testing.assert_allclose(float(norms["w_h"]), np.linalg.svd(w, compute_uv=False)[0], rtol=1e-12)
    for i, g in enumerate("ifgo"):
        np.testing.assert_allclose(float(norms[g]), np.linalg.svd(w[:, 4 * i : 4 * i + 4], compute_uv=False)[0], rtol=1e-12)
    gru = jr.gru(4)
    assert sorted(jax.eval_shape(lambda p: dg.recurrent_norms(gru, p), gru.init(jax.random.key(0), 1))) == ["n", "r", "w_h", "z"]
    assert float(dg.spectral_norm(jnp.array([[0.0, 2.0], [-3.0, 0.0]]))) == pytest.approx(3.0)


def test_elman_bound_values():
    cell = jr.rnn(3, "relu")
    params = dict(cell.init(jax.random.key(0), 1, F64), w_h=jnp.diag(jnp.array([2.0, -1.0, 0.5], F64)))
    b = np.asarray(dg.elman_bound(cell, params, 4))
    want = np.array([[1, 0, 0, 0], [2, 1, 0, 0], [4, 2, 1, 0], [8, 4, 2, 1]], float)
    np.testing.assert_array_equal(b, want)


def test_by_distance():
    m = jnp.array([[1.0, 9.0, 9.0], [2.0, 3.0, 9.0], [4.0, 8.0, 5.0]])
    np.testing.assert_allclose(dg.by_distance(m), [3.0, 5.0, 4.0])
    np.testing.assert_allclose(dg.by_distance(m, "max"), [5.0, 8.0, 4.0])
    np.testing.assert_allclose(dg.by_distance(m, "min"), [1.0, 2.0, 4.0])
    np.testing.assert_allclose(dg.by_distance(m, "median"), [3.0, 5.0, 4.0])
    np.testing.assert_allclose(dg.by_distance(m, "geomean"), [15 ** (1 / 3), 4.0, 4.0], rtol=1e-6)
    assert dg.by_distance(jnp.stack([m, 2 * m])).shape == (2, 3)


# ----------------------------------------------------------------- errors


def test_errors_name_the_argument():
    cell = jr.rnn(4)
    params = cell.init(jax.random.key(0), 2)
    xs = jnp.ones((5, 2), jnp.float32)
    with pytest.raises(TypeError, match="cell must be a recurrent cell: an object with init, initial_carry, apply and hidden_size"):
        dg.jacobian_norms(object(), params, xs)
    with pytest.raises(ValueError, match=r"xs must have shape \(..., 2\) \(the input_size of params\[.w_x.\]\), got xs with 3 features"):
        dg.jacobian_norms(cell, params, jnp.ones((5, 3), jnp.float32))
    with pytest.raises(ValueError, match="xs must have rank"):
        dg.jacobian_norms(cell, params, jnp.ones((5,), jnp.float32))
    with pytest.raises(ValueError, match="loss_fn must return the per-step losses, shape \\(5,\\)"):
        dg.gradient_norms(cell, params, xs, lambda ys: ys.sum())
    with pytest.raises(TypeError, match="loss_fn must be a callable"):
        dg.gradient_norms(cell, params, xs, 3)
    with pytest.raises(ValueError, match="carry has batch shape"):
        dg.jacobian_norms(cell, params, xs, jnp.zeros((2, 4), jnp.float32))
    with pytest.raises(ValueError, match="ord must be"):
        dg.jacobian_norms(cell, params, xs, ord=1)
    with pytest.raises(TypeError, match="Elman cells"):
        dg.elman_bound(jr.lstm(4), jr.lstm(4).init(jax.random.key(0), 2), 5)
    with pytest.raises(ValueError, match="num_steps"):
        dg.elman_bound(cell, params, 0)
    with pytest.raises(ValueError, match="reduce must be one of"):
        dg.by_distance(jnp.ones((3, 3)), "sum")
    with pytest.raises(ValueError, match="m must have shape"):
        dg.by_distance(jnp.ones((3, 2)))
    with pytest.raises(ValueError, match="w must be a matrix"):
        dg.spectral_norm(jnp.ones((3,)))

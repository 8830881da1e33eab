"""Full BPTT steps over whole sequences: hand-computed reference, metrics, pytrees."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxrnn as jr

H, F, B, L = 4, 3, 3, 6
tmap = jax.tree_util.tree_map


def make_params(seed=0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return {"rnn": jr.rnn(H).init(k1, F, jnp.float64), "out": jax.random.normal(k2, (H, 1), jnp.float64)}


def loss_fn(params, carry, x, y):
    carry, hs = jr.unroll(jr.rnn(H), params["rnn"], x, carry)
    return jnp.mean((hs @ params["out"] - y) ** 2), carry


@jax.jit
def ref_loss(params, h, x, y):
    """Independent forward: an explicit loop of h' = tanh(x W_x + b + h W_h)."""
    p, total = params["rnn"], 0.0
    for t in range(x.shape[1]):
        h = jnp.tanh(x[:, t] @ p["w_x"] + p["b"] + h @ p["w_h"])
        total = total + jnp.mean((h @ params["out"] - y[:, t]) ** 2)
    return total / x.shape[1]


def dataset(n=7, seed=1):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, L, F)), rng.normal(size=(n, L, 1))


def test_bptt_steps_match_hand_computed_sgd():
    lr = 0.25
    params = make_params()
    h0 = jnp.full((B, H), 0.1)
    tx = optax.sgd(lr)
    step = jr.bptt.make_step(loss_fn, tx)
    state = jr.bptt.init_state(params, tx, h0)
    want = params
    for x, y in jr.data.sequence_batches(dataset(), B, seed=0, drop_remainder=True):
        state, m = step(state, x, y)
        loss, g = jax.value_and_grad(ref_loss)(want, h0, x, y)
        np.testing.assert_allclose(m["loss"], loss, rtol=1e-12)
        np.testing.assert_allclose(m["grad_norm"], optax.tree.norm(g), rtol=1e-12)
        want = tmap(lambda p, gi: p - lr * gi, want, g)
    for a, b in zip(jax.tree_util.tree_leaves(state.params), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(state.carry, h0)  # every sequence starts from the same carry
    assert int(state.step) == 2 and step.trace_count == 1


def test_grad_norm_is_before_clipping_and_update_is_clipped():
    params = make_params(seed=2)
    h0 = jnp.zeros((B, H))
    x, y = (a[:B] * 5.0 for a in dataset(seed=3))
    g = jax.grad(ref_loss)(params, h0, x, y)
    gnorm = float(optax.tree.norm(g))
    m_norm = gnorm / 10
    tx = jr.clipped(optax.sgd(1.0), max_norm=m_norm)
    state, m = jr.bptt.make_step(loss_fn, tx)(jr.bptt.init_state(params, tx, h0), x, y)
    np.testing.assert_allclose(m["grad_norm"], gnorm, rtol=1e-12)
    change = tmap(jnp.subtract, state.params, params)
    np.testing.assert_allclose(optax.tree.norm(change), m_norm, rtol=1e-10)


def test_bptt_skips_nonfinite_and_takes_pytree_inputs():
    params = make_params(seed=4)
    xs, ys = dataset(seed=5)
    x, y = xs[:B], ys[:B]
    tx = jr.clipped(optax.adam(0.01), 1.0, skip_nonfinite=True)

    def masked_loss(params, carry, inputs, y):
        carry, hs = jr.unroll(jr.rnn(H), params["rnn"], inputs["x"], carry, lengths=inputs["lengths"])
        return jnp.mean((hs @ params["out"] - y) ** 2), carry

    step = jr.bptt.make_step(masked_loss, tx)
    state = jr.bptt.init_state(params, tx, None)
    full = {"x": x, "lengths": np.full(B, L, np.int32)}
    state, m = step(state, full, y)
    plain, pm = jr.bptt.make_step(loss_fn, tx)(jr.bptt.init_state(params, tx, None), x, y)
    for a, b in zip(jax.tree_util.tree_leaves(state.params), jax.tree_util.tree_leaves(plain.params)):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    before = tmap(np.array, state.params)
    state, m = step(state, {"x": x.copy() * np.nan, "lengths": full["lengths"]}, y)
    assert int(m["skipped"]) == 1
    for a, b in zip(jax.tree_util.tree_leaves(state.params), jax.tree_util.tree_leaves(before)):
        np.testing.assert_array_equal(a, b)


def test_bptt_validates_arguments():
    with pytest.raises(TypeError, match="loss_fn"):
        jr.bptt.make_step(None, optax.sgd(0.1))
    with pytest.raises(TypeError, match="tx"):
        jr.bptt.init_state(make_params(), None)

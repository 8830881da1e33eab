"""Clipping by global norm and skipping non-finite gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxrnn as jr
from jaxrnn import optim


def tree_norm(tree):
    return float(np.sqrt(sum(np.sum(np.asarray(x, np.float64) ** 2) for x in jax.tree_util.tree_leaves(tree))))


def grads_of_norm(norm, seed=0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    g = {"w": jax.random.normal(k1, (4, 3), jnp.float64), "b": jax.random.normal(k2, (3,), jnp.float64)}
    scale = norm / tree_norm(g)
    return jax.tree_util.tree_map(lambda x: x * scale, g)


@pytest.mark.parametrize("m", [0.5, 1.0, 7.25])
def test_clipped_sgd_update_has_norm_exactly_max_norm(m):
    tx = jr.clipped(optax.sgd(1.0), max_norm=m)
    params = jax.tree_util.tree_map(jnp.zeros_like, grads_of_norm(1.0))
    state = tx.init(params)
    for norm in (1.5 * m, 10 * m, 1e4 * m):
        g = grads_of_norm(norm, seed=int(norm))
        updates, _ = tx.update(g, state, params)
        np.testing.assert_allclose(tree_norm(updates), m, rtol=1e-14)
        # direction kept: update = -(m / ||g||) g
        for u, v in zip(jax.tree_util.tree_leaves(updates), jax.tree_util.tree_leaves(g)):
            np.testing.assert_allclose(u, -(m / norm) * v, rtol=1e-13)
    small = grads_of_norm(0.5 * m, seed=3)
    updates, _ = tx.update(small, state, params)
    for u, v in zip(jax.tree_util.tree_leaves(updates), jax.tree_util.tree_leaves(small)):
        np.testing.assert_allclose(u, -v, rtol=1e-15)  # below max_norm: untouched


def test_clipped_is_chain_of_clip_then_optimizer():
    g = grads_of_norm(20.0)
    params = jax.tree_util.tree_map(jnp.ones_like, g)
    a = jr.clipped(optax.adam(0.1), 3.0)
    b = optax.chain(optax.clip_by_global_norm(3.0), optax.adam(0.1))
    sa, sb = a.init(params), b.init(params)
    for _ in range(3):
        ua, sa = a.update(g, sa, params)
        ub, sb = b.update(g, sb, params)
        for u, v in zip(jax.tree_util.tree_leaves(ua), jax.tree_util.tree_leaves(ub)):
            np.testing.assert_array_equal(u, v)


def test_nan_gradient_with_skipping_leaves_params_unchanged_and_counts():
    tx = jr.clipped(optax.adam(0.1), 1.0, skip_nonfinite=True)
    params = {"w": jnp.arange(6.0).reshape(2, 3)}
    state = tx.init(params)
    assert int(optim.skipped_steps(state)) == 0
    good = {"w": jnp.ones((2, 3))}
    updates, state = tx.update(good, state, params)
    params = optax.apply_updates(params, updates)
    before, inner_before = np.array(params["w"]), jax.tree_util.tree_map(np.array, state.inner_state)
    for bad in (jnp.nan, jnp.inf):
        updates, state = tx.update({"w": good["w"].at[1, 2].set(bad)}, state, params)
        params = optax.apply_updates(params, updates)
        np.testing.assert_array_equal(params["w"], before)
        for u, v in zip(jax.tree_util.tree_leaves(state.inner_state), jax.tree_util.tree_leaves(inner_before)):
            np.testing.assert_array_equal(u, v)  # moments and count untouched
    assert int(optim.skipped_steps(state)) == 2
    updates, state = tx.update(good, state, params)
    assert not np.array_equal(optax.apply_updates(params, updates)["w"], before)
    assert int(optim.skipped_steps(state)) == 2


def test_without_skipping_nan_poisons_params_and_no_count():
    tx = jr.clipped(optax.sgd(0.1), 1.0)
    params = {"w": jnp.zeros(3)}
    state = tx.init(params)
    assert optim.skipped_steps(state) is None and not optim.has_skipping(state)
    updates, _ = tx.update({"w": jnp.array([1.0, jnp.nan, 0.0])}, state, params)
    assert np.isnan(np.asarray(optax.apply_updates(params, updates)["w"])).all()


def test_skip_nonfinite_gives_up_after_max_consecutive():
    tx = optim.skip_nonfinite(optax.sgd(1.0), max_consecutive=1)
    params = {"w": jnp.zeros(2)}
    state = tx.init(params)
    bad = {"w": jnp.array([jnp.nan, 1.0])}
    u1, state = tx.update(bad, state, params)
    u2, state = tx.update(bad, state, params)
    np.testing.assert_array_equal(u1["w"], [0.0, 0.0])
    assert np.isnan(np.asarray(u2["w"][0]))


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf"), float("nan"), "5", True])
def test_clipped_validates_max_norm(bad):
    with pytest.raises(ValueError, match="max_norm"):
        jr.clipped(optax.sgd(1.0), bad)


def test_clipped_validates_optimizer():
    with pytest.raises(TypeError, match="optimizer"):
        jr.clipped(0.1, 1.0)
    with pytest.raises(ValueError, match="max_consecutive"):
        optim.skip_nonfinite(optax.sgd(1.0), max_consecutive=-1)

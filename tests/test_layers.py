"""Time-distributed layers against NumPy: embedding lookup, affine map, masked softmax
cross-entropy (hand-computed log-softmax), and the invariants of inverted dropout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxrnn as jr

L = jr.layers


def np_log_softmax(z):
    z = np.asarray(z, np.float64)
    m = z.max(axis=-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))


# ------------------------------------------------------------------- embedding / affine


def test_embedding_matches_table_lookup():
    emb = L.embedding(vocab_size=7, embed_size=3, scale=0.5)
    params = emb.init(jax.random.key(0))
    table = np.asarray(params["table"])
    assert table.shape == (7, 3) and params["table"].dtype == jnp.float32
    ids = np.array([[0, 6, 2, 2], [5, 1, 0, 3]])
    out = emb.apply(params, jnp.asarray(ids))
    assert out.shape == (2, 4, 3)
    np.testing.assert_array_equal(out, table[ids])
    np.testing.assert_array_equal(jax.jit(emb.apply)(params, jnp.asarray(ids[0])), table[ids[0]])
    assert emb.init(jax.random.key(0), dtype=jnp.bfloat16)["table"].dtype == jnp.bfloat16
    # the gradient of a lookup scatters-adds into the rows used
    g = jax.grad(lambda p: jnp.sum(emb.apply(p, jnp.asarray(ids))))(params)["table"]
    np.testing.assert_array_equal(g[:, 0], np.bincount(ids.ravel(), minlength=7))


def test_affine_matches_numpy():
    rng = np.random.default_rng(0)
    head = L.affine(out_size=5)
    params = head.init(jax.random.key(1), in_size=4)
    assert params["w"].shape == (4, 5) and not np.any(np.asarray(params["b"]))
    params = dict(params, b=jnp.asarray(rng.normal(size=5), jnp.float32))
    x = rng.normal(size=(2, 3, 4)).astype(np.float32)
    want = x.astype(np.float64) @ np.asarray(params["w"], np.float64) + np.asarray(params["b"], np.float64)
    np.testing.assert_allclose(head.apply(params, jnp.asarray(x)), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(head.apply(params, jnp.asarray(x[0, 0])), want[0, 0], rtol=1e-5, atol=1e-6)


def test_layer_errors():
    emb = L.embedding(7, 3)
    params = emb.init(jax.random.key(0))
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 7\) \(vocab_size\), got values in \[0, 9\]"):
        emb.apply(params, jnp.array([0, 9]))
    with pytest.raises(TypeError, match=r"ids must have an integer dtype, got float32"):
        emb.apply(params, jnp.array([0.0, 1.0], jnp.float32))
    with pytest.raises(ValueError, match=r"params\['table'\] must have shape \(7, 3\), got \(7, 4\)"):
        emb.apply({"table": jnp.zeros((7, 4))}, jnp.array([0]))
    head = L.affine(5)
    hp = head.init(jax.random.key(0), 4)
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 4\) to match params\['w'\], got \(2, 3\)"):
        head.apply(hp, jnp.ones((2, 3), jnp.float32))
    with pytest.raises(ValueError, match=r"vocab_size must be a positive int, got 0"):
        L.embedding(0, 3)


# ------------------------------------------------------------------- cross-entropy


@settings(max_examples=10, deadline=None)
@given(
    B=st.integers(1, 3), T=st.integers(1, 4), V=st.integers(1, 6), seed=st.integers(0, 2**16),
    use_mask=st.booleans(),
)
def test_cross_entropy_matches_hand_computed_log_softmax(B, T, V, seed, use_mask):
    rng = np.random.default_rng(seed)
    logits = (3 * rng.normal(size=(B, T, V))).astype(np.float32)
    labels = rng.integers(0, V, size=(B, T))
    mask = rng.random((B, T)) < 0.6 if use_mask else np.ones((B, T), bool)
    nll = -np.take_along_axis(np_log_softmax(logits), labels[..., None], axis=-1)[..., 0]
    nll = np.where(mask, nll, 0.0)
    args = (jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(mask) if use_mask else None)
    total, mean, per = jax.jit(
        lambda *a: [L.softmax_cross_entropy(*a, reduction=r) for r in ("sum", "mean", "none")]
    )(*args)
    np.testing.assert_allclose(total, nll.sum(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(mean, nll.sum() / max(mask.sum(), 1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(per, nll, rtol=1e-5, atol=1e-5)
    assert per.shape == (B, T)


def test_cross_entropy_ignores_masked_positions_and_is_stable():
    logits = jnp.array([[[1000.0, 0.0, -1000.0], [0.0, 0.0, 0.0]]], jnp.float32)
    labels = jnp.array([[0, 2]])
    # a huge logit does not overflow; the correct class at +1000 costs 0
    np.testing.assert_allclose(L.softmax_cross_entropy(logits, labels, reduction="none"), [[0.0, np.log(3.0)]], atol=1e-6)
    # masked positions change neither value nor gradient
    mask = jnp.array([[False, True]])
    f = lambda z: L.softmax_cross_entropy(z, labels, mask)  # noqa: E731
    np.testing.assert_allclose(f(logits), np.log(3.0), rtol=1e-6)
    g = jax.grad(f)(logits)
    assert not np.any(np.asarray(g[0, 0]))
    np.testing.assert_allclose(g[0, 1], np.array([1, 1, 1]) / 3 - np.array([0, 0, 1]), atol=1e-6)  # softmax - onehot
    # a fully masked batch has mean 0 (not NaN)
    assert float(L.softmax_cross_entropy(logits, labels, jnp.zeros((1, 2), bool))) == 0.0
    # a mask broadcast over time ((B, 1) -> (B, T))
    np.testing.assert_allclose(L.softmax_cross_entropy(logits, labels, jnp.ones((1, 1)), reduction="sum"), np.log(3.0), atol=1e-6)
    # bfloat16 logits are reduced in float32
    assert L.softmax_cross_entropy(logits.astype(jnp.bfloat16), labels).dtype == jnp.float32


def test_cross_entropy_errors():
    logits = jnp.zeros((2, 3, 5), jnp.float32)
    with pytest.raises(ValueError, match=r"labels must have shape \(2, 3\) \(logits.shape\[:-1\]\), got \(2, 4\)"):
        L.softmax_cross_entropy(logits, jnp.zeros((2, 4), jnp.int32))
    with pytest.raises(ValueError, match=r"reduction must be 'mean', 'sum' or 'none', got 'avg'"):
        L.softmax_cross_entropy(logits, jnp.zeros((2, 3), jnp.int32), reduction="avg")
    with pytest.raises(ValueError, match=r"mask must be broadcastable to labels' shape \(2, 3\), got \(4,\)"):
        L.softmax_cross_entropy(logits, jnp.zeros((2, 3), jnp.int32), jnp.ones(4))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 5\) \(logits.shape\[-1\]\), got values in \[-1, 5\]"):
        L.softmax_cross_entropy(logits, jnp.array([[0, 1, 5], [-1, 2, 3]]))
    with pytest.raises(TypeError, match=r"labels must have an integer dtype, got float32"):
        L.softmax_cross_entropy(logits, jnp.zeros((2, 3), jnp.float32))


# ------------------------------------------------------------------- dropout


@settings(max_examples=6, deadline=None)
@given(rate=st.sampled_from([0.1, 0.3, 0.5, 0.8]), seed=st.integers(0, 2**16))
def test_dropout_scaling_invariant(rate, seed):
    """Every entry is 0 or x / (1 - rate); the kept fraction and the mean match 1 - rate
    and mean(x) within a few standard errors."""
    n = 20000
    x = jnp.asarray(np.random.default_rng(seed).uniform(1.0, 2.0, size=(4, n // 4)), jnp.float32)
    y = np.asarray(L.dropout(x, rate, jax.random.key(seed)))
    xn = np.asarray(x)
    kept = y != 0
    np.testing.assert_allclose(y[kept], xn[kept] / (1 - rate), rtol=1e-6)
    sd = np.sqrt(rate * (1 - rate) / n)
    assert abs(kept.mean() - (1 - rate)) < 5 * sd
    # E[y] = x: compare sums with the standard error of the estimator
    se = np.sqrt(np.sum(xn**2) * rate / (1 - rate))
    assert abs(y.sum() - xn.sum()) < 5 * se


def test_dropout_deterministic_paths_and_errors():
    x = jnp.arange(6.0, dtype=jnp.float32).reshape(2, 3)
    key = jax.random.key(0)
    for out in (L.dropout(x, 0.5, None), L.dropout(x, 0.0, key), L.dropout(x, 0.5, key, deterministic=True)):
        np.testing.assert_array_equal(out, x)
    a = L.dropout(x, 0.5, key)
    np.testing.assert_array_equal(a, L.dropout(x, 0.5, key))  # same key, same mask
    assert a.dtype == x.dtype
    with pytest.raises(ValueError, match=r"rate must be in \[0, 1\), got 1.0"):
        L.dropout(x, 1.0, key)
    with pytest.raises(ValueError, match=r"rate must be in \[0, 1\), got -0.1"):
        L.dropout(x, -0.1, key)

"""Truncated BPTT: hand-computed references, no retracing, fused epochs, TBPTT(k1, k2)."""

import math
import warnings
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxrnn as jr

H, F, B = 5, 3, 2
tmap = jax.tree_util.tree_map


def make_params(dtype=jnp.float64, seed=0, cell=None):
    cell = cell or jr.rnn(H)
    k1, k2 = jax.random.split(jax.random.key(seed))
    return {"rnn": cell.init(k1, F, dtype), "out": (0.5 * jax.random.normal(k2, (H, 1))).astype(dtype)}


def make_loss(cell):
    def loss_fn(params, carry, x, y):
        carry, hs = jr.unroll(cell, params["rnn"], x, carry)
        return jnp.mean((hs @ params["out"] - y) ** 2), carry

    return loss_fn


loss_fn = make_loss(jr.rnn(H))


def ref_steps(params, h, x, y):
    """Independent forward: an explicit loop of h' = tanh(x W_x + b + h W_h).

    Returns the per-step losses (each a mean over the batch) and every state h_1..h_T.
    """
    p = params["rnn"]
    losses, states = [], []
    for t in range(x.shape[1]):
        h = jnp.tanh(x[:, t] @ p["w_x"] + p["b"] + h @ p["w_h"])
        losses.append(jnp.mean((h @ params["out"] - y[:, t]) ** 2))
        states.append(h)
    return losses, states


def ref_segment(params, h, x, y):
    losses, states = ref_steps(params, h, x, y)
    return sum(losses) / len(losses), states[-1]


# The references, compiled once each (eager op-by-op autodiff of the loops is slow).
ref_forward = jax.jit(lambda p, h, x, y: ref_segment(p, h, x, y)[1])
ref_value_and_grad = jax.jit(jax.value_and_grad(lambda p, h, x, y: ref_segment(p, h, x, y)[0]))
# The uncut gradient of segment 2: through segment 1's forward into the carry.
ref_uncut_grad = jax.jit(jax.grad(lambda p, h0, x1, x2, y2: ref_segment(p, ref_forward(p, h0, x1, x1[..., :1]), x2, y2)[0]))


@partial(jax.jit, static_argnums=4)
def ref_window_grad(params, h, x, y, k1):
    """The gradient of the mean loss over the last k1 steps, and every forward state."""

    def window_loss(q):
        losses, states = ref_steps(q, h, x, y)
        return sum(losses[-k1:]) / k1, states

    return jax.grad(window_loss, has_aux=True)(params)


def sgd(params, grads, lr):
    return tmap(lambda p, g: p - lr * g, params, grads)


def data(steps, seed=1, dtype=jnp.float64):
    kx, ky = jax.random.split(jax.random.key(seed))
    return (jax.random.normal(kx, (B, steps, F)).astype(dtype), jax.random.normal(ky, (B, steps, 1)).astype(dtype))


def assert_tree_close(a, b, rtol=1e-12, atol=1e-12):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb)
    for u, v in zip(la, lb):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=rtol, atol=atol)


def assert_tree_equal(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


# --------------------------------------------------------------------------- the segment step


def test_two_steps_match_hand_computed_reference():
    T, lr = 4, 0.3
    params = make_params()
    x, y = data(2 * T)
    h0 = jnp.zeros((B, H), jnp.float64)
    tx = optax.sgd(lr)
    step = jr.tbptt.make_step(loss_fn, tx)
    state = jr.tbptt.init_state(params, tx, h0)
    state, m1 = step(state, x[:, :T], y[:, :T])
    state, m2 = step(state, x[:, T:], y[:, T:])

    x1, y1, x2, y2 = x[:, :T], y[:, :T], x[:, T:], y[:, T:]
    l1, g1 = ref_value_and_grad(params, h0, x1, y1)
    p1 = sgd(params, g1, lr)
    h1 = ref_forward(params, h0, x1, y1)  # segment 1's forward state, held constant
    l2, g2 = ref_value_and_grad(p1, h1, x2, y2)
    p2 = sgd(p1, g2, lr)
    assert_tree_close(state.params, p2)
    assert_tree_close(state.carry, ref_forward(p1, h1, x2, y2))  # the true forward state
    np.testing.assert_allclose(m1["loss"], l1, rtol=1e-12)
    np.testing.assert_allclose(m2["loss"], l2, rtol=1e-12)
    np.testing.assert_allclose(m2["grad_norm"], optax.tree.norm(g2), rtol=1e-12)
    assert int(state.step) == 2

    # The uncut gradient (through segment 1 into the carry) differs: the cut is real.
    g2_uncut = ref_uncut_grad(p1, h0, x1, x2, y2)
    diff = optax.tree.norm(tmap(jnp.subtract, g2_uncut, g2))
    assert diff > 1e-3 * optax.tree.norm(g2)
    with pytest.raises(AssertionError):
        assert_tree_close(state.params, sgd(p1, g2_uncut, lr), rtol=1e-6, atol=1e-9)


def test_one_segment_as_long_as_the_sequence_equals_full_bptt():
    params = make_params()
    x, y = data(12)
    h0 = jnp.zeros((B, H), jnp.float64)
    tx = jr.clipped(optax.adam(0.05), max_norm=0.5)
    t_state, t_m = jr.tbptt.make_step(loss_fn, tx)(jr.tbptt.init_state(params, tx, h0), x, y)
    b_state, b_m = jr.bptt.make_step(loss_fn, tx)(jr.bptt.init_state(params, tx, h0), x, y)
    assert_tree_close(t_state.params, b_state.params, rtol=1e-14, atol=1e-15)
    assert_tree_close(t_state.opt_state, b_state.opt_state, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(t_m["loss"], b_m["loss"], rtol=1e-14)
    np.testing.assert_allclose(t_m["grad_norm"], b_m["grad_norm"], rtol=1e-14)


def test_step_is_traced_once_and_donates_without_warnings():
    n = 400
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(n, F)).astype(np.float32)
    targets = rng.normal(size=(n, 1)).astype(np.float32)
    batches = jr.data.offset_batches(feats, B, 7, targets=targets)
    params = make_params(jnp.float32)
    tx = jr.clipped(optax.adam(1e-2), max_norm=1.0)
    state = jr.tbptt.init_state(params, tx, jnp.zeros((B, H), jnp.float32))
    step = jr.tbptt.make_step(loss_fn, tx)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _, (x, y) in zip(range(6), batches):
            old = state
            state, metrics = step(state, x, y)
        assert step.trace_count == 1
        assert old.params["out"].is_deleted() and old.carry.is_deleted()  # donated
        assert not params["out"].is_deleted()  # init_state copied the caller's arrays
        state, _ = step(state, *next(batches), np.array([True, False]))
        state, _ = step(state, *next(batches), np.array([False, True]))
        assert step.trace_count == 2  # a reset mask is traced once more, then reused
    assert int(state.step) == 8
    assert np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0


def test_reset_rows_start_from_zero_and_keep_others():
    cell = jr.lstm(H)
    lf = make_loss(cell)
    params = make_params(cell=cell)
    x, y = data(6, seed=3)
    carry = (jnp.full((B, H), 0.7), jnp.full((B, H), -0.4))
    tx = optax.sgd(0.1)
    mask = np.array([True, False])
    step = jr.tbptt.make_step(lf, tx)
    s1, m1 = step(jr.tbptt.init_state(params, tx, carry), x, y, reset=mask)
    manual = (carry[0].at[0].set(0.0), carry[1].at[0].set(0.0))
    s2, m2 = step(jr.tbptt.init_state(params, tx, manual), x, y, reset=np.zeros(B, bool))
    assert step.trace_count == 1
    assert_tree_close(s1.params, s2.params)
    assert_tree_close(s1.carry, s2.carry)
    np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-14)

    h, c = jr.tbptt.reset_carry(carry, jnp.array([False, True]), initial=(jnp.ones((B, H)), jnp.zeros((B, H))))
    np.testing.assert_array_equal(h, [[0.7] * H, [1.0] * H])
    np.testing.assert_array_equal(c, [[-0.4] * H, [0.0] * H])
    with pytest.raises(ValueError, match="mask"):
        jr.tbptt.reset_carry(carry, jnp.array([True, False, True]))
    # Non-floating leaves (a dropout key's data carried along) are left alone.
    key_data = jax.random.key_data(jax.random.key(0))
    h2, kd = jr.tbptt.reset_carry((carry[0], key_data), jnp.array([True, True]))
    np.testing.assert_array_equal(h2, np.zeros((B, H)))
    np.testing.assert_array_equal(kd, key_data)
    with pytest.raises(TypeError, match="bool"):
        jr.tbptt.reset_carry(carry, jnp.array([1, 0]))


def test_loss_fn_contract_errors():
    params = make_params()
    x, y = data(4)
    tx = optax.sgd(0.1)
    h0 = jnp.zeros((B, H))

    def bad_carry(p, c, x, y):
        loss, c = loss_fn(p, c, x, y)
        return loss, c[:, :2]

    with pytest.raises(ValueError, match="carry"):
        jr.tbptt.make_step(bad_carry, tx)(jr.tbptt.init_state(params, tx, h0), x, y)
    with pytest.raises(TypeError, match="pair"):
        jr.tbptt.make_step(lambda p, c, x, y: loss_fn(p, c, x, y)[0], tx)(jr.tbptt.init_state(params, tx, h0), x, y)
    with pytest.raises(ValueError, match="scalar"):
        jr.tbptt.make_step(lambda p, c, x, y: (x, c), tx)(jr.tbptt.init_state(params, tx, h0), x, y)
    with pytest.raises(TypeError, match="GradientTransformation"):
        jr.tbptt.make_step(loss_fn, "adam")
    with pytest.raises(TypeError, match="TrainState"):
        jr.tbptt.make_step(loss_fn, tx)((params, 1), x, y)


def test_nonfinite_gradient_is_skipped_params_and_carry_kept():
    params = make_params()
    x, y = data(12)
    tx = jr.clipped(optax.sgd(0.1), max_norm=1.0, skip_nonfinite=True)
    step = jr.tbptt.make_step(loss_fn, tx)
    state = jr.tbptt.init_state(params, tx, jnp.zeros((B, H)))
    state, m = step(state, x[:, :4], y[:, :4])
    assert int(m["skipped"]) == 0
    before = tmap(np.array, (state.params, state.carry))
    state, m = step(state, x[:, 4:8].at[0, 1, 0].set(jnp.nan), y[:, 4:8])
    assert int(m["skipped"]) == 1 and not np.isfinite(float(m["loss"]))
    assert_tree_equal(state.params, before[0])
    assert_tree_equal(state.carry, before[1])
    state, m = step(state, x[:, 8:], y[:, 8:])
    assert int(m["skipped"]) == 1 and np.isfinite(float(m["loss"]))
    assert all(np.isfinite(np.asarray(v)).all() for v in jax.tree_util.tree_leaves(state.params))
    assert int(state.step) == 3


# --------------------------------------------------------------------------- fused mode


@pytest.mark.parametrize("with_resets", [False, True])
def test_fused_epoch_equals_step_by_step_loop(with_resets):
    n, S, T = 300, 6, 5
    rng = np.random.default_rng(2)
    feats = rng.normal(size=(n, F)).astype(np.float32)
    targets = rng.normal(size=(n, 1)).astype(np.float32)
    xs, ys = jr.data.offset_batches(feats, B, T, targets=targets).take(S)
    resets = rng.random((S, B)) < 0.3 if with_resets else None
    params = make_params(jnp.float32)
    tx = jr.clipped(optax.adam(1e-2), max_norm=0.5)
    h0 = jnp.zeros((B, H), jnp.float32)

    step = jr.tbptt.make_step(loss_fn, tx)
    state = jr.tbptt.init_state(params, tx, h0)
    losses, norms = [], []
    for k in range(S):
        args = (xs[k], ys[k]) + ((resets[k],) if with_resets else ())
        state, m = step(state, *args)
        losses.append(m["loss"])
        norms.append(m["grad_norm"])

    epoch = jr.tbptt.make_epoch(loss_fn, tx)
    args = (xs, ys) + ((resets,) if with_resets else ())
    fused, fm = epoch(jr.tbptt.init_state(params, tx, h0), *args)
    assert fm["loss"].shape == (S,) and epoch.trace_count == 1
    assert int(fused.step) == S
    if jax.default_backend() == "cpu":  # the same XLA program on CPU: identical bits
        assert_tree_equal(fused, state)
        np.testing.assert_array_equal(fm["loss"], losses)
        np.testing.assert_array_equal(fm["grad_norm"], norms)
    else:  # pragma: no cover - accelerators may fuse the scan body differently
        assert_tree_close(fused, state, rtol=2e-6, atol=1e-7)
        np.testing.assert_allclose(fm["loss"], losses, rtol=2e-6)


# --------------------------------------------------------------------------- TBPTT(k1, k2)


def ref_k1k2(params, h0, x, y, k1, k2, lr, updates):
    """Hand-computed TBPTT(k1, k2) with SGD: see make_k1k2_step's docstring."""
    stored = {0: h0}  # the latest forward state computed at each position
    p = params
    for n in range(updates):
        e = (n + 1) * k1
        s = max(0, e - k2)
        g, states = ref_window_grad(p, stored[s], x[:, s:e], y[:, s:e], k1)  # loss: last k1 steps only
        for t, h in enumerate(states):
            stored[s + t + 1] = h
        p = sgd(p, g, lr)
    return p, stored[updates * k1]


@pytest.mark.parametrize("k1, k2", [(2, 5)])
def test_k1k2_matches_hand_computed_reference(k1, k2):
    updates, lr = 6, 0.2
    params = make_params(seed=4)
    x, y = data(updates * k1, seed=6)
    h0 = jnp.zeros((B, H))
    tx = optax.sgd(lr)
    step = jr.tbptt.make_k1k2_step(loss_fn, tx, k1, k2)
    state = jr.tbptt.init_k1k2_state(params, tx, h0)
    for n in range(updates):
        state, m = step(state, x[:, n * k1:(n + 1) * k1], y[:, n * k1:(n + 1) * k1])
    want_params, want_carry = ref_k1k2(params, h0, x, y, k1, k2, lr, updates)
    assert_tree_close(state.params, want_params)
    assert_tree_close(state.carry, want_carry)
    assert step.trace_count == math.ceil((k2 - k1) / k1) + 1
    assert int(state.step) == updates


def test_k1k2_with_equal_k_is_plain_tbptt_and_sum_reduction():
    k, updates, lr = 3, 4, 0.2
    params = make_params(seed=7)
    x, y = data(k * updates, seed=8)
    h0 = jnp.zeros((B, H))
    tx = optax.sgd(lr)
    plain = jr.tbptt.init_state(params, tx, h0)
    kk = jr.tbptt.init_k1k2_state(params, tx, h0)
    step, kstep = jr.tbptt.make_step(loss_fn, tx), jr.tbptt.make_k1k2_step(loss_fn, tx, k, k)
    for n in range(updates):
        sl = slice(n * k, (n + 1) * k)
        plain, _ = step(plain, x[:, sl], y[:, sl])
        kk, _ = kstep(kk, x[:, sl], y[:, sl])
    assert_tree_close(plain.params, kk.params, rtol=1e-14, atol=1e-15)
    assert_tree_close(plain.carry, kk.carry, rtol=1e-14, atol=1e-15)

    # A loss summed over time with lr / k1 takes the same steps as the mean with lr.
    def sum_loss(p, c, x, y):
        loss, c = loss_fn(p, c, x, y)
        return loss * x.shape[1], c

    k1, k2 = 2, 3
    a = jr.tbptt.init_k1k2_state(params, tx, h0)
    txs = optax.sgd(lr / k1)
    b = jr.tbptt.init_k1k2_state(params, txs, h0)
    sa = jr.tbptt.make_k1k2_step(loss_fn, tx, k1, k2)
    sb = jr.tbptt.make_k1k2_step(sum_loss, txs, k1, k2, reduction="sum")
    for n in range(5):
        sl = slice(n * k1, (n + 1) * k1)
        a, _ = sa(a, x[:, sl], y[:, sl])
        b, _ = sb(b, x[:, sl], y[:, sl])
    assert_tree_close(a.params, b.params, rtol=1e-12)


def test_k1k2_validation():
    tx = optax.sgd(0.1)
    with pytest.raises(ValueError, match="k2 must be >= k1"):
        jr.tbptt.make_k1k2_step(loss_fn, tx, 4, 2)
    with pytest.raises(ValueError, match="k1"):
        jr.tbptt.make_k1k2_step(loss_fn, tx, 0, 2)
    with pytest.raises(ValueError, match="reduction"):
        jr.tbptt.make_k1k2_step(loss_fn, tx, 1, 2, reduction="max")
    step = jr.tbptt.make_k1k2_step(loss_fn, tx, 2, 4)
    x, y = data(3)
    with pytest.raises(ValueError, match="k1=2"):
        step(jr.tbptt.init_k1k2_state(make_params(), tx, jnp.zeros((B, H))), x, y)


# --------------------------------------------------------------------------- host-boundary checks


def _lm_step(make=None, **kw):
    model = jr.lm.language_model(7, hidden=4, embed=3)
    tx = optax.sgd(0.1)
    step = (make or jr.tbptt.make_step)(jr.lm.loss_fn(model), tx, **kw)
    state = jr.tbptt.init_state(model.init(jax.random.key(0)), tx, jr.lm.train_carry(model, 2, 0))
    return step, state


@pytest.mark.parametrize("make", [jr.tbptt.make_step, jr.bptt.make_step])
def test_out_of_range_token_ids_are_refused_before_the_step(make):
    step, state = _lm_step(make)
    x = np.zeros((2, 3), np.int32)
    with pytest.raises(ValueError, match=r"y holds the token id 7 at index \(1, 2\), outside the vocabulary: ids "
                                         r"must be in \[0, 6\] \(vocab_size=7\)"):
        step(state, x, np.array([[1, 2, 3], [4, 5, 7]], np.int32))
    with pytest.raises(ValueError, match=r"x holds the token id 9 at index \(0, 1\), outside the vocabulary"):
        step(state, np.array([[0, 9, 1], [1, 1, 1]], np.int32), x)
    with pytest.raises(ValueError, match=r"x holds the token id -1 at index \(1, 0\)"):
        step(state, np.array([[0, 0, 0], [-1, 1, 1]], np.int32), x)
    assert step.trace_count == 0  # refused on the host: nothing was traced, nothing updated
    state, metrics = step(state, x, np.full((2, 3), 6, np.int32))  # the largest id is fine
    assert np.isfinite(float(metrics["loss"]))


def test_a_donated_state_used_again_is_named():
    tx = optax.sgd(0.1)
    x, y = np.ones((B, 2, F)), np.zeros((B, 2, 1))
    step = jr.tbptt.make_step(loss_fn, tx)
    state = jr.tbptt.init_state(make_params(), tx, jnp.zeros((B, H)))
    new_state, _ = step(state, x, y)
    with pytest.raises(ValueError, match=r"state was already passed to a step that donates its buffers \(the "
                                         r"array at state.* has been reused.*pass the state the last call "
                                         r"returned, `state, metrics = tbptt_step\(state, ...\)`, or make the "
                                         r"step with donate=False"):
        step(state, x, y)
    step(new_state, x, y)  # the returned state is fine
    keep = jr.tbptt.make_step(loss_fn, tx, donate=False)
    state = jr.tbptt.init_state(make_params(), tx, jnp.zeros((B, H)))
    keep(state, x, y)
    keep(state, x, y)  # without donation the old state stays usable

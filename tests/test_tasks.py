"""Tests of jaxrnn.tasks: hand-written cases, invariants over seeds, determinism, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrnn as jr
from jaxrnn import tasks


def _ids(batch):
    return np.asarray(batch.inputs).argmax(-1)


# ----------------------------------------------------------------- copy task


def test_copy_task_layout_by_hand():
    b = tasks.copy_task(jax.random.key(0), batch_size=3, length=3, delay=2, num_symbols=5)
    # L = 2*3 + 2 = 8; data at 0..2, blank at 3, delimiter (6) at 3+2-1 = 4, blanks 5..7
    assert b.inputs.shape == (3, 8, 7) and b.inputs.dtype == jnp.float32
    assert b.targets.shape == (3, 8) and b.targets.dtype == jnp.int32
    ids, tg = _ids(b), np.asarray(b.targets)
    np.testing.assert_array_equal(np.asarray(b.inputs).sum(-1), 1.0)  # one-hot
    for row in range(3):
        data = ids[row, :3]
        assert np.all((0 <= data) & (data < 5))
        assert ids[row, 3:].tolist() == [5, 6, 5, 5, 5]
        assert tg[row].tolist() == [5, 5, 5, 5, 5] + data.tolist()
    np.testing.assert_array_equal(np.asarray(b.mask), np.broadcast_to([0, 0, 0, 0, 0, 1, 1, 1], (3, 8)).astype(bool))


@pytest.mark.parametrize("length,delay", [(1, 1), (4, 7), (10, 20)])
def test_copy_task_symbol_i_due_after_length_plus_delay(length, delay):
    b = tasks.copy_task(11, batch_size=4, length=length, delay=delay, num_symbols=3)
    ids, tg, m = _ids(b), np.asarray(b.targets), np.asarray(b.mask)
    total = 2 * length + delay
    assert ids.shape == (4, total)
    for i in range(length):
        np.testing.assert_array_equal(tg[:, i + length + delay], ids[:, i])
    assert m.sum() == 4 * length and np.all(tg[~m] == 3)
    assert np.all(ids[:, length + delay - 1] == 4) and (ids == 4).sum() == 4  # one delimiter per row


# ----------------------------------------------------------------- adding problem


def test_adding_problem_by_hand_invariants():
    b = tasks.adding_problem(jax.random.key(3), batch_size=64, length=9)
    x = np.asarray(b.inputs)
    assert x.shape == (64, 9, 2) and b.targets.shape == (64,) and b.mask.shape == (64,)
    values, markers = x[..., 0], x[..., 1]
    assert np.all((values >= 0) & (values < 1))
    assert set(np.unique(markers)) <= {0.0, 1.0}
    np.testing.assert_array_equal(markers[:, :4].sum(1), 1)  # one marker in [0, 9 // 2)
    np.testing.assert_array_equal(markers[:, 4:].sum(1), 1)  # one in [4, 9)
    i = markers[:, :4].argmax(1)
    j = 4 + markers[:, 4:].argmax(1)
    np.testing.assert_allclose(np.asarray(b.targets), values[np.arange(64), i] + values[np.arange(64), j], rtol=1e-6)
    assert np.all(np.asarray(b.mask))
    # marker positions are spread over both halves (not stuck at one step)
    assert len(set(i.tolist())) > 1 and len(set(j.tolist())) > 1


def test_adding_problem_shortest():
    b = tasks.adding_problem(0, batch_size=2, length=2, dtype=jnp.float64)
    np.testing.assert_array_equal(np.asarray(b.inputs)[..., 1], 1.0)
    np.testing.assert_allclose(np.asarray(b.targets), np.asarray(b.inputs)[..., 0].sum(1))
    assert b.inputs.dtype == jnp.float64


# ----------------------------------------------------------------- delayed recall


def test_delayed_recall_by_hand():
    b = tasks.delayed_recall(jax.random.key(5), batch_size=2, length=7, lag=3, num_symbols=3)
    ids, tg = _ids(b), np.asarray(b.targets)
    assert b.inputs.shape == (2, 7, 3)
    for row in range(2):
        x = ids[row].tolist()
        assert tg[row].tolist() == [3, 3, 3, x[0], x[1], x[2], x[3]]
    np.testing.assert_array_equal(np.asarray(b.mask[0]), [False, False, False, True, True, True, True])


@pytest.mark.parametrize("lag", [1, 4, 12, 20])
def test_delayed_recall_target_is_input_lag_steps_earlier(lag):
    length = 16
    b = tasks.delayed_recall(7, batch_size=5, length=length, lag=lag, num_symbols=4)
    ids, tg, m = _ids(b), np.asarray(b.targets), np.asarray(b.mask)
    for t in range(length):
        if t >= lag:
            assert np.all(m[:, t]) and np.all(tg[:, t] == ids[:, t - lag])
        else:
            assert not np.any(m[:, t]) and np.all(tg[:, t] == 4)


def test_delayed_recall_symbols_uniform():
    b = tasks.delayed_recall(1, batch_size=50, length=200, lag=2, num_symbols=4)
    freq = np.bincount(_ids(b).ravel(), minlength=4) / 10000
    np.testing.assert_allclose(freq, 0.25, atol=0.02)
    # chance: predicting any fixed class scores about 1/num_symbols
    logits = jnp.zeros((50, 200, 4)).at[..., 0].set(1.0)
    assert abs(float(tasks.accuracy(logits, b.targets, b.mask)) - 0.25) < 0.02


# ----------------------------------------------------------------- seeding and jit


def test_seeded_and_jittable():
    for gen, kw in [
        (tasks.copy_task, dict(batch_size=2, length=3, delay=4)),
        (tasks.adding_problem, dict(batch_size=2, length=6)),
        (tasks.delayed_recall, dict(batch_size=2, length=6, lag=2)),
    ]:
        a = gen(jax.random.key(1), **kw)
        b = gen(1, **kw)  # an int seed means jax.random.key(seed)
        c = jax.jit(lambda k: gen(k, **kw))(jax.random.key(1))
        d = gen(jax.random.key(2), **kw)
        for u, v, w in zip(a, b, c):
            np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
            np.testing.assert_array_equal(np.asarray(u), np.asarray(w))
        assert not np.array_equal(np.asarray(a.inputs), np.asarray(d.inputs))


def test_accuracy_by_hand():
    logits = jnp.array([[[2.0, 1.0, 0.0], [0.0, 0.0, 1.0]], [[0.0, 3.0, 0.0], [1.0, 0.0, 0.0]]])
    targets = jnp.array([[0, 1], [1, 2]])
    assert float(tasks.accuracy(logits, targets)) == pytest.approx(0.5)
    assert float(tasks.accuracy(logits, targets, jnp.array([[True, False], [True, False]]))) == pytest.approx(1.0)
    assert float(tasks.accuracy(logits, targets, jnp.array([False, True]))) == pytest.approx(0.0)
    assert float(tasks.accuracy(logits, targets, jnp.zeros((2, 2), bool))) == 0.0


def test_exported():
    assert jr.tasks is tasks and "tasks" in jr.__all__ and "diagnostics" in jr.__all__


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="lag must be an int >= 1, got 0"):
        tasks.delayed_recall(0, 2, 5, 0)
    with pytest.raises(ValueError, match="num_symbols must be an int >= 2"):
        tasks.copy_task(0, 2, num_symbols=1)
    with pytest.raises(ValueError, match="length must be an int >= 2"):
        tasks.adding_problem(0, 2, length=1)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        tasks.copy_task(0, 0)
    with pytest.raises(TypeError, match="key must be a jax PRNG key or an int seed"):
        tasks.copy_task("seed", 2)
    with pytest.raises(TypeError, match="dtype must be a floating dtype"):
        tasks.delayed_recall(0, 2, 5, 1, dtype=jnp.int32)
    with pytest.raises(ValueError, match="targets must have shape \\(2,\\)"):
        tasks.accuracy(jnp.zeros((2, 3)), jnp.zeros((3,), jnp.int32))
    with pytest.raises(TypeError, match="targets must have an integer dtype"):
        tasks.accuracy(jnp.zeros((2, 3)), jnp.zeros((2,)))
    with pytest.raises(ValueError, match="mask must be broadcastable"):
        tasks.accuracy(jnp.zeros((2, 3)), jnp.zeros((2,), jnp.int32), jnp.ones((3,), bool))

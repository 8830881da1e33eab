"""Offset batching over one long stream, whole-sequence batches, segment splitting."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

import jaxrnn as jr


# --------------------------------------------------------------------------- offset streams


def test_offset_batches_arange_1000():
    """The issue's example: rows start at 0 and 500, continue, targets shift, wrap."""
    tokens = np.arange(1000)
    batches = jr.data.offset_batches(tokens, batch_size=2, seq_len=10)
    x, y = next(batches)
    assert x.shape == (2, 10) and y.shape == (2, 10)
    np.testing.assert_array_equal(x, [np.arange(0, 10), np.arange(500, 510)])
    np.testing.assert_array_equal(y, x + 1)
    x2, y2 = next(batches)
    np.testing.assert_array_equal(x2, [np.arange(10, 20), np.arange(510, 520)])  # continues
    np.testing.assert_array_equal(x2[:, 0], x[:, -1] + 1)
    assert batches.position == 20
    # Segment 50 (t = 490..499): stream 1 reaches the end; the target of 999 wraps to 0.
    segs = [next(batches) for _ in range(48)]
    x50, y50 = segs[-1]
    np.testing.assert_array_equal(x50[1], np.arange(990, 1000))
    np.testing.assert_array_equal(y50[1], list(range(991, 1000)) + [0])
    np.testing.assert_array_equal(x50[0], np.arange(490, 500))
    x51, y51 = next(batches)
    np.testing.assert_array_equal(x51[1], np.arange(0, 10))  # wrapped to the start
    np.testing.assert_array_equal(x51[0], np.arange(500, 510))  # stream 0 goes on
    np.testing.assert_array_equal(y51, (x51 + 1) % 1000)


def test_offset_batches_invariants_random_layouts():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(20, 300))
        b = int(rng.integers(1, 5))
        t = int(rng.integers(1, n // b + 1))
        tokens = rng.integers(0, 1000, n)
        batches = jr.data.offset_batches(tokens, b, t)
        s = n // b
        for k in range(5):
            x, y = next(batches)
            for row in range(b):
                pos = (row * s + k * t + np.arange(t)) % n
                np.testing.assert_array_equal(x[row], tokens[pos])
                np.testing.assert_array_equal(y[row], tokens[(pos + 1) % n])


def test_offset_batches_one_epoch_covers_each_slice_once():
    tokens = np.arange(103)  # N // B = 25 steps per stream, 3 tokens left over
    batches = jr.data.offset_batches(tokens, 4, 5, epochs=1)
    assert len(batches) == 5 and batches.steps_per_epoch == 25
    xs = np.concatenate([x for x, _ in batches], axis=1)
    assert xs.shape == (4, 25)
    np.testing.assert_array_equal(np.sort(xs.ravel()), np.arange(100))
    for b in range(4):
        np.testing.assert_array_equal(xs[b], np.arange(25 * b, 25 * (b + 1)))
    with pytest.raises(StopIteration):
        next(batches)


def test_offset_batches_remainder_dropped_or_kept():
    tokens = np.arange(44)  # S = 22 = 3 * 7 + 1
    dropped = list(jr.data.offset_batches(tokens, 2, 7, epochs=1))
    assert [x.shape for x, _ in dropped] == [(2, 7)] * 3
    kept = list(jr.data.offset_batches(tokens, 2, 7, epochs=1, drop_remainder=False))
    assert [x.shape for x, _ in kept] == [(2, 7)] * 3 + [(2, 1)]
    np.testing.assert_array_equal(kept[-1][0][:, 0], [21, 43])
    two = jr.data.offset_batches(tokens, 2, 7, epochs=2, drop_remainder=False)
    assert len(two) == 7  # 44 steps per stream = 6 * 7 + 2


def test_offset_batches_features_with_targets():
    n, f = 60, 3
    feats = np.random.default_rng(1).normal(size=(n, f)).astype(np.float32)
    labels = np.arange(n) * 10
    batches = jr.data.offset_batches(feats, 3, 4, targets=labels)
    x, y = next(batches)
    assert x.shape == (3, 4, 3) and x.dtype == np.float32 and y.shape == (3, 4)
    np.testing.assert_array_equal(x[2], feats[40:44])
    np.testing.assert_array_equal(y[2], labels[40:44])  # aligned, not shifted
    # Features without targets: the next step's features.
    x, y = next(jr.data.offset_batches(feats, 3, 4))
    np.testing.assert_array_equal(y[1], feats[21:25])


def test_offset_batches_save_and_restore_position():
    tokens = np.arange(500) % 37
    a = jr.data.offset_batches(tokens, 4, 6)
    for _ in range(7):
        next(a)
    saved = json.loads(json.dumps(a.state_dict()))  # JSON round trip
    expected = [next(a) for _ in range(3)]
    b = jr.data.offset_batches(tokens, 4, 6)
    b.load_state_dict(saved)
    c = jr.data.offset_batches(tokens, 4, 6, start=saved["position"])
    for (ex, ey), (bx, by), (cx, cy) in zip(expected, [next(b) for _ in range(3)], [next(c) for _ in range(3)]):
        np.testing.assert_array_equal(ex, bx)
        np.testing.assert_array_equal(ey, by)
        np.testing.assert_array_equal(ex, cx)
    with pytest.raises(ValueError, match="batch_size=4"):
        jr.data.offset_batches(tokens, 5, 6).load_state_dict(saved)


def test_offset_batches_resumed_finite_stream_stops_at_same_place():
    tokens = np.arange(200)
    full = list(jr.data.offset_batches(tokens, 2, 9, epochs=2))
    resumed = jr.data.offset_batches(tokens, 2, 9, epochs=2, start=5 * 9)
    rest = list(resumed)
    assert len(rest) == len(full) - 5
    for (a, _), (b, _) in zip(full[5:], rest):
        np.testing.assert_array_equal(a, b)


def test_offset_batches_take_matches_iteration():
    tokens = np.arange(300)
    a = jr.data.offset_batches(tokens, 3, 5)
    b = jr.data.offset_batches(tokens, 3, 5)
    xs, ys = a.take(4)
    assert xs.shape == (4, 3, 5)
    for k in range(4):
        x, y = next(b)
        np.testing.assert_array_equal(xs[k], x)
        np.testing.assert_array_equal(ys[k], y)
    assert a.position == b.position == 20
    with pytest.raises(ValueError, match="num_segments"):
        jr.data.offset_batches(tokens, 3, 5, epochs=1).take(21)


def test_offset_batches_accepts_jax_arrays():
    x, y = next(jr.data.offset_batches(jnp.arange(50, dtype=jnp.int32), 2, 5))
    assert isinstance(x, np.ndarray) and x.dtype == np.int32
    np.testing.assert_array_equal(x[1], np.arange(25, 30))


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(tokens=np.arange(10), batch_size=3, seq_len=4), ValueError, "batch_size \\* seq_len"),
        (dict(tokens=np.arange(10), batch_size=0, seq_len=2), ValueError, "batch_size"),
        (dict(tokens=np.arange(10), batch_size=2, seq_len=2.5), ValueError, "seq_len"),
        (dict(tokens=np.linspace(0, 1, 10), batch_size=2, seq_len=2), TypeError, "integer token ids"),
        (dict(tokens=np.array(["a"] * 10), batch_size=2, seq_len=2), TypeError, "numbers"),
        (dict(tokens=np.zeros((10, 2)), batch_size=2, seq_len=2, targets=np.zeros(9)), ValueError, "targets"),
        (dict(tokens=np.arange(10), batch_size=2, seq_len=2, start=-1), ValueError, "start"),
        (dict(tokens=np.arange(10), batch_size=2, seq_len=2, epochs=-1), ValueError, "epochs"),
    ],
)
def test_offset_batches_validation(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        jr.data.offset_batches(**kwargs)


def test_endless_has_no_len():
    with pytest.raises(TypeError, match="endless"):
        len(jr.data.offset_batches(np.arange(10), 2, 2))


# --------------------------------------------------------------------------- whole sequences


def test_sequence_batches_shuffled_cover_each_example_once_per_epoch():
    n = 23
    xs = np.arange(n)[:, None, None] * np.ones((1, 4, 2))
    ids = np.arange(n)
    batches = jr.data.sequence_batches({"x": xs, "id": ids}, 5, seed=3, epochs=2)
    assert len(batches) == 10
    seen = [b for b in batches]
    assert [b["id"].shape[0] for b in seen] == [5, 5, 5, 5, 3] * 2
    for epoch in (seen[:5], seen[5:]):
        got = np.concatenate([b["id"] for b in epoch])
        np.testing.assert_array_equal(np.sort(got), ids)
        for b in epoch:  # inputs stay paired with their ids
            np.testing.assert_array_equal(b["x"][:, 0, 0], b["id"])
    first = np.concatenate([b["id"] for b in seen[:5]])
    second = np.concatenate([b["id"] for b in seen[5:]])
    assert not np.array_equal(first, ids) and not np.array_equal(first, second)


def test_sequence_batches_resume_and_no_shuffle():
    data = (np.arange(10), np.arange(10) * 2)
    a = jr.data.sequence_batches(data, 3, seed=1, epochs=None, drop_remainder=True)
    for _ in range(4):
        next(a)
    saved = a.state_dict()
    expected = [next(a) for _ in range(4)]
    b = jr.data.sequence_batches(data, 3, seed=1, epochs=None, drop_remainder=True)
    b.load_state_dict(saved)
    for e, g in zip(expected, [next(b) for _ in range(4)]):
        np.testing.assert_array_equal(e[0], g[0])
    with pytest.raises(ValueError, match="seed"):
        jr.data.sequence_batches(data, 3, seed=2).load_state_dict(saved)
    plain = [x for x, _ in jr.data.sequence_batches(data, 4, shuffle=False)]
    np.testing.assert_array_equal(np.concatenate(plain), np.arange(10))


def test_sequence_batches_validation():
    with pytest.raises(ValueError, match="leading"):
        jr.data.sequence_batches((np.zeros((4, 2)), np.zeros(5)), 2)
    with pytest.raises(ValueError, match="batch_size"):
        jr.data.sequence_batches(np.zeros((4, 2)), 0)


# --------------------------------------------------------------------------- segments


def test_split_segments_layout():
    x = np.arange(2 * 12 * 3).reshape(2, 12, 3)
    y = np.arange(2 * 12).reshape(2, 12)
    xs, ys = jr.data.split_segments((x, y), 4)
    assert xs.shape == (3, 2, 4, 3) and ys.shape == (3, 2, 4)
    for k in range(3):
        np.testing.assert_array_equal(xs[k], x[:, 4 * k:4 * k + 4])
        np.testing.assert_array_equal(ys[k], y[:, 4 * k:4 * k + 4])
    js = jr.data.split_segments(jnp.asarray(x), 6)
    assert isinstance(js, jnp.ndarray) and js.shape == (2, 2, 6, 3)
    with pytest.raises(ValueError, match="multiple of seq_len"):
        jr.data.split_segments(x, 5)
    assert jr.data.split_segments(x, 5, drop_remainder=True).shape == (2, 2, 5, 3)
    with pytest.raises(ValueError, match="same time length"):
        jr.data.split_segments((x, y[:, :6]), 2)


def test_two_dimensional_integer_tokens_without_targets_are_refused():
    rows = np.arange(40).reshape(4, 10)  # e.g. four token sequences stacked by mistake
    with pytest.raises(ValueError, match=r"tokens of shape \(4, 10\) with the integer dtype int64 and no targets: "
                                         r"token ids must be one 1-D stream"):
        jr.data.offset_batches(rows, 2, 2)
    # floating features, or explicit targets, are read as (N, F) as before
    x, _ = next(jr.data.offset_batches(rows.astype(np.float32), 2, 2))
    assert x.shape == (2, 2, 10)
    x, y = next(jr.data.offset_batches(rows, 2, 2, targets=np.arange(4)))
    assert x.shape == (2, 2, 10) and y.tolist() == [[0, 1], [2, 3]]

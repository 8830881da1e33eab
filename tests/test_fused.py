"""The fast path (jaxrnn/fused.py) against the plain lax.scan path of jr.unroll.

The plain path is jr.unroll itself with ``jaxrnn.fused.applies`` patched to return False,
so both sides see the same arguments, masking and reversal code. Every remat mode and
every cell kind is compared on outputs, final carries and gradients (params, inputs and
initial carry), with per-row lengths, reverse=True and a non-zero initial carry, in
float64 (tight) and float32 (float tolerance); forward mode, vmap, second order,
fallbacks and the memory targets (XLA's compiled memory analysis) are checked as well.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrnn as jr
from conftest import assert_trees_close as _close
from conftest import make_cell, random_tree
from jaxrnn import fused

KINDS = ("lstm", "gru", "rnn", "rnn_relu")


def assert_trees_close(a, b, rtol, atol):
    _close(a, b, rtol, atol, same_dtypes=True)
REMATS = (None, "step", "sqrt", 7)




def setup(kind, steps, dtype, batch=3, hidden=5, features=4, seed=0):
    rng = np.random.default_rng(seed)
    cell = make_cell(kind, hidden)
    params = random_tree(lambda: cell.init(jax.random.key(0), features), rng, dtype)
    carry = random_tree(lambda: cell.initial_carry(batch), rng, dtype)
    xs = jnp.asarray(rng.normal(size=(batch, steps, features)), dtype)
    lengths = jnp.asarray(np.r_[steps, rng.integers(1, steps + 1, size=batch - 1)], jnp.int32)
    return cell, params, carry, xs, lengths


def loss_of(cell, **kw):
    """A scalar touching every output and the final carry, with uneven weights."""

    def loss(params, xs, carry):
        new, ys = jr.unroll(cell, params, xs, carry, **kw)
        w = jnp.cos(jnp.arange(ys.size, dtype=ys.dtype)).reshape(ys.shape)
        return jnp.sum(w * jnp.tanh(ys)) + sum(jnp.sum(jnp.sin(c)) for c in jax.tree.leaves(new))

    return loss


def run(cell, params, xs, carry, **kw):
    """Outputs, final carry and gradients, in one jitted computation."""

    def both(params, xs, carry):
        out = jr.unroll(cell, params, xs, carry, **kw)
        return out, jax.grad(loss_of(cell, **kw), argnums=(0, 1, 2))(params, xs, carry)

    return jax.jit(both)(params, xs, carry)


def plain(monkeypatch, fn, *args, **kw):
    with monkeypatch.context() as m:
        m.setattr(fused, "applies", lambda *a: False)
        return fn(*args, **kw)




# --------------------------------------------------------------------------- parity


# Every remat mode runs on the LSTM and the GRU; the Elman cells (which share all code
# but the cell maths with them) run the modes that exercise each of their functions.
CASES = [(k, r) for k in ("lstm", "gru") for r in REMATS] + [
    ("rnn", None), ("rnn", "step"), ("rnn", 7), ("rnn_relu", None), ("rnn_relu", "sqrt")]


@pytest.fixture(scope="module")
def plain_results():
    """Plain-path results per kind for the float64 parity test (computed once each)."""
    return {}


@pytest.mark.parametrize("kind,remat", CASES)
def test_remat_modes_match_plain_path_float64(kind, remat, plain_results):
    """Lengths + reverse + non-zero carry; T=37 is prime, so every chunking pads."""
    cell, params, carry, xs, lengths = setup(kind, 37, jnp.float64)
    kw = dict(lengths=lengths, reverse=True)
    if kind not in plain_results:
        with pytest.MonkeyPatch.context() as m:
            m.setattr(fused, "applies", lambda *a: False)
            plain_results[kind] = run(cell, params, xs, carry, **kw)
    assert fused.applies(cell, params, xs, carry)
    got = run(cell, params, xs, carry, remat=remat, **kw)
    assert_trees_close(got, plain_results[kind], rtol=1e-10, atol=1e-12)


def test_long_blocks_and_exact_chunks_match_plain_path(monkeypatch):
    """T=80: default chunks divide T exactly; remat=40 runs each block in pieces of 8
    unrolled steps; remat=41 (prime, longer than fused.STATIC_STEPS) runs each block at
    once as a lax.scan."""
    assert 41 > fused.STATIC_STEPS
    cell, params, carry, xs, lengths = setup("lstm", 80, jnp.float64, batch=2, seed=1)
    want = plain(monkeypatch, run, cell, params, xs, carry, lengths=lengths)
    for remat in (None, 40, 41):
        got = run(cell, params, xs, carry, lengths=lengths, remat=remat)
        assert_trees_close(got, want, rtol=1e-10, atol=1e-12)


def test_float32_lstm_matches_plain_path_to_float_tolerance(monkeypatch):
    cell, params, carry, xs, lengths = setup("lstm", 33, jnp.float32, hidden=16, features=8)
    want = plain(monkeypatch, run, cell, params, xs, carry, lengths=lengths)
    for remat in (None, "step"):
        got = run(cell, params, xs, carry, lengths=lengths, remat=remat)
        assert_trees_close(got, want, rtol=2e-4, atol=2e-5)


def test_against_python_loop_of_cell_apply():
    """Independent of jr.unroll's plain path: a loop over cell.apply, float64."""
    cell, params, carry, xs, _ = setup("lstm", 8, jnp.float64)

    def loop(params, xs, carry):
        ys = []
        for t in range(xs.shape[1]):
            carry, y = cell.apply(params, carry, xs[:, t])
            ys.append(y)
        return carry, jnp.stack(ys, axis=1)

    def loss(f):
        return lambda p, x, c: jnp.sum(jnp.sin(f(p, x, c)[1])) + jnp.sum(f(p, x, c)[0][1] ** 2)

    fast = lambda p, x, c: jr.unroll(cell, p, x, c)  # noqa: E731
    assert_trees_close(jax.jit(fast)(params, xs, carry), jax.jit(loop)(params, xs, carry), 1e-12, 1e-12)
    g_fast = jax.jit(jax.grad(loss(fast), (0, 1, 2)))(params, xs, carry)
    g_loop = jax.jit(jax.grad(loss(loop), (0, 1, 2)))(params, xs, carry)
    assert_trees_close(g_fast, g_loop, 1e-10, 1e-12)


def test_time_major_unbatched_and_bidirectional(monkeypatch):
    cell, params, carry, xs, _ = setup("gru", 19, jnp.float64)
    tm = jnp.swapaxes(xs, 0, 1)
    want = plain(monkeypatch, run, cell, params, tm, carry, time_major=True, remat="step")
    assert_trees_close(run(cell, params, tm, carry, time_major=True, remat="step"), want, 1e-10, 1e-12)

    one = jax.tree.map(lambda c: c[0], carry)
    want = plain(monkeypatch, run, cell, params, xs[0], one, remat="sqrt")
    assert_trees_close(run(cell, params, xs[0], one, remat="sqrt"), want, 1e-10, 1e-12)

    bi = jr.bidirectional(jr.rnn(3))
    p = random_tree(lambda: bi.init(jax.random.key(1), 4), np.random.default_rng(3), jnp.float64)
    lengths = jnp.array([19, 4, 11])
    want = plain(monkeypatch, run, bi, p, xs, None, lengths=lengths)
    assert_trees_close(run(bi, p, xs, None, lengths=lengths), want, 1e-10, 1e-12)


# --------------------------------------------------------------------------- transformations


def test_forward_mode_and_second_order(monkeypatch):
    """jax.jvp (forward mode) and a Hessian-vector product (forward over reverse)."""
    cell, params, carry, xs, lengths = setup("lstm", 21, jnp.float64, seed=4)
    loss = loss_of(cell, lengths=lengths)
    rng = np.random.default_rng(5)
    tangents = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape)), (params, xs, carry))

    def jvp_and_hvp():
        _, jv = jax.jvp(loss, (params, xs, carry), tangents)
        grad = lambda p: jax.grad(loss)(p, xs, carry)  # noqa: E731
        _, hv = jax.jvp(grad, (params,), (tangents[0],))
        return jv, hv

    assert_trees_close(jax.jit(jvp_and_hvp)(), plain(monkeypatch, jax.jit(jvp_and_hvp)), 1e-9, 1e-11)


def test_vmap_over_params_and_jit(monkeypatch):
    cell, params, carry, xs, _ = setup("rnn", 18, jnp.float64, seed=6)
    stacked = jax.tree.map(lambda a: jnp.stack([a, 0.5 * a]), params)

    def per_params(p):
        return jax.grad(loss_of(cell, remat="step"))(p, xs, carry)

    got = jax.jit(jax.vmap(per_params))(stacked)
    want = plain(monkeypatch, jax.jit(jax.vmap(per_params)), stacked)
    assert_trees_close(got, want, 1e-10, 1e-12)


def test_only_some_inputs_differentiated(monkeypatch):
    """Symbolic-zero tangents: gradient w.r.t. w_h alone, and w.r.t. the carry alone."""
    cell, params, carry, xs, _ = setup("gru", 24, jnp.float64, seed=7)
    loss = loss_of(cell)

    def grads():
        g_wh = jax.grad(lambda w: loss(dict(params, w_h=w), xs, carry))(params["w_h"])
        g_c = jax.grad(lambda c: loss(params, xs, c))(carry)
        return g_wh, g_c

    assert_trees_close(jax.jit(grads)(), plain(monkeypatch, jax.jit(grads)), 1e-10, 1e-12)


# --------------------------------------------------------------------------- dispatch


def test_applies_only_to_builtin_cells_with_one_dtype():
    cell, params, carry, xs, _ = setup("lstm", 5, jnp.float32)
    assert fused.applies(cell, params, xs, carry)
    mixed = dict(params, w_h=params["w_h"].astype(jnp.float64))
    assert not fused.applies(cell, mixed, xs, carry)
    # The fast path is chosen by the cell's explicit `fused` flag, never by how it looks.
    custom = cell._replace(step=lambda p, c, x: cell.step(p, c, x), fused=False)
    assert not fused.applies(custom, params, xs, carry)
    user = jr.Cell(init=cell.init, initial_carry=cell.initial_carry, apply=cell.apply, hidden_size=5)
    assert not fused.applies(user, params, xs, carry)
    with pytest.raises(ValueError, match=r"cell.fused is True but cell.kind='mine' has no fast path"):
        fused.applies(cell._replace(kind="mine"), params, xs, carry)
    assert not fused.applies(cell, params, xs[:, :0], carry)
    # The generic path still serves the hand-made cell, with the same values.
    np.testing.assert_allclose(jr.unroll(custom, params, xs, carry)[1], jr.unroll(cell, params, xs, carry)[1],
                               rtol=1e-6, atol=1e-6)


def test_chunk_lengths():
    for steps in (1, 5, 16, 17, 37, 40, 64, 127, 1000, 2048):
        k = fused.chunk_length(steps)
        assert 1 <= k <= max(steps, fused.DEFAULT_CHUNK)
        assert steps % k == 0 or k == fused.DEFAULT_CHUNK
    for steps in (4, 100, 2048, 16384):
        k = fused.chunk_length(steps, "sqrt")
        assert np.sqrt(steps) / 2 <= k <= 2 * np.sqrt(steps)
    assert fused.chunk_length(100, 7) == 7
    assert fused.chunk_length(5, 7) == 5  # a block longer than the sequence is the sequence


# --------------------------------------------------------------------------- per-platform table


def test_platform_table_sets_chunk_and_unroll_and_results_do_not_depend_on_them(monkeypatch):
    """A call takes the chunk length and backward unroll of its platform's row of
    ``fused.PLATFORM_CONFIG`` (the platform is patched to "gpu" here; one without a row
    takes "cpu"'s), and other values give the same float64 results."""
    seen = []
    recurrence = fused._recurrence

    def spy(kind, cfg, *args):
        seen.append(cfg)
        return recurrence(kind, cfg, *args)

    monkeypatch.setattr(fused, "_recurrence", spy)
    cpu = fused.PLATFORM_CONFIG["cpu"]
    cell, params, carry, xs, lengths = setup("lstm", 13, jnp.float64)
    want = run(cell, params, xs, carry, lengths=lengths)
    assert seen[-1][0] == fused.chunk_length(13, None, cpu["chunk"]) and seen[-1][3] == cpu["tangent_unroll"]
    monkeypatch.setattr(fused, "current_platform", lambda *a: "gpu")
    for chunk, t_unroll in ((3, 4), (16, 1)):  # 13 steps: padded to 15; one chunk of 13
        monkeypatch.setitem(fused.PLATFORM_CONFIG, "gpu", {"chunk": chunk, "tangent_unroll": t_unroll})
        got = run(cell, params, xs, carry, lengths=lengths)
        assert seen[-1][0] == min(chunk, 13) and seen[-1][3] == t_unroll, seen[-1]
        assert_trees_close(got, want, rtol=1e-10, atol=1e-12)
    monkeypatch.setattr(fused, "current_platform", lambda *a: "no-such-platform")
    jax.eval_shape(lambda: jr.unroll(cell, params, xs, carry))
    assert seen[-1][0] == fused.chunk_length(13, None, cpu["chunk"]) and seen[-1][3] == cpu["tangent_unroll"]


def test_current_platform_reads_arrays_then_the_default_backend(monkeypatch):
    x = jnp.ones(3)
    assert fused.current_platform(x) == next(iter(x.devices())).platform == "cpu"
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert fused.current_platform() == "gpu"
    assert fused.current_platform(np.ones(3)) == "gpu"  # not a jax array: the default backend
    got = []
    jax.jit(lambda a: got.append(fused.current_platform(a)) or a)(x)  # a tracer: the default backend
    assert got == ["gpu"]
    assert fused.platform_config("gpu") == fused.PLATFORM_CONFIG["gpu"]
    assert fused.platform_config("no-such-platform") == fused.PLATFORM_CONFIG["cpu"]
    assert fused.chunk_length(1000) == fused.chunk_length(1000, None, fused.PLATFORM_CONFIG["gpu"]["chunk"])


# --------------------------------------------------------------------------- memory


def _temp_bytes(remat, steps, batch=4, hidden=32, features=8):
    cell = jr.lstm(hidden)
    params = cell.init(jax.random.key(0), features)
    xs = jax.ShapeDtypeStruct((batch, steps, features), jnp.float32)

    def loss(p, x):
        (h, _), _ = jr.unroll(cell, p, x, remat=remat)
        return jnp.sum(h**2)

    return jax.jit(jax.grad(loss)).lower(params, xs).compile().memory_analysis().temp_size_in_bytes


def test_activation_memory_per_step_meets_targets():
    """Slope of XLA's temp bytes per step, in units of the carried state 2·B·H·4 bytes."""
    floor = 2 * 4 * 32 * 4
    slope = {r: (_temp_bytes(r, 1024) - _temp_bytes(r, 256)) / 768 / floor for r in (None, "step", "sqrt")}
    assert slope[None] <= 4.0, slope
    assert slope["step"] <= 2.0, slope
    assert slope["sqrt"] <= 0.5, slope


def test_scan_called_directly_with_mixed_dtypes_says_so():
    cell = jr.lstm(4)
    params = cell.init(0, 3, jnp.float32)
    with pytest.raises(TypeError, match=r"fused.scan needs params, inputs and carry of one floating dtype, got float32, float64"):
        fused.scan(cell, params, jnp.ones((5, 2, 3), jnp.float64), cell.initial_carry(2, jnp.float32))

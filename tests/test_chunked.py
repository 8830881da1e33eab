"""Per-step losses computed block by block: jr.reduce_blocks, jr.unroll_readout,
jr.layers.affine_cross_entropy and the language model's remat modes (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import assert_trees_close, random_params
from test_user_cells import peephole_lstm

import jaxrnn as jr

MODES = ("step", 2, "sqrt")  # remat modes compared with remat=None
B, I, H, V = 3, 4, 5, 11


def _head(rng):
    return jnp.asarray(rng.normal(size=(H, V)), jnp.float64), jnp.asarray(rng.normal(size=(V,)), jnp.float64)


def _ce(w, b):
    """A readout: summed cross-entropy of the valid steps of a block."""
    def readout(ys, labels, mask):
        return jr.layers.affine_cross_entropy(ys, w, b, labels, mask=mask, reduction="sum")
    return readout


@pytest.mark.parametrize("module", ["lstm", "user cell"])
def test_unroll_readout_equals_the_plain_loss_and_gradients(module):
    """7 steps, with lengths. The user's cell: blocks of 1, of 2 (+ a last block of 1) and
    "sqrt" (3, 3 + 1); the LSTM (its fast path inside each block): "sqrt"."""
    rng = np.random.default_rng(0)
    steps = 7
    if module == "user cell":
        net = peephole_lstm(H)
        params = random_params(net, I, rng, jnp.float64)
    else:
        net = jr.lstm(H)  # stacks: the LM tests below
        params = random_params(net, I, rng, jnp.float64)
    modes = (None,) + (MODES if module == "user cell" else ("sqrt",))
    xs = jnp.asarray(rng.normal(size=(B, steps, I)))
    labels = jnp.asarray(rng.integers(0, V, size=(B, steps)), jnp.int32)
    lengths = jnp.array([steps, 3, 0])
    w, b = _head(rng)

    @jax.jit
    @jax.value_and_grad
    def plain(p):
        _, ys = jr.unroll(net, p, xs, lengths=lengths)
        mask = jnp.arange(steps) < lengths[:, None]
        return jr.layers.affine_cross_entropy(ys, w, b, labels, mask=mask, reduction="sum")

    @jax.jit
    def blocked(p):
        return [jax.value_and_grad(lambda p: jr.unroll_readout(net, p, xs, _ce(w, b), targets=labels,
                                                               lengths=lengths, remat=r)[1])(p)
                for r in modes]

    want = plain(params)
    for got in blocked(params):
        assert_trees_close(got, want, rtol=1e-10, atol=1e-12)
    # the final carry too (the state at each row's last valid step)
    c_plain, _ = jr.unroll(net, params, xs, lengths=lengths)
    c_blocked, _ = jax.jit(lambda p: jr.unroll_readout(net, p, xs, _ce(w, b), targets=labels, lengths=lengths,
                                                       remat="sqrt"))(params)
    assert_trees_close(c_blocked, c_plain, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_affine_cross_entropy_equals_softmax_cross_entropy(reduction):
    """10 positions in chunks of 4 (the last one padded)."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(2, 5, H)))
    w, b = _head(rng)
    labels = jnp.asarray(rng.integers(0, V, size=(2, 5)), jnp.int32)
    mask = jnp.asarray(rng.random((2, 5)) < 0.7)

    def f(x, w, b, chunked):
        if chunked:
            out = jr.layers.affine_cross_entropy(x, w, b, labels, mask, reduction, chunk=4)
        else:
            out = jr.layers.softmax_cross_entropy(x @ w + b, labels, mask, reduction)
        return jnp.sum(out * jnp.arange(1, out.size + 1).reshape(out.shape))  # weights tell positions apart

    vg = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)), static_argnums=3)
    want, got = vg(x, w, b, False), vg(x, w, b, True)
    assert_trees_close(got, want, rtol=1e-12, atol=1e-12)


def _lm(remat, **kw):
    return jr.lm.language_model(V, "rnn", hidden=H, embed=4, layers=2, remat=remat, **kw)


@pytest.mark.parametrize("cell, steps, tie, modes", [("rnn", 7, False, ("step", "sqrt")), ("rnn", 1, True, ("sqrt",)),
                                                     ("user cell", 9, False, ("sqrt",))])
def test_lm_loss_and_gradients_equal_in_every_remat_mode(cell, steps, tie, modes):
    rng = np.random.default_rng(2)
    cell, hidden = (peephole_lstm(4), None) if cell == "user cell" else (cell, 4)
    model = jr.lm.language_model(V, cell, hidden=hidden, embed=4, layers=2, tie=tie)
    params = model.init(jax.random.key(0), jnp.float64)
    carry = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape)), model.initial_carry(B, jnp.float64))
    x = jnp.asarray(rng.integers(0, V, size=(B, steps)), jnp.int32)
    y = jnp.asarray(rng.integers(0, V, size=(B, steps)), jnp.int32)

    @jax.jit
    def f(params):
        out = []
        for remat in (None,) + modes:
            m = jr.lm.language_model(V, cell, hidden=hidden, embed=4, layers=2, tie=tie, remat=remat)
            out.append(jax.value_and_grad(lambda p: jr.lm.loss(m, p, carry, x, y), has_aux=True)(params))
        return out

    want, *got = f(params)
    for g in got:
        assert_trees_close(g, want, rtol=1e-10, atol=1e-12)


def test_lm_dropout_with_remat_draws_one_mask_set_per_block():
    model = _lm(3, dropout=0.5)  # two blocks of 3 steps
    params = model.init(jax.random.key(0), jnp.float64)
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.integers(0, V, size=(B, 6)), jnp.int32)
    y = jnp.asarray(rng.integers(0, V, size=(B, 6)), jnp.int32)
    key = jax.random.key(7)
    carry0 = model.initial_carry(B, jnp.float64)

    def reference(p):  # block j (first step s) uses model.apply with fold_in(key, s)
        c, total = carry0, 0.0
        for s in (0, 3):
            c, logits = model.apply(p, c, x[:, s:s + 3], key=jax.random.fold_in(key, s))
            total = total + jr.layers.softmax_cross_entropy(logits, y[:, s:s + 3], reduction="sum")
        return total / x.size, c

    got = jax.jit(jax.value_and_grad(lambda p: jr.lm.loss(model, p, carry0, x, y, key=key), has_aux=True))(params)
    want = jax.jit(jax.value_and_grad(reference, has_aux=True))(params)
    assert_trees_close(got, want, rtol=1e-10, atol=1e-12)
    no_dropout = jr.lm.loss(model, params, carry0, x, y)[0]
    assert abs(float(got[0][0]) - float(no_dropout)) > 1e-3  # the key does drop units


@pytest.mark.parametrize("kind", ["tbptt", "bptt"])
def test_training_steps_with_remat_equal_those_without(kind):
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.integers(0, V, size=(B, 9)), jnp.int32)
    y = jnp.asarray(rng.integers(0, V, size=(B, 9)), jnp.int32)
    tx = jr.clipped(optax.adam(1e-2), 1.0)
    mod = jr.tbptt if kind == "tbptt" else jr.bptt
    out = []
    for remat in (None, "sqrt"):
        model = _lm(remat)
        params = model.init(jax.random.key(0), jnp.float64)
        state = mod.init_state(params, tx, jr.lm.train_carry(model, B, key=1, dtype=jnp.float64))
        step = mod.make_step(jr.lm.loss_fn(model), tx)
        state, metrics = step(state, x, y)
        out.append((state.params, state.carry, metrics))
    assert_trees_close(out[1], out[0], rtol=1e-9, atol=1e-11)


def _temp(f, *args):
    return jax.jit(jax.grad(f)).lower(*args).compile().memory_analysis().temp_size_in_bytes


def test_sqrt_mode_keeps_far_less_memory():
    """No (B, T, V) logits and no per-step outputs cross the blocks: at T = 256 the
    temporaries of the gradient are a small fraction of remat=None's, for the language
    model and for a user's cell with a readout of its own."""
    vocab, steps = 512, 256
    x = jax.ShapeDtypeStruct((4, steps), jnp.int32)
    temps = {}
    for remat in (None, "sqrt"):
        model = jr.lm.language_model(vocab, "rnn", hidden=32, embed=16, remat=remat)
        p = jax.eval_shape(model.init, jax.random.key(0))
        temps[remat] = _temp(lambda p, x: jr.lm.loss(model, p, model.initial_carry(4), x, x)[0], p, x)
    assert temps["sqrt"] < 0.1 * temps[None], temps

    cell = peephole_lstm(32)
    params = jax.eval_shape(lambda: cell.init(jax.random.key(0), 16))
    w = jax.ShapeDtypeStruct((32, vocab), jnp.float32)
    xs = jax.ShapeDtypeStruct((4, steps, 16), jnp.float32)
    labels = jnp.zeros((4, steps), jnp.int32)

    def user(remat):
        def f(p, w, xs):
            readout = lambda ys, t, m: jr.layers.affine_cross_entropy(ys, w, None, t, m, "sum", chunk=32)  # noqa: E731
            return jr.unroll_readout(cell, p, xs, readout, targets=labels, remat=remat)[1]
        return _temp(f, params, w, xs)

    assert user("sqrt") < 0.15 * user(None)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="remat must be None, 'step', 'sqrt' or a positive int.*got 'half'"):
        jr.lm.language_model(V, remat="half")
    with pytest.raises(ValueError, match="remat must be.*got 0"):
        jr.unroll_readout(jr.lstm(H), None, jnp.ones((1, 2, I)), lambda *a: 0.0, remat=0)
    bi = jr.bidirectional(jr.lstm(H))
    with pytest.raises(TypeError, match="Bidirectional"):
        jr.unroll_readout(bi, None, jnp.ones((1, 2, I)), lambda *a: 0.0, remat="sqrt")
    with pytest.raises(ValueError, match="same length along axis 1"):
        jr.reduce_blocks(lambda c, x, s: (c, 0.0), None, (jnp.ones((1, 2)), jnp.ones((1, 3))), remat=1)
    with pytest.raises(ValueError, match="w must have shape"):
        jr.layers.affine_cross_entropy(jnp.ones((2, 3)), jnp.ones((4, 5)), None, jnp.zeros(2, jnp.int32))

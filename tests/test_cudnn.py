"""The cuDNN LSTM path (jaxrnn/cudnn.py) on a CPU: everything but the kernel.

The kernel (``jax.experimental.rnn.lstm``) is swapped for ``jax.experimental.rnn.lstm_ref``
(``_impl=cudnn.lstm_reference``), which reads the same flat weight vector with jax's own
``unpack_lstm_weights``. So these tests check jaxrnn's packing against jax's reading of
cuDNN's layout, the carry and layout conversions, the ``lengths`` / ``reverse`` / zero-length
handling, the grouping of stacks, dropout, and gradients through the packing, all against
``jr.unroll``'s XLA path in float64 (conftest enables x64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import rnn as jrnn
from jax.test_util import check_grads

import jaxrnn as jr
from jaxrnn import cudnn

REF = cudnn.lstm_reference


def noisy_params(net, input_size, seed, dtype=jnp.float64):
    """``net.init`` plus noise, so that every entry (biases too) is nonzero and distinct."""
    rng = np.random.default_rng(seed)
    p = net.init(jax.random.key(seed), input_size, dtype)
    return jax.tree.map(lambda a: a + jnp.asarray(0.3 * rng.normal(size=a.shape), dtype), p)


def noisy_carry(net, batch, seed, dtype=jnp.float64):
    rng = np.random.default_rng(seed + 100)
    return jax.tree.map(lambda a: jnp.asarray(0.5 * rng.normal(size=a.shape), dtype), net.initial_carry(batch, dtype))


NETS = {
    "lstm": lambda: jr.lstm(5),
    "stack3": lambda: jr.stack([jr.lstm(5), jr.lstm(5), jr.lstm(5)]),  # one cuDNN call, 3 layers
    "bidirectional": lambda: jr.bidirectional(jr.lstm(4)),
    "stack_bi2": lambda: jr.stack([jr.bidirectional(jr.lstm(4)), jr.bidirectional(jr.lstm(4))]),
    "stack_mixed": lambda: jr.stack([jr.lstm(5), jr.lstm(5), jr.bidirectional(jr.lstm(3))]),  # 2 calls
}


def both_paths(net, params, xs, carry, **kw):
    """``(carry, ys)`` and the gradients w.r.t. (params, xs, carry) of a loss reading every
    output and every final carry entry, for the XLA path and the cuDNN path on lstm_ref."""
    rng = np.random.default_rng(7)
    out_shape = jax.eval_shape(lambda: jr.unroll(net, params, xs, carry, **kw))
    weights = jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape), s.dtype), out_shape)

    def loss(run, p, x, c):
        out = run(p, x, c)
        return sum(jnp.sum(a * w) for a, w in zip(jax.tree.leaves(out), jax.tree.leaves(weights)))

    xla = lambda p, x, c: jr.unroll(net, p, x, c, **kw)
    cud = lambda p, x, c: cudnn.unroll(net, p, x, c, _impl=REF, **kw)
    res = []
    for run in (xla, cud):
        both = jax.jit(lambda p, x, c, run=run: (run(p, x, c), jax.grad(lambda *a: loss(run, *a), argnums=(0, 1, 2))(p, x, c)))
        res.append(both(params, xs, carry))
    return res


def assert_trees_close(a, b, rtol=1e-10, atol=1e-10):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert u.shape == v.shape and u.dtype == v.dtype
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=rtol, atol=atol)


@pytest.mark.parametrize("name, with_lengths", [(name, True) for name in NETS] + [("lstm", False), ("stack3", False)])
def test_matches_xla_path_outputs_carries_gradients(name, with_lengths):
    net = NETS[name]()
    params = noisy_params(net, 3, seed=1)
    xs = jnp.asarray(np.random.default_rng(2).normal(size=(4, 6, 3)))
    carry = noisy_carry(net, 4, seed=3)
    kw = {"lengths": jnp.array([6, 2, 0, 5])} if with_lengths else {}  # a zero-length row: jax#17966
    (out_x, g_x), (out_c, g_c) = both_paths(net, params, xs, carry, **kw)
    assert_trees_close(out_c, out_x)
    assert_trees_close(g_c, g_x)
    # The gradients are not trivially zero: every param receives some.
    assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(g_c[0]))
    if with_lengths:  # zero-length row: outputs zero, carry untouched, no gradient to its inputs
        ys = out_c[1]
        assert float(jnp.abs(ys[2]).max()) == 0.0 and float(jnp.abs(ys[1, 2:]).max()) == 0.0
        for got, start in zip(jax.tree.leaves(out_c[0]), jax.tree.leaves(carry)):
            np.testing.assert_array_equal(np.asarray(got[2]), np.asarray(start[2]))
        assert float(jnp.abs(g_c[1][2]).max()) == 0.0


@pytest.mark.parametrize("name", ["lstm", "stack3"])
def test_reverse_with_lengths(name):
    net = NETS[name]()
    params = noisy_params(net, 3, seed=4)
    xs = jnp.asarray(np.random.default_rng(5).normal(size=(3, 5, 3)))
    (out_x, g_x), (out_c, g_c) = both_paths(net, params, xs, noisy_carry(net, 3, 6), reverse=True,
                                            lengths=jnp.array([5, 3, 1]))
    assert_trees_close(out_c, out_x)
    assert_trees_close(g_c, g_x)


def test_time_major_unbatched_and_default_carry():
    net = jr.stack([jr.bidirectional(jr.lstm(3)), jr.lstm(6)])  # two cuDNN calls
    params = noisy_params(net, 3, seed=8)
    xs = jnp.asarray(np.random.default_rng(9).normal(size=(6, 4, 3)))  # (time, batch, features)
    (out_x, g_x), (out_c, g_c) = both_paths(net, params, xs, None, time_major=True, lengths=jnp.array([6, 1, 4, 2]))
    assert out_c[1].shape == (6, 4, 6)
    assert_trees_close(out_c, out_x)
    assert_trees_close(g_c[:2], g_x[:2])
    one = xs[:, 0]  # (time, features), one unbatched sequence, scalar length
    (out_x, g_x), (out_c, g_c) = both_paths(net, params, one, noisy_carry(net, None, 10), lengths=jnp.array(4))
    assert out_c[1].shape == (6, 6)
    assert_trees_close(out_c, out_x)
    assert_trees_close(g_c, g_x)


def test_dropout_with_key_uses_the_xla_paths_masks():
    net = jr.stack([jr.lstm(5), jr.lstm(4)], dropout=0.4)
    params = noisy_params(net, 3, seed=11)
    xs = jnp.asarray(np.random.default_rng(12).normal(size=(4, 6, 3)))
    key = jax.random.key(3)
    (out_x, g_x), (out_c, g_c) = both_paths(net, params, xs, None, key=key, lengths=jnp.array([6, 3, 0, 2]))
    assert_trees_close(out_c, out_x)
    assert_trees_close(g_c[:2], g_x[:2])
    # ...and the dropout really ran: without the key the outputs differ.
    _, ys_eval = cudnn.unroll(net, params, xs, _impl=REF, lengths=jnp.array([6, 3, 0, 2]))
    assert float(jnp.abs(ys_eval - out_c[1]).max()) > 1e-3


def test_gradients_match_finite_differences():
    net = jr.bidirectional(jr.lstm(3))
    params = noisy_params(net, 2, seed=13)
    xs = jnp.asarray(np.random.default_rng(14).normal(size=(2, 4, 2)))
    lengths = jnp.array([4, 2])

    def f(p, x):
        carry, ys = cudnn.unroll(net, p, x, lengths=lengths, _impl=REF)
        return jnp.sum(jnp.sin(ys)) + sum(jnp.sum(c ** 2) for c in jax.tree.leaves(carry))

    check_grads(f, (params, xs), order=1, modes=("rev",), atol=1e-6, rtol=1e-6)


def test_jit_with_traced_zero_lengths():
    net = NETS["stack_bi2"]()
    params = noisy_params(net, 3, seed=15)
    xs = jnp.asarray(np.random.default_rng(16).normal(size=(3, 5, 3)))
    lengths = jnp.array([0, 5, 2])
    run = jax.jit(lambda p, x, n: cudnn.unroll(net, p, x, lengths=n, _impl=REF))
    assert_trees_close(run(params, xs, lengths), jr.unroll(net, params, xs, lengths=lengths))


# --------------------------------------------------------------------------- packing


@pytest.mark.parametrize("name", ["lstm", "stack3", "bidirectional", "stack_bi2"])
def test_unpack_inverts_pack(name):
    net = NETS[name]()
    params = noisy_params(net, 3, seed=17, dtype=jnp.float32)
    w = cudnn.pack(net, params)
    layers = net.layers if isinstance(net, jr.Stack) else (net,)
    bi = isinstance(layers[0], jr.Bidirectional)
    hidden = layers[0].forward.hidden_size if bi else layers[0].hidden_size
    assert w.shape == (jrnn.get_num_params_in_lstm(3, hidden, len(layers), bi),)
    back = cudnn.unpack(net, w, 3)
    assert jax.tree.structure(back) == jax.tree.structure(params)
    for u, v in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


def test_pack_layout_is_jax_experimental_rnns():
    """Entry by entry: jax's unpack of our vector gives W_ih = w_x^T, W_hh = w_h^T, b_ih = b,
    b_hh = 0, pseudo-layer order (layer 0 forward, layer 0 backward, layer 1 forward, ...)."""
    net = NETS["stack_bi2"]()
    params = noisy_params(net, 3, seed=18, dtype=jnp.float32)
    w_ih, w_hh, b_ih, b_hh = jrnn.unpack_lstm_weights(cudnn.pack(net, params), 3, 4, 2, True)
    for layer in range(2):
        for d, name in enumerate(("forward", "backward")):
            p, q = params[layer][name], 2 * layer + d
            np.testing.assert_array_equal(np.asarray(w_ih[q]), np.asarray(p["w_x"]).T)
            np.testing.assert_array_equal(np.asarray(w_hh[q]), np.asarray(p["w_h"]).T)
            np.testing.assert_array_equal(np.asarray(b_ih[q]), np.asarray(p["b"]))
            np.testing.assert_array_equal(np.asarray(b_hh[q]), np.zeros(16, np.float32))


def test_unpack_of_cudnn_initialised_weights_computes_the_same_lstm():
    """Weights from jax.experimental.rnn.init_lstm_weight (nonzero b_hh): unpacked into
    jaxrnn params, jr.unroll's XLA path equals lstm_ref on the original vector."""
    net = jr.stack([jr.bidirectional(jr.lstm(4)), jr.bidirectional(jr.lstm(4))])
    w = jrnn.init_lstm_weight(jax.random.key(0), 3, 4, 2, True).astype(jnp.float64)
    params = cudnn.unpack(net, w, 3)
    xs = jnp.asarray(np.random.default_rng(19).normal(size=(3, 5, 3)))
    lengths = jnp.array([5, 1, 3])
    zeros = jnp.zeros((4, 3, 4), jnp.float64)
    y_ref, h_ref, c_ref = REF(xs, zeros, zeros, w, lengths.astype(jnp.int32), input_size=3, hidden_size=4,
                              num_layers=2, bidirectional=True)
    carry, ys = jr.unroll(net, params, xs, lengths=lengths)
    np.testing.assert_allclose(np.asarray(ys), np.asarray(y_ref), rtol=1e-12, atol=1e-12)
    h = jnp.stack([carry[l][d][0] for l in range(2) for d in range(2)])
    c = jnp.stack([carry[l][d][1] for l in range(2) for d in range(2)])
    np.testing.assert_allclose(np.asarray(h), np.asarray(h_ref), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(c), np.asarray(c_ref), rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- backend= and errors


def test_auto_falls_back_on_cpu_and_for_unsupported_calls():
    xs = jnp.asarray(np.random.default_rng(20).normal(size=(2, 4, 3)), jnp.float32)
    for net in (jr.lstm(5), jr.gru(5)):
        params = net.init(jax.random.key(0), 3)
        assert_trees_close(jr.unroll(net, params, xs, backend="auto"), jr.unroll(net, params, xs), 0, 0)
    params = jr.lstm(5).init(jax.random.key(0), 3)
    assert_trees_close(jr.unroll(jr.lstm(5), params, xs, remat="sqrt", backend="auto"),
                       jr.unroll(jr.lstm(5), params, xs, remat="sqrt"), 0, 0)


def test_cudnn_backend_on_cpu_raises_naming_the_device():
    cell = jr.lstm(5)
    params = cell.init(jax.random.key(0), 3)
    with pytest.raises(ValueError, match=r"backend='cudnn' needs a CUDA GPU.*'cpu'"):
        jr.unroll(cell, params, jnp.ones((2, 4, 3), jnp.float32), backend="cudnn")


def _hand_made_lstm(h):
    base = jr.lstm(h)
    return base._replace(step=lambda p, c, xp: base.step(p, c, xp), fused=False)


@pytest.mark.parametrize("net, error, match", [
    (jr.gru(5), TypeError, r"cell is a gru Cell; cuDNN runs jr.lstm cells only"),
    (jr.rnn(5), TypeError, r"cell is a rnn Cell"),
    (_hand_made_lstm(5), TypeError, r"an LSTM Cell with fused=False"),
    (jr.stack([jr.lstm(5), jr.gru(5)]), TypeError, r"layer 1 of the Stack is a gru Cell"),
    (jr.bidirectional(jr.lstm(5), jr.lstm(4)), TypeError, r"hidden sizes 5 \(forward\) and 4 \(backward\)"),
    (jr.bidirectional(jr.lstm(5), jr.gru(5)), TypeError, r"backward cell is a gru Cell"),
])
def test_unsupported_modules_raise(net, error, match):
    params = net.init(jax.random.key(0), 3)
    with pytest.raises(error, match=match):
        cudnn.unroll(net, params, jnp.ones((2, 4, 3)), _impl=REF)


def test_unsupported_arguments_raise_naming_them():
    cell = jr.lstm(5)
    p32 = cell.init(jax.random.key(0), 3)
    x32 = jnp.ones((2, 4, 3), jnp.float32)
    with pytest.raises(ValueError, match=r"needs remat=None .* got remat='step'"):
        cudnn.unroll(cell, p32, x32, remat="step", _impl=REF)
    with pytest.raises(TypeError, match=r"float32 only .* xs has dtype bfloat16"):
        cudnn.unroll(cell, p32, x32.astype(jnp.bfloat16), _impl=REF)
    with pytest.raises(TypeError, match=r"float32 only .* params has dtype bfloat16"):
        cudnn.unroll(cell, jax.tree.map(lambda a: a.astype(jnp.bfloat16), p32), x32, _impl=REF)
    with pytest.raises(TypeError, match=r"one dtype, got \['float32', 'float64'\]"):
        cudnn.unroll(cell, p32, x32.astype(jnp.float64), _impl=REF)
    with pytest.raises(ValueError, match=r"reverse=True has no meaning for a Bidirectional"):
        bi = jr.bidirectional(cell)
        cudnn.unroll(bi, bi.init(jax.random.key(0), 3), x32, reverse=True, _impl=REF)
    with pytest.raises(ValueError, match=r"reverse=True has no meaning for a Bidirectional"):
        net = jr.stack([cell, jr.bidirectional(cell)])
        cudnn.unroll(net, net.init(jax.random.key(0), 3), x32, reverse=True, _impl=REF)
    with pytest.raises(ValueError, match=r"without empty axes, got shape \(2, 0, 3\)"):
        cudnn.unroll(cell, p32, jnp.ones((2, 0, 3), jnp.float32), _impl=REF)
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, 4\].*\[0, 5\]"):
        cudnn.unroll(cell, p32, x32, lengths=jnp.array([5, 0]), _impl=REF)
    with pytest.raises(ValueError, match=r"lengths must have shape \(2,\)"):
        cudnn.unroll(cell, p32, x32, lengths=jnp.array([4]), _impl=REF)
    with pytest.raises(ValueError, match=r"params\['w_h'\] must have shape \(5, 20\)"):
        cudnn.unroll(cell, jr.lstm(4).init(jax.random.key(0), 3), x32, _impl=REF)
    with pytest.raises(ValueError, match=r"expects 3 input features .* this layer reads 2"):
        cudnn.unroll(cell, p32, jnp.ones((2, 4, 2), jnp.float32), _impl=REF)
    with pytest.raises(ValueError, match=r"carry has batch shape \(3,\) but xs has batch shape \(2,\)"):
        cudnn.unroll(cell, p32, x32, cell.initial_carry(3), _impl=REF)
    with pytest.raises(ValueError, match=r"unroll must be a positive int"):
        cudnn.unroll(cell, p32, x32, unroll=0, _impl=REF)
    with pytest.raises(ValueError, match=r"backend must be one of \['xla', 'cudnn', 'auto'\], got 'cuda'"):
        jr.unroll(cell, p32, x32, backend="cuda")


def test_pack_and_unpack_errors():
    mixed = jr.stack([jr.lstm(5), jr.lstm(4)])
    with pytest.raises(ValueError, match=r"one kind and one hidden size"):
        cudnn.pack(mixed, mixed.init(jax.random.key(0), 3))
    with pytest.raises(TypeError, match=r"gru Cell"):
        cudnn.pack(jr.gru(5), jr.gru(5).init(jax.random.key(0), 3))
    with pytest.raises(ValueError, match=r"weights must have shape \(200,\) for 1 LSTM layer\(s\) with input_size=3, hidden_size=5, got \(7,\)"):
        cudnn.unpack(jr.lstm(5), jnp.zeros((7,)), 3)


# --------------------------------------------------------------------------- the kernel call


def _equations(jaxpr):
    """Every equation of a jaxpr, those of nested jaxprs (jit, custom_vjp, scan) included."""
    for eqn in jaxpr.eqns:
        yield eqn
        for v in eqn.params.values():
            for sub in (v if isinstance(v, (tuple, list)) else (v,)):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _equations(inner)


def test_the_cudnn_kernel_call_traces_with_its_shapes(monkeypatch):
    """With no GPU, trace (not run) the real kernel path: jax.experimental.rnn.lstm's
    forward and backward primitives receive batch-major x, (layers*directions, B, H)
    carries, a weight vector of get_num_params_in_lstm entries and int32 lengths. The
    workspace-size query needs the CUDA plugin, so a stand-in answers it."""
    fake = type("FakeGpuRnn", (), {"compute_rnn_workspace_reserve_space_sizes": staticmethod(lambda *a: (0, 64))})
    monkeypatch.setattr(jrnn, "gpu_rnn", fake)
    monkeypatch.setattr(cudnn, "available", lambda: True)
    net = jr.stack([jr.bidirectional(jr.lstm(4)), jr.bidirectional(jr.lstm(4)), jr.lstm(6)])  # two cuDNN calls
    params = noisy_params(net, 3, seed=21, dtype=jnp.float32)
    xs = jnp.ones((5, 7, 3), jnp.float32)  # time-major: (T=5, B=7, I=3)
    lengths = jnp.array([5, 0, 1, 2, 3, 4, 5])

    def loss(p, x):
        carry, ys = jr.unroll(net, p, x, lengths=lengths, time_major=True, backend="cudnn")
        assert ys.shape == (5, 7, 6) and ys.dtype == jnp.float32
        return jnp.sum(ys) + sum(jnp.sum(c) for c in jax.tree.leaves(carry))

    eqns = list(_equations(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(params, xs).jaxpr))
    fwd = [e for e in eqns if e.primitive.name == "rnn_fwd"]
    bwd = [e for e in eqns if e.primitive.name == "rnn_bwd"]
    assert len(fwd) == 2 and len(bwd) == 2
    want = [(3, 4, 2, True, (7, 5, 3)), (8, 6, 1, False, (7, 5, 8))]  # input, hidden, layers, bidirectional, x
    for e, (i, h, n, bi, x_shape) in zip(fwd, want):
        assert (e.params["input_size"], e.params["hidden_size"], e.params["num_layers"], e.params["bidirectional"]) == (i, h, n, bi)
        x, h0, c0, w, seq = (v.aval for v in e.invars)
        d = 2 if bi else 1
        assert x.shape == x_shape and x.dtype == jnp.float32
        assert h0.shape == c0.shape == (n * d, 7, h)
        assert w.shape == (jrnn.get_num_params_in_lstm(i, h, n, bi),) and w.dtype == jnp.float32
        assert seq.shape == (7,) and seq.dtype == jnp.int32
        assert e.params["dropout"] is False

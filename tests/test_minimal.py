"""minGRU and minLSTM (jaxrnn.cells.minimal) and the associative scan (jaxrnn.linear_scan).

* every cell, both variants, against a float64 NumPy loop of its equations;
* the associative scan equal to the sequential one (outputs, final carry, gradients
  w.r.t. params, inputs and the initial carry) with lengths and reverse at T = 1, 7, 1000;
  everything that runs a scan is jitted (eager ``associative_scan`` dispatches hundreds
  of small operations), and the shapes are small: the file must stay fast on 2 cores;
* stability over a long sequence whose cumulative gate product underflows;
* padding that holds NaN changes nothing; TBPTT, Stack and Bidirectional take either path;
* a linear cell of the user's own through the associative scan;
* one test per error message.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxrnn as jr
from jaxrnn import cli, linear_scan
from conftest import assert_trees_close, random_params

#: jax.jit with XLA's backend optimisations off: the associative scan's programs take
#: seconds to compile on 2 cores, half as long this way; the values are the same to the
#: tolerances below.
fast_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})

VARIANTS = [("mingru", False), ("mingru", True), ("minlstm", False), ("minlstm", True)]
MAKE = {"mingru": jr.mingru, "minlstm": jr.minlstm}


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def _g(v):
    return np.where(v >= 0, v + 0.5, _sigmoid(v))


def reference(kind, log_space, params, xs, h0, lengths=None):
    """The paper's equations, a plain float64 loop: (h_T, ys) for xs (B, T, I)."""
    w, b = (np.asarray(params[k], np.float64) for k in ("w_x", "b"))
    xs, h = np.asarray(xs, np.float64), np.array(h0, np.float64)
    n_rows, steps, _ = xs.shape
    H = h.shape[-1]
    ys = np.zeros((n_rows, steps, H))
    for r in range(n_rows):
        for t in range(steps if lengths is None else int(lengths[r])):
            p = xs[r, t] @ w + b
            if kind == "mingru":
                k, u = p[:H], p[H:]
                z = _sigmoid(k)
                h_new = (1 - z) * h[r] + z * (_g(u) if log_space else u)
            else:
                f, i, u = _sigmoid(p[:H]), _sigmoid(p[H:2 * H]), p[2 * H:]
                h_new = f / (f + i) * h[r] + i / (f + i) * (_g(u) if log_space else u)
            h[r] = ys[r, t] = h_new
    return h, ys


def setup(kind, log_space, B, T, I, H, seed=0, dtype=jnp.float64):
    rng = np.random.default_rng(seed)
    cell = MAKE[kind](H, log_space=log_space)
    params = random_params(cell, I, rng, dtype, scale=0.8)
    xs = jnp.asarray(rng.normal(size=(B, T, I)), dtype)
    h0 = jnp.asarray(rng.normal(size=(B, H)), dtype)
    return cell, params, xs, h0


def _both_ways(cell, params, xs, h0, lengths, scan):
    fwd = jr.unroll(cell, params, xs, h0, lengths=lengths, scan=scan)
    bwd = jr.unroll(cell, params, xs, h0, lengths=lengths, reverse=True, scan=scan)
    return fwd, bwd


@pytest.mark.parametrize("kind,log_space", VARIANTS)
def test_matches_numpy_loop_of_the_equations(kind, log_space):
    """Both scans with lengths (full, short, empty rows), ``apply`` and ``linear``
    against the float64 loop (reversed reading: test_associative_equals_sequential...)."""
    cell, params, xs, h0 = setup(kind, log_space, 3, 7, 4, 5)
    lengths = np.array([7, 3, 0])
    want_h, want_ys = reference(kind, log_space, params, xs, h0, lengths)
    run = fast_jit(lambda p, x, c, n: {s: jr.unroll(cell, p, x, c, lengths=n, scan=s) for s in ("sequential", "associative")})
    for scan, (h, ys) in run(params, xs, h0, jnp.asarray(lengths)).items():
        np.testing.assert_allclose(ys, want_ys, rtol=1e-12, atol=1e-12, err_msg=scan)
        np.testing.assert_allclose(h, want_h, rtol=1e-12, atol=1e-12, err_msg=scan)
    # apply, one step, and the linear form y_t = a_t * h + b_t, are the same cell.
    _, full = reference(kind, log_space, params, xs[:, :1], h0)
    np.testing.assert_allclose(cell.apply(params, h0, xs[:, 0])[1], full[:, 0], rtol=1e-12, atol=1e-12)
    a, b = jr.cells.protocol.linear_space(cell.linear(params, xs[:, 0]))
    np.testing.assert_allclose(a * h0 + b, full[:, 0], rtol=1e-12, atol=1e-12)


@functools.partial(fast_jit, static_argnums=(0, 1, 2))
def _values_and_grads(cell, scan, reverse, params, xs, h0, lengths, weights):
    def loss(params, xs, h0):
        out = jr.unroll(cell, params, xs, h0, lengths=lengths, reverse=reverse, scan=scan)
        return sum(jnp.sum(w * v) for w, v in zip(weights, out)), out

    (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(params, xs, h0)
    return out, grads


# (cell, log_space, T, reverse): every T the issue names, both cells, both variants,
# both directions; two cases at T = 1000, one per variant (an associative program of
# that length takes seconds to compile, more in log space).
GRAD_CASES = [("mingru", False, 1, False), ("minlstm", True, 1, True), ("mingru", True, 7, True),
              ("minlstm", False, 7, False), ("mingru", False, 1000, True), ("minlstm", True, 1000, False)]


@pytest.mark.parametrize("kind,log_space,T,reverse", GRAD_CASES)
def test_associative_equals_sequential_with_gradients(kind, log_space, T, reverse):
    """Outputs, final carry and gradients w.r.t. params, inputs and h0, with lengths
    (one row full, one short, one empty)."""
    B, H = 3, 2
    cell, params, xs, h0 = setup(kind, log_space, B, T, 2, H, seed=T)
    lengths = jnp.array([T, (T + 1) // 2, 0])
    rng = np.random.default_rng(1)
    weights = (jnp.asarray(rng.normal(size=(B, H))), jnp.asarray(rng.normal(size=(B, T, H))))
    seq = _values_and_grads(cell, "sequential", reverse, params, xs, h0, lengths, weights)
    par = _values_and_grads(cell, "associative", reverse, params, xs, h0, lengths, weights)
    assert_trees_close(par, seq, rtol=1e-10, atol=1e-12)
    (_, ys), grads = seq
    assert float(jnp.abs(ys[2]).max()) == 0.0 and float(jnp.abs(ys[1, (T + 1) // 2:]).max(initial=0.0)) == 0.0
    assert float(jnp.abs(grads[2][2]).max()) > 0  # h0 of the empty row reaches the loss through its carry


@pytest.mark.parametrize("kind,log_space", [("mingru", False), ("minlstm", True)])
def test_stable_where_the_gate_product_underflows(kind, log_space):
    """float32 over 100 steps with forget coefficients about 0.05: the cumulative
    product a_1 ... a_t underflows within ~40 steps (so dividing by it, as a
    cumulative-sum formulation does, breaks), yet every output matches float64."""
    T, H = 100, 3
    cell, params, xs, h0 = setup(kind, log_space, 1, T, 2, H, seed=3, dtype=jnp.float32)
    # forget logits near +3 (minGRU: z = sigmoid(3); minLSTM: i >> f).
    bias = np.asarray(params["b"]).copy()
    if kind == "mingru":
        bias[:H] = 3.0
    else:
        bias[:H], bias[H:2 * H] = -3.0, 3.0
    params = {**params, "b": jnp.asarray(bias)}
    a, b = jr.cells.protocol.linear_space(cell.linear(params, xs[0]))
    cum = np.cumprod(np.asarray(a), axis=0)
    assert cum[-1].max() == 0.0  # the naive product has underflowed
    with np.errstate(all="ignore"):
        naive = cum * np.cumsum(np.asarray(b) / cum, axis=0)  # the cumulative-sum form
    assert not np.isfinite(naive).all()
    h, ys = fast_jit(lambda p, x, c: jr.unroll(cell, p, x, c, scan="associative"))(params, xs, h0)
    want_h, want_ys = reference(kind, log_space, params, xs, h0)
    assert bool(jnp.isfinite(ys).all())
    np.testing.assert_allclose(ys, want_ys, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(h, want_h, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("kind,log_space", [("minlstm", True)])
def test_nan_padding_changes_no_gradient(kind, log_space):
    cell, params, xs, h0 = setup(kind, log_space, 2, 5, 3, 4)
    lengths = jnp.array([5, 2])
    pad = (jnp.arange(5) >= lengths[:, None])[..., None]
    poisoned = jnp.where(pad, jnp.nan, xs)

    @fast_jit
    def grads(params, xs, h0):
        def loss(p, x, c):
            h, ys = jr.unroll(cell, p, x, c, lengths=lengths, reverse=True, scan="associative")
            return jnp.sum(ys ** 2) + jnp.sum(h)
        return jax.value_and_grad(loss, argnums=(0, 1, 2))(params, xs, h0)

    clean, dirty = grads(params, xs, h0), grads(params, poisoned, h0)
    dirty = (dirty[0], (dirty[1][0], jnp.where(pad, 0.0, dirty[1][1]), dirty[1][2]))
    assert_trees_close(dirty, clean, rtol=0, atol=0)


def test_remat_and_unbatched_inputs():
    """remat (blocks with a padded tail; a checkpoint around the associative scan) and
    one unbatched sequence give the same values and gradients."""
    cell, params, xs, h0 = setup("mingru", False, 1, 7, 2, 3)
    xs, h0 = xs[0], h0[0]

    @fast_jit
    def run(params, xs, h0):
        def loss(p, scan, remat):
            h, ys = jr.unroll(cell, p, xs, h0, lengths=jnp.array(5), scan=scan, remat=remat)
            return jnp.sum(ys ** 2) + jnp.sum(h)
        return [jax.value_and_grad(loss)(params, s, r)
                for s, r in (("sequential", None), ("sequential", 3), ("associative", "step"))]

    ref, *others = run(params, xs, h0)
    for other in others:
        assert_trees_close(other, ref, rtol=1e-12, atol=1e-12)


def test_tbptt_sequential_equals_associative():
    """Two TBPTT segments (the carry crosses the cut): same losses, params and carry."""
    cell = jr.minlstm(4)
    rng = np.random.default_rng(0)
    params = {"rnn": random_params(cell, 3, rng, jnp.float64), "w": jnp.asarray(rng.normal(size=(4, 2)))}
    xs = jnp.asarray(rng.normal(size=(2, 2, 5, 3)))
    ys = jnp.asarray(rng.normal(size=(2, 2, 5, 2)))
    tx = optax.sgd(0.1)
    results = []
    for scan in ("sequential", "associative"):
        def loss_fn(p, carry, x, y, scan=scan):
            carry, hs = jr.unroll(cell, p["rnn"], x, carry, scan=scan)
            return jnp.mean((hs @ p["w"] - y) ** 2), carry

        step = jr.tbptt.make_step(loss_fn, tx, donate=False)
        state = jr.tbptt.init_state(params, tx, cell.initial_carry(2, jnp.float64))
        losses = []
        for x, y in zip(xs, ys):
            state, metrics = step(state, x, y)
            losses.append(metrics["loss"])
        results.append((losses, state.params, state.carry))
    assert_trees_close(results[1], results[0], rtol=1e-10, atol=1e-12)


def test_stack_and_bidirectional_take_the_associative_path():
    net = jr.stack([jr.mingru(4), jr.bidirectional(jr.minlstm(3))])
    params = net.init(0, 2, jnp.float64)
    xs = jnp.asarray(np.random.default_rng(0).normal(size=(2, 9, 2)))
    lengths = jnp.array([9, 4])
    run = {s: functools.partial(jr.unroll, net, lengths=lengths, scan=s) for s in ("sequential", "associative", "auto")}
    both = fast_jit(lambda p, x: (run["associative"](p, x), run["sequential"](p, x)))
    assert_trees_close(*both(params, xs), rtol=1e-12, atol=1e-12)
    # The associative program has no step loop; on a CPU "auto" keeps the loop.
    assert "scan[" not in str(jax.make_jaxpr(run["associative"])(params, xs))
    auto = str(jax.make_jaxpr(run["auto"])(params, xs))
    assert ("scan[" in auto) == (jax.default_backend() == "cpu")


def test_auto_is_associative_on_an_accelerator(monkeypatch):
    assert linear_scan.use_associative("auto", jr.mingru(2), 100) == (jax.default_backend() != "cpu")
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert linear_scan.use_associative("auto", jr.mingru(2), 100)
    assert not linear_scan.use_associative("auto", jr.mingru(2), 1)
    assert not linear_scan.use_associative("auto", jr.gru(2), 100)


def ema_cell(hidden_size):
    """A cell of the user's own: an exponential moving average of a projection,
    h' = lam * h + (1 - lam) * (x W), lam = sigmoid(p["l"]) per unit."""
    def init(key, input_size, dtype=jnp.float32):
        return {"w": jax.random.normal(jax.random.key(key) if isinstance(key, int) else key, (input_size, hidden_size), dtype),
                "l": jnp.zeros((hidden_size,), dtype)}

    def linear(p, xs):
        lam = jax.nn.sigmoid(p["l"])
        return jnp.broadcast_to(lam, xs.shape[:-1] + lam.shape), (1 - lam) * (xs @ p["w"])

    def apply(p, h, x):
        a, b = linear(p, x)
        h = a * h + b
        return h, h

    return jr.Cell(init=init, initial_carry=lambda batch=None, dtype=jnp.float32: jnp.zeros(
        jr.cells.protocol._batch_shape(batch) + (hidden_size,), dtype), apply=apply, hidden_size=hidden_size,
        linear=linear)


def test_a_linear_cell_of_your_own():
    cell = ema_cell(3)
    rng = np.random.default_rng(0)
    params = random_params(cell, 2, rng, jnp.float64)
    xs = jnp.asarray(rng.normal(size=(2, 6, 2)))
    lengths = jnp.array([6, 3])
    run = fast_jit(lambda p, x: [jr.unroll(cell, p, x, lengths=lengths, reverse=True, scan=s)
                                for s in ("sequential", "associative")])
    (h_seq, ys_seq), (h_par, ys_par) = run(params, xs)
    assert_trees_close((h_par, ys_par), (h_seq, ys_seq), rtol=1e-12, atol=1e-12)
    # Against its own apply, step by step (row 0 is full: reversed = read from the end).
    h = jnp.zeros((3,))
    for t in range(5, -1, -1):
        h, y = cell.apply(params, h, xs[0, t])
        np.testing.assert_allclose(ys_par[0, t], y, rtol=1e-12)
    np.testing.assert_allclose(h_par[0], h, rtol=1e-12)


def test_language_model_and_cli_accept_the_minimal_cells():
    assert {"mingru", "minlstm"} <= set(jr.cells.BUILTIN) and {"mingru", "minlstm"} <= set(cli.CELLS)
    for name in ("mingru", "minlstm"):
        model = jr.lm.language_model(vocab_size=7, cell=name, hidden=8, embed=4, layers=2)
        params = jax.eval_shape(lambda: model.init(jax.random.key(0)))
        assert params["rnn"][1]["w_x"].shape == (8, jr.cells.minimal.MINIMAL[name] * 8)
        tokens = jnp.zeros((2, 6), jnp.int32)
        loss, carry = jax.eval_shape(lambda p: jr.lm.loss(model, p, model.initial_carry(2), tokens, tokens), params)
        assert loss.shape == () and [c.shape for c in carry] == [(2, 8), (2, 8)]


# --------------------------------------------------------------------------- errors


def abstract(fn, *args):
    """Run ``fn`` abstractly (``jax.eval_shape``): the checks raise at trace time, and
    nothing is compiled."""
    return jax.eval_shape(fn, *args)


def shapes(cell, input_size):
    return jax.eval_shape(lambda: cell.init(jax.random.key(0), input_size))


def test_error_associative_scan_on_a_nonlinear_cell():
    cell = jr.lstm(3)
    with pytest.raises(ValueError, match=r"scan='associative' needs a cell whose recurrence is linear in h.*"
                       r"cell \(kind 'lstm'\) has linear=None: its recurrence is not linear in h"):
        abstract(lambda p: jr.unroll(cell, p, jnp.ones((1, 4, 2)), scan="associative"), shapes(cell, 2))


def test_error_associative_scan_names_the_layer():
    net = jr.stack([jr.mingru(3), jr.gru(3)])
    with pytest.raises(ValueError, match=r"cell\.layers\[1\] \(kind 'gru'\) has linear=None"):
        abstract(lambda p: jr.unroll(net, p, jnp.ones((1, 4, 2)), scan="associative"), shapes(net, 2))


def test_error_unknown_scan():
    cell = jr.mingru(3)
    with pytest.raises(ValueError, match=r"scan must be one of 'auto', 'sequential', 'associative', got 'parallel'"):
        abstract(lambda p: jr.unroll(cell, p, jnp.ones((1, 4, 2)), scan="parallel"), shapes(cell, 2))


def test_error_associative_scan_with_cudnn():
    cell = jr.mingru(3)
    with pytest.raises(ValueError, match=r"scan='associative' runs on backend='xla'.*got backend='cudnn'"):
        abstract(lambda p: jr.unroll(cell, p, jnp.ones((1, 4, 2)), scan="associative", backend="cudnn"), shapes(cell, 2))


def test_error_params_of_an_lstm():
    params = shapes(jr.lstm(3), 2)
    cell = jr.mingru(3)
    msg = r"params for a minGRU cell must have keys \['b', 'w_x'\], got \['b', 'w_h', 'w_x'\] .*params of an LSTM"
    with pytest.raises(TypeError, match=msg):
        abstract(lambda p: jr.unroll(cell, p, jnp.ones((1, 4, 2))), params)
    with pytest.raises(TypeError, match=msg):
        abstract(lambda p: cell.apply(p, cell.initial_carry(1), jnp.ones((1, 2))), params)


def test_error_params_of_the_other_minimal_cell():
    params = shapes(jr.minlstm(3), 2)
    with pytest.raises(ValueError, match=r"params\['w_x'\] must have shape \(input_size, 6\) for a minGRU cell with "
                       r"hidden_size=3 \(2 blocks of H\), got \(2, 9\) \(these look like params of a minLSTM cell\)"):
        abstract(lambda p: jr.unroll(jr.mingru(3), p, jnp.ones((1, 4, 2)), scan="associative"), params)


def test_error_carry_of_a_minimal_cell_is_one_array():
    cell = jr.minlstm(3)
    with pytest.raises(TypeError, match=r"carry of a minLSTM cell must be one array h of shape \(\.\.\., 3\), got a tuple"):
        abstract(lambda p: cell.apply(p, (jnp.zeros((1, 3)), jnp.zeros((1, 3))), jnp.ones((1, 2))), shapes(cell, 2))


def test_error_log_space_not_a_bool():
    with pytest.raises(TypeError, match=r"log_space must be a bool, got 'yes'"):
        jr.mingru(3, log_space="yes")


def test_error_linear_not_callable():
    cell = ema_cell(3)._replace(linear="a, b")
    with pytest.raises(TypeError, match=r"cell\.linear must be None or callable, got str"):
        abstract(lambda p: jr.unroll(cell, p, jnp.ones((1, 4, 2))), shapes(ema_cell(3), 2))


def test_error_linear_returns_wrong_shapes():
    cell = ema_cell(3)
    bad = cell._replace(linear=lambda p, xs: (jnp.ones(xs.shape[:-1] + (3,)), jnp.ones(xs.shape[:-1] + (4,))))
    with pytest.raises(ValueError, match=r"returned b of shape \(4, 1, 4\), expected \(4, 1, 3\)"):
        abstract(lambda p: jr.unroll(bad, p, jnp.ones((1, 4, 2)), scan="associative"), shapes(cell, 2))


def test_error_linear_cell_with_a_tuple_carry():
    cell = ema_cell(3)
    pair = cell._replace(initial_carry=lambda batch=None, dtype=jnp.float32: (ema_cell(3).initial_carry(batch, dtype),) * 2,
                         apply=lambda p, c, x: (c, c[0]))
    with pytest.raises(TypeError, match=r"cell has linear set, so its carry must be one array h .*got tuple"):
        abstract(lambda p: jr.unroll(pair, p, jnp.ones((1, 4, 2))), shapes(cell, 2))

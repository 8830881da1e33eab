"""The cells beyond the classic three: projected LSTM, layer-normalised LSTM and GRU, MGU, IndRNN.

Each cell is checked in float64 against a plain Python loop of its equations written
here from the papers / the docstrings (not the cell's code): outputs, final carry and
the gradients of one scalar loss with respect to every parameter, the inputs and the
initial carry. The MGU is also checked against Flax's ``nn.MGUCell`` with the same
weights, and every error case of the issue asserts its message.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import assert_trees_close, random_carry, random_params

import jaxrnn as jr

B, T, F, H, P = 2, 3, 3, 4, 3
sig = jax.nn.sigmoid


def _blocks(a, n):
    return [a[..., k * H : (k + 1) * H] for k in range(n)]


def _ln(a, gain, eps=1e-5):
    """Layer norm of one block over its last axis, written out."""
    mu = jnp.sum(a, axis=-1, keepdims=True) / a.shape[-1]
    var = jnp.sum((a - mu) ** 2, axis=-1, keepdims=True) / a.shape[-1]
    return gain * (a - mu) / jnp.sqrt(var + eps)


def _ln_blocks(a, gain, n):
    return jnp.concatenate([_ln(a_k, g_k) for a_k, g_k in zip(_blocks(a, n), _blocks(gain, n))], axis=-1)


def ref_lstmp(p, carry, x):
    h, c = carry
    zi, zf, zg, zo = _blocks(x @ p["w_x"] + p["b"] + h @ p["w_h"], 4)
    c = sig(zf) * c + sig(zi) * jnp.tanh(zg)
    h = (sig(zo) * jnp.tanh(c)) @ p["w_hr"]
    return (h, c), h


def ref_lnlstm(p, carry, x):
    h, c = carry
    z = _ln_blocks(x @ p["w_x"], p["g_x"], 4) + _ln_blocks(h @ p["w_h"], p["g_h"], 4) + p["b"]
    zi, zf, zg, zo = _blocks(z, 4)
    c = sig(zf) * c + sig(zi) * jnp.tanh(zg)
    h = sig(zo) * jnp.tanh(_ln(c, p["g_c"]) + p["b_c"])
    return (h, c), h


def ref_lngru(p, h, x):
    xr, xz, xn = _blocks(_ln_blocks(x @ p["w_x"], p["g_x"], 3) + p["b"], 3)
    hr, hz, hn = _blocks(_ln_blocks(h @ p["w_h"], p["g_h"], 3), 3)
    r, z = sig(xr + hr), sig(xz + hz)
    n = jnp.tanh(xn + r * (hn + p["b_hn"]))
    h = (1 - z) * n + z * h
    return h, h


def ref_mgu(p, h, x, reset_gate=True):
    xf, xn = _blocks(x @ p["w_x"] + p["b"], 2)
    hf, hn = _blocks(h @ p["w_h"], 2)
    f = sig(xf + hf)
    n = jnp.tanh(xn + (f * (hn + p["b_hn"]) if reset_gate else hn))
    h = (1 - f) * n + f * h
    return h, h


def ref_indrnn(p, h, x, bound=None):
    u = p["u"] if bound is None else jnp.minimum(jnp.maximum(p["u"], -bound), bound)
    h = jnp.maximum(x @ p["w_x"] + p["b"] + u * h, 0.0)
    return h, h


CASES = {  # name: (cell, reference step); mgu(reset_gate=False) is checked against Flax below
    "lstmp": (lambda: jr.lstm(H, proj_size=P), ref_lstmp),
    "lnlstm": (lambda: jr.ln_lstm(H), ref_lnlstm),
    "lngru": (lambda: jr.ln_gru(H), ref_lngru),
    "mgu": (lambda: jr.mgu(H), ref_mgu),
    "indrnn": (lambda: jr.indrnn(H), ref_indrnn),
    "indrnn_bounded": (lambda: jr.indrnn(H, recurrent_max=0.6), lambda p, h, x: ref_indrnn(p, h, x, bound=0.6)),
}


def _ref_unroll(ref, params, xs, carry, lengths):
    """A Python loop over time and rows; rows past their length keep their carry, output 0."""
    ys = []
    for t in range(xs.shape[1]):
        new, y = ref(params, carry, xs[:, t])
        keep = (t < lengths)[:, None]
        carry = jax.tree.map(lambda n, o: jnp.where(keep, n, o), new, carry)
        ys.append(jnp.where(keep, y, 0.0))
    return carry, jnp.stack(ys, axis=1)


@pytest.mark.parametrize("name", list(CASES))
def test_matches_loop_of_equations_float64(name):
    make, ref = CASES[name]
    cell = make()
    rng = np.random.default_rng(3)
    params = random_params(cell, F, rng, jnp.float64, scale=0.7)
    if name == "indrnn_bounded":  # some weights beyond the bound, so the clip matters
        params["u"] = jnp.array([1.5, -0.9, 0.3, -0.2])
    carry = random_carry(cell, B, rng, jnp.float64)
    if name.startswith("indrnn"):
        carry = jax.tree.map(jnp.abs, carry)  # a ReLU state is non-negative
    xs = jnp.asarray(rng.normal(size=(B, T, F)))
    lengths = jnp.array([T, 2])
    w_y = jnp.asarray(rng.normal(size=(B, T, cell.hidden_size)))

    def loss(unroll_fn):
        def f(params, xs, carry):
            c, ys = unroll_fn(params, xs, carry)
            return jnp.sum(ys * w_y) + sum(jnp.sum(jnp.sin(leaf)) for leaf in jax.tree.leaves(c)), (c, ys)
        return jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True)

    @jax.jit  # one compilation for everything compared
    def both(params, xs, carry):
        got = loss(lambda p, x, c: jr.unroll(cell, p, x, c, lengths=lengths))(params, xs, carry)
        want = loss(lambda p, x, c: _ref_unroll(ref, p, x, c, lengths))(params, xs, carry)
        # one apply is one step over project, and one step of the reference
        one = (cell.apply(params, carry, xs[:, 0]), cell.step(params, carry, cell.project(params, xs[:, 0])),
               ref(params, carry, xs[:, 0]))
        return got, want, one

    got, want, (applied, stepped, ref_one) = both(params, xs, carry)
    assert_trees_close(got, want, rtol=1e-10, atol=1e-12)
    assert_trees_close(applied, ref_one, rtol=1e-12, atol=1e-14)
    assert_trees_close(applied, stepped, rtol=1e-14, atol=1e-15)
    assert cell.kind is not None and not cell.fused and not jr.cells.is_builtin(cell)


def test_init_shapes_dtypes_and_documented_values():
    cells = {"lstmp": jr.lstm(H, proj_size=P), "lnlstm": jr.ln_lstm(H), "lngru": jr.ln_gru(H), "mgu": jr.mgu(H),
             "mgu_no_reset": jr.mgu(H, reset_gate=False), "indrnn": jr.indrnn(64),
             "indrnn_bounded": jr.indrnn(64, recurrent_max=0.25)}
    # one compilation for every init (eagerly, each small op would compile on its own)
    inits = jax.jit(lambda k: {n: c.init(k, F, jnp.float64) for n, c in cells.items()})(jax.random.key(0))
    p = inits["lstmp"]
    assert {n: a.shape for n, a in p.items()} == {"w_x": (F, 4 * H), "w_h": (P, 4 * H), "b": (4 * H,), "w_hr": (H, P)}
    assert all(a.dtype == jnp.float64 for a in jax.tree.leaves(inits))
    np.testing.assert_array_equal(p["b"], np.r_[np.zeros(H), np.ones(H), np.zeros(2 * H)])
    ln = inits["lnlstm"]
    for g in ("g_x", "g_h", "g_c"):
        np.testing.assert_array_equal(ln[g], 1.0)
    np.testing.assert_array_equal(ln["b_c"], 0.0)
    np.testing.assert_array_equal(ln["b"][H : 2 * H], 1.0)
    np.testing.assert_array_equal(inits["lngru"]["b"], 0.0)
    m = inits["mgu"]
    np.testing.assert_array_equal(m["b"], np.r_[np.ones(H), np.zeros(H)])
    np.testing.assert_allclose(m["w_h"][:, :H].T @ m["w_h"][:, :H], np.eye(H), atol=1e-5)  # orthogonal blocks
    assert "b_hn" not in inits["mgu_no_reset"]
    u = np.asarray(inits["indrnn"]["u"])
    assert 0 <= u.min() and 0.5 < u.max() <= 1
    ub = np.asarray(inits["indrnn_bounded"]["u"])
    assert 0 <= ub.min() and 0.125 < ub.max() <= 0.25


def test_mgu_matches_flax_mgucell():
    nn = pytest.importorskip("flax.linen")
    rng = np.random.default_rng(0)
    for reset_gate in (True, False):
        cell = jr.mgu(H, reset_gate=reset_gate)
        params = random_params(cell, F, rng, jnp.float64)
        fl = nn.MGUCell(features=H, reset_gate=reset_gate, param_dtype=jnp.float64)
        h = jnp.asarray(rng.normal(size=(B, H)))
        x = jnp.asarray(rng.normal(size=(B, F)))
        variables = fl.init(jax.random.key(0), h, x)
        blocks = {"if": (params["w_x"][:, :H], params["b"][:H]), "in": (params["w_x"][:, H:], params["b"][H:]),
                  "hf": (params["w_h"][:, :H], None), "hn": (params["w_h"][:, H:], params.get("b_hn"))}
        flax_params = {}
        for name, (kernel, bias) in blocks.items():
            assert variables["params"][name]["kernel"].shape == kernel.shape
            flax_params[name] = {"kernel": kernel} if bias is None else {"kernel": kernel, "bias": bias}
            assert set(flax_params[name]) == set(variables["params"][name])  # same entries as Flax's own
        h_f, y_f = fl.apply({"params": flax_params}, h, x)
        h_j, y_j = cell.apply(params, h, x)
        np.testing.assert_allclose(h_j, h_f, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(y_j, y_f, rtol=1e-12, atol=1e-14)


def test_projected_lstm_is_not_mistaken_for_an_lstm():
    cell = jr.lstm(H, proj_size=P)
    plain = jr.lstm(H)
    assert plain.fused and plain.kind == "lstm" and jr.cells.is_builtin(plain)
    assert cell.kind == "lstmp" and not cell.fused and not jr.cells.is_builtin(cell)
    assert not jr.fused.applies(cell, None, None, None)
    params = cell.init(jax.random.key(0), F)
    with pytest.raises(TypeError, match=r"projected LSTM Cell|lstmp"):
        jr.unroll(cell, params, jnp.ones((B, T, F), jnp.float32), backend="cudnn")
    # unroll, stack (the next layer reads P), bidirectional (2P)
    net = jr.stack([jr.bidirectional(cell), jr.lstm(H, proj_size=2)])
    pn = net.init(jax.random.key(1), F)
    assert pn[1]["w_x"].shape == (2 * P, 4 * H)
    carry, ys = jax.jit(lambda p, x: jr.unroll(net, p, x, lengths=jnp.array([T, 2])))(pn, jnp.ones((B, T, F)))
    assert ys.shape == (B, T, 2) and carry[0][0][0].shape == (B, P) and carry[0][0][1].shape == (B, H)


@pytest.mark.parametrize("name", ["lnlstm", "lngru", "mgu", "indrnn"])
def test_language_model_builds_every_new_cell(name):
    model = jr.lm.language_model(7, cell=name, hidden=6, embed=4, layers=2)
    assert model.proj_size is None and "proj_size" not in model.config()
    params = jax.eval_shape(model.init, jax.random.key(0))
    carry, logits = jax.eval_shape(model.apply, params, model.initial_carry(B), jnp.zeros((B, T), jnp.int32))
    assert logits.shape == (B, T, 7)


def test_language_model_and_tbptt_steps_with_a_projected_lstm():
    """Two layers of lstmp (P=3, H=6) in the LM: the second layer and the output layer read
    P features; TBPTT steps on one segment lower its loss (from the zero state) and keep
    the carry's structure; the config rebuilds the model."""
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 7, size=(B, T + 1)), jnp.int32)
    model = jr.lm.language_model(7, cell="lstmp", hidden=6, embed=4, layers=2, proj_size=3)
    params = model.init(jax.random.key(0))
    assert model.proj_size == 3 and params["out"]["w"].shape == (3, 7)
    assert params["rnn"][1]["w_x"].shape == (3, 24) and params["rnn"][0]["w_hr"].shape == (6, 3)
    assert jr.lm.language_model(**model.config()).config() == model.config() == {
        "vocab_size": 7, "cell": "lstmp", "hidden": 6, "embed": 4, "layers": 2, "dropout": 0.0, "tie": False,
        "proj_size": 3}
    assert jr.lm.language_model(7, cell="lstmp", hidden=6).proj_size == 3  # default hidden // 2
    tx = jr.clipped(optax.adam(3e-2), 5.0)
    state = jr.tbptt.init_state(params, tx, jr.lm.train_carry(model, B, 0))
    step = jr.tbptt.make_step(jr.lm.loss_fn(model), tx)
    for _ in range(4):
        state, m = step(state, tokens[:, :-1], tokens[:, 1:])
    assert np.isfinite(float(m["loss"]))
    seg_loss = jax.jit(lambda p: jr.lm.loss(model, p, model.initial_carry(B), tokens[:, :-1], tokens[:, 1:])[0])
    assert float(seg_loss(state.params)) < float(seg_loss(params)) - 0.05
    assert jax.tree.structure(state.carry) == jax.tree.structure(jr.lm.train_carry(model, B, 0))
    (h, c), _ = state.carry[0][0], None
    assert h.shape == (B, 3) and c.shape == (B, 6)


# --------------------------------------------------------------------------- errors (issue point 7)


@pytest.mark.parametrize("proj_size", [0, 4, 9, -1])
def test_proj_size_outside_range(proj_size):
    with pytest.raises(ValueError, match=rf"proj_size must be an int in \[1, hidden_size=4\).*got {proj_size}"):
        jr.lstm(4, proj_size=proj_size)


def test_proj_size_type_and_other_cells():
    with pytest.raises(TypeError, match=r"proj_size must be an int .* got 2.5"):
        jr.lstm(4, proj_size=2.5)
    with pytest.raises(ValueError, match=r"proj_size is for the cells \['lstmp'\] only; cell 'gru'.*got proj_size=2"):
        jr.cells.from_name("gru", 4, proj_size=2)
    with pytest.raises(ValueError, match=r"proj_size is for the cells \['lstmp'\] only"):
        jr.lm.language_model(7, cell="mgu", hidden=4, proj_size=2)
    with pytest.raises(ValueError, match=r"proj_size must be an int in \[1, hidden_size=4\).*got 4"):
        jr.lm.language_model(7, cell="lstmp", hidden=4, proj_size=4)


@pytest.mark.parametrize("bound", [0.0, -1.0, math.inf, math.nan])
def test_indrnn_bound_not_positive(bound):
    with pytest.raises(ValueError, match=r"recurrent_max must be a positive finite float .* got"):
        jr.indrnn(4, recurrent_max=bound)


def test_ln_eps_not_positive():
    with pytest.raises(ValueError, match=r"eps must be a positive float, got 0"):
        jr.ln_gru(4, eps=0)


@pytest.mark.parametrize(("cell", "other", "message"), [
    (lambda: jr.mgu(H), lambda: jr.gru(H),
     r"params\['w_h'\] must have shape \(4, 8\) for an MGU cell with hidden_size=4, got \(4, 12\) \(these look like "
     r"params of a GRU\)"),
    (lambda: jr.mgu(H), lambda: jr.mgu(H, reset_gate=False),
     r"must have keys \['b', 'b_hn', 'w_h', 'w_x'\], got \['b', 'w_h', 'w_x'\] \(these look like params of an MGU "
     r"without reset gate"),
    (lambda: jr.indrnn(H), lambda: jr.rnn(H),
     r"params for an IndRNN cell .* must have keys \['b', 'u', 'w_x'\], got \['b', 'w_h', 'w_x'\] \(these look like "
     r"params of a plain RNN\)"),
    (lambda: jr.ln_lstm(H), lambda: jr.lstm(H),
     r"params for a layer-normalised LSTM cell .*got \['b', 'w_h', 'w_x'\] \(these look like params of an LSTM\)"),
    (lambda: jr.ln_gru(H), lambda: jr.ln_lstm(H), r"these look like params of a layer-normalised LSTM"),
    (lambda: jr.lstm(H, proj_size=P), lambda: jr.lstm(H),
     r"params for a projected LSTM cell with hidden_size=4, proj_size=3 must have keys \['b', 'w_h', 'w_hr', 'w_x'\]"
     r".*\(these look like params of an LSTM\)"),
    (lambda: jr.lstm(H), lambda: jr.lstm(H, proj_size=P),
     r"params for an LSTM cell must have keys.*these look like params of a projected LSTM"),
    (lambda: jr.gru(H), lambda: jr.mgu(H), r"params\['w_h'\] must have shape \(4, 12\) for a GRU cell with "
                                           r"hidden_size=4, got \(4, 8\) \(these look like params of an MGU"),
    (lambda: jr.mgu(H), lambda: jr.mgu(2 * H), r"params\['w_h'\] must have shape \(4, 8\) for an MGU cell .*got "
                                               r"\(8, 16\)"),
])
def test_params_from_another_cell(cell, other, message):
    cell, other = cell(), other()
    params = other.init(jax.random.key(0), F)
    carry = cell.initial_carry(B)
    with pytest.raises((TypeError, ValueError), match=message):
        cell.apply(params, carry, jnp.ones((B, F)))


def test_carry_and_input_errors():
    cell = jr.lstm(H, proj_size=P)
    params = cell.init(jax.random.key(0), F)
    with pytest.raises(ValueError, match=r"carry h of a projected LSTM cell .* must have shape \(\.\.\., 3\), got \(2, 4\)"):
        cell.apply(params, jr.lstm(H).initial_carry(B), jnp.ones((B, F)))
    with pytest.raises(ValueError, match=r"x_t must have shape \(\.\.\., 3\) to match params\['w_x'\]"):
        cell.apply(params, cell.initial_carry(B), jnp.ones((B, F + 1)))
    with pytest.raises(TypeError, match=r"carry of an MGU cell .* must be one array of shape \(\.\.\., 4\), got a tuple"):
        jr.mgu(H).apply(jr.mgu(H).init(0, F), jr.lstm(H).initial_carry(B), jnp.ones((B, F)))

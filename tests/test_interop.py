"""Parity with PyTorch: outputs, final carries and every gradient, plus weight conversion.

The reference is PyTorch's own nn.RNN / nn.LSTM / nn.GRU (with packed sequences for
variable lengths). Gradients are those of one scalar loss that touches the outputs and
the final carry, compared with torch autograd for every parameter, the inputs and the
initial carry.
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrnn as jr
from jaxrnn import interop

torch = pytest.importorskip("torch")

KINDS = ("rnn", "rnn_relu", "lstm", "gru")
#: "lstmp": nn.LSTM(proj_size=PROJ), jr.lstm(H, proj_size=PROJ)
PROJ = 3
RTOL = 2e-5


def make_module(kind, input_size, hidden_size, seed=0, **kw):
    torch.manual_seed(seed)
    if kind == "lstmp":
        return torch.nn.LSTM(input_size, hidden_size, proj_size=PROJ, **kw)
    if kind.startswith("rnn"):
        return torch.nn.RNN(input_size, hidden_size, nonlinearity=("relu" if kind == "rnn_relu" else "tanh"), **kw)
    return {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[kind](input_size, hidden_size, **kw)


def rel_err(a, b):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


def t2n(t):
    return t.detach().numpy()


def jax_grads_from_torch(module, kind, num_layers, bidirectional):
    """torch's parameter gradients rearranged into jaxrnn's params layout (written out
    independently of ``interop.from_torch``), plus a check that bias_ih and bias_hh got
    the same gradient wherever jaxrnn sums them into ``b``."""
    h = module.hidden_size
    layers = []
    for layer in range(num_layers):
        dirs = []
        for d in range(2 if bidirectional else 1):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            g = {n: t2n(getattr(module, n + sfx).grad) for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
            shared = slice(0, 2 * h) if kind == "gru" else slice(None)
            np.testing.assert_allclose(g["bias_ih"][shared], g["bias_hh"][shared], rtol=1e-6, atol=1e-7)
            p = {"w_x": g["weight_ih"].T, "w_h": g["weight_hh"].T, "b": g["bias_ih"]}
            if kind == "gru":
                p["b_hn"] = g["bias_hh"][2 * h :]
            if kind == "lstmp":
                p["w_hr"] = t2n(getattr(module, "weight_hr" + sfx).grad).T
            dirs.append(p)
        layers.append(dirs[0] if len(dirs) == 1 else {"forward": dirs[0], "backward": dirs[1]})
    return layers[0] if num_layers == 1 else layers


CONFIGS = {
    # name: (num_layers, bidirectional, packed, batch_first)
    "packed": (1, False, True, True),
    "bi_packed_time_major": (1, True, True, False),
    "deep_bi_packed": (2, True, True, True),
    "deep_time_major": (2, False, False, False),
}


@pytest.mark.parametrize(("kind", "config"), [(k, c) for k in KINDS for c in CONFIGS]
                         # the projected LSTM: one layer, and two bidirectional layers (whose second reads 2P)
                         + [("lstmp", "packed"), ("lstmp", "deep_bi_packed")])
def test_parity_outputs_carries_and_all_gradients(kind, config):
    num_layers, bi, packed, batch_first = CONFIGS[config]
    B, T, F, H = 3, 6, 4, 5
    P = PROJ if kind == "lstmp" else H  # the size of h and of the outputs
    D = 2 if bi else 1
    n = num_layers * D
    m = make_module(kind, F, H, num_layers=num_layers, bidirectional=bi, batch_first=batch_first)
    rng = np.random.default_rng(1)
    x_shape = (B, T, F) if batch_first else (T, B, F)
    y_shape = (B, T, D * P) if batch_first else (T, B, D * P)
    xs = rng.normal(size=x_shape).astype(np.float32)
    h0 = (0.5 * rng.normal(size=(n, B, P))).astype(np.float32)
    c0 = (0.5 * rng.normal(size=(n, B, H))).astype(np.float32)
    r_y = rng.normal(size=y_shape).astype(np.float32)
    r_h = rng.normal(size=(n, B, P)).astype(np.float32)
    r_c = rng.normal(size=(n, B, H)).astype(np.float32)
    lengths = np.array([6, 2, 4]) if packed else None

    # --- PyTorch
    x_t = torch.tensor(xs, requires_grad=True)
    h0_t = torch.tensor(h0, requires_grad=True)
    c0_t = torch.tensor(c0, requires_grad=True)
    hx = (h0_t, c0_t) if kind in ("lstm", "lstmp") else h0_t
    if packed:
        packed_in = torch.nn.utils.rnn.pack_padded_sequence(
            x_t, torch.tensor(lengths), batch_first=batch_first, enforce_sorted=False
        )
        out_p, hn_t = m(packed_in, hx)
        out_t, _ = torch.nn.utils.rnn.pad_packed_sequence(out_p, batch_first=batch_first, total_length=T)
    else:
        out_t, hn_t = m(x_t, hx)
    loss_t = (out_t * torch.tensor(r_y)).sum()
    if kind in ("lstm", "lstmp"):
        loss_t = loss_t + (hn_t[0] * torch.tensor(r_h)).sum() + (hn_t[1] * torch.tensor(r_c)).sum()
    else:
        loss_t = loss_t + (hn_t * torch.tensor(r_h)).sum()
    loss_t.backward()

    # --- jaxrnn
    net = interop.cell_for(m)
    params = interop.from_torch(m)
    as_t = lambda a: torch.tensor(a)  # noqa: E731
    carry0 = interop.carry_from_torch(m, (as_t(h0), as_t(c0)) if kind in ("lstm", "lstmp") else as_t(h0))
    weights = interop.carry_from_torch(m, (as_t(r_h), as_t(r_c)) if kind in ("lstm", "lstmp") else as_t(r_h))
    lengths_j = None if lengths is None else jnp.asarray(lengths, jnp.int32)

    def loss_fn(params, xs, carry0):
        carry, ys = jr.unroll(net, params, xs, carry0, lengths=lengths_j, time_major=not batch_first)
        carry_term = sum(jnp.sum(a * w) for a, w in zip(jax.tree.leaves(carry), jax.tree.leaves(weights)))
        return jnp.sum(ys * r_y) + carry_term, (carry, ys)

    (loss, (carry, ys)), grads = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1, 2), has_aux=True))(
        params, jnp.asarray(xs), carry0
    )
    g_params, g_xs, g_carry0 = grads

    assert ys.dtype == jnp.float32
    assert rel_err(ys, t2n(out_t)) < RTOL
    if packed:  # padded outputs are exactly zero in both
        t_idx = np.arange(T)[:, None] if not batch_first else np.arange(T)[None, :]
        pad = (t_idx >= lengths[None, :]) if not batch_first else (t_idx >= lengths[:, None])
        assert np.all(np.asarray(ys)[pad] == 0)
    carry_t = interop.carry_to_torch(m, carry)
    if kind in ("lstm", "lstmp"):
        assert rel_err(t2n(carry_t[0]), t2n(hn_t[0])) < RTOL
        assert rel_err(t2n(carry_t[1]), t2n(hn_t[1])) < RTOL
    else:
        assert rel_err(t2n(carry_t), t2n(hn_t)) < RTOL
    assert abs(float(loss) - loss_t.item()) <= RTOL * abs(loss_t.item())

    expected = jax_grads_from_torch(m, kind, num_layers, bi)
    flat_e, tree_e = jax.tree.flatten(expected)
    flat_g, tree_g = jax.tree.flatten(g_params)
    assert tree_e == tree_g
    for path_g, e in zip(jax.tree_util.tree_flatten_with_path(g_params)[0], flat_e):
        path, g = path_g
        assert rel_err(g, e) < RTOL, jax.tree_util.keystr(path)
    assert rel_err(g_xs, t2n(x_t.grad)) < RTOL
    g_carry0_t = interop.carry_to_torch(m, g_carry0)
    if kind in ("lstm", "lstmp"):
        assert rel_err(t2n(g_carry0_t[0]), t2n(h0_t.grad)) < RTOL
        assert rel_err(t2n(g_carry0_t[1]), t2n(c0_t.grad)) < RTOL
    else:
        assert rel_err(t2n(g_carry0_t), t2n(h0_t.grad)) < RTOL


@pytest.mark.parametrize("kind", KINDS)
def test_from_torch_layout(kind):
    m = make_module(kind, 3, 4, num_layers=2, bidirectional=True)
    params = interop.from_torch(m)
    assert isinstance(params, list) and len(params) == 2
    g = {"rnn": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}[kind]
    for layer, p_layer in enumerate(params):
        assert set(p_layer) == {"forward", "backward"}
        for d, name in enumerate(("forward", "backward")):
            p = p_layer[name]
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            w_ih, w_hh = t2n(getattr(m, "weight_ih" + sfx)), t2n(getattr(m, "weight_hh" + sfx))
            b_ih, b_hh = t2n(getattr(m, "bias_ih" + sfx)), t2n(getattr(m, "bias_hh" + sfx))
            assert p["w_x"].shape == (3 if layer == 0 else 8, g * 4) and p["w_x"].dtype == jnp.float32
            np.testing.assert_array_equal(p["w_x"], w_ih.T)
            np.testing.assert_array_equal(p["w_h"], w_hh.T)
            if kind == "gru":
                np.testing.assert_allclose(p["b"][:8], b_ih[:8] + b_hh[:8], rtol=1e-7)
                np.testing.assert_array_equal(p["b"][8:], b_ih[8:])
                np.testing.assert_array_equal(p["b_hn"], b_hh[8:])
            else:
                np.testing.assert_allclose(p["b"], b_ih + b_hh, rtol=1e-7)
                assert set(p) == {"w_x", "w_h", "b"}
    net = interop.cell_for(m)
    assert isinstance(net, jr.Stack) and len(net.layers) == 2
    assert all(isinstance(layer, jr.Bidirectional) for layer in net.layers)
    assert net.layers[0].forward.kind == kind and net.hidden_size == 8


def test_from_torch_single_layer_shapes_and_dtypes():
    m = make_module("gru", 3, 4)
    p = interop.from_torch(m)
    assert set(p) == {"w_x", "w_h", "b", "b_hn"}
    assert isinstance(interop.cell_for(m), jr.Cell)
    assert interop.cell_for(make_module("gru", 3, 4, bidirectional=True)).__class__ is jr.Bidirectional
    p64 = interop.from_torch(make_module("lstm", 3, 4).double())
    assert all(a.dtype == jnp.float64 for a in jax.tree.leaves(p64))
    m16 = make_module("rnn", 3, 4).to(torch.bfloat16)
    p16 = interop.from_torch(m16)
    assert all(a.dtype == jnp.bfloat16 for a in jax.tree.leaves(p16))
    np.testing.assert_array_equal(np.asarray(p16["w_x"], np.float32), t2n(m16.weight_ih_l0.float()).T)
    assert interop.cell_for(make_module("lstm", 3, 4, num_layers=3, dropout=0.25)).dropout == 0.25


@pytest.mark.parametrize("kind", KINDS + ("lstmp",))
def test_roundtrip_to_torch_then_outputs_match(kind):
    """Random jaxrnn params (every bias nonzero, GRU b_hn included) copied into a torch
    module: reading them back is exact and the module computes what jr.unroll computes."""
    m = make_module(kind, 3, 4, num_layers=2, bidirectional=True, batch_first=True, seed=5)
    net = interop.cell_for(m)
    rng = np.random.default_rng(7)
    params = jax.tree.map(
        lambda a: jnp.asarray(0.5 * rng.normal(size=a.shape), jnp.float32),
        jax.eval_shape(lambda: net.init(jax.random.key(0), 3)),
    )
    assert isinstance(params, list) and set(params[1]) == {"forward", "backward"}
    if kind == "lstmp":  # layer 1 reads both directions' projected outputs
        assert params[1]["forward"]["w_x"].shape == (2 * PROJ, 16) and params[1]["forward"]["w_hr"].shape == (4, PROJ)
    assert interop.to_torch(params, m) is m
    back = interop.from_torch(m)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)
    xs = np.random.default_rng(0).normal(size=(2, 5, 3)).astype(np.float32)
    with torch.no_grad():
        out_t, hn_t = m(torch.tensor(xs))
    carry, ys = jax.jit(lambda p, x: jr.unroll(net, p, x))(params, jnp.asarray(xs))
    assert rel_err(ys, t2n(out_t)) < RTOL
    hn = interop.carry_to_torch(m, carry)
    for a, b in zip(hn if kind in ("lstm", "lstmp") else [hn], hn_t if kind in ("lstm", "lstmp") else [hn_t]):
        assert rel_err(t2n(a), t2n(b)) < RTOL


@pytest.mark.parametrize("kind", KINDS)
def test_single_step_cell_modules(kind):
    torch.manual_seed(0)
    if kind.startswith("rnn"):
        m = torch.nn.RNNCell(3, 4, nonlinearity=("relu" if kind == "rnn_relu" else "tanh"))
    else:
        m = {"lstm": torch.nn.LSTMCell, "gru": torch.nn.GRUCell}[kind](3, 4)
    cell = interop.cell_for(m)
    assert isinstance(cell, jr.Cell) and cell.kind == kind
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.normal(size=(2, 3)).astype(np.float32))
    hx = tuple(torch.tensor(rng.normal(size=(2, 4)).astype(np.float32)) for _ in range(2 if kind == "lstm" else 1))
    hx = hx if kind == "lstm" else hx[0]
    with torch.no_grad():
        out_t = m(x, hx)
    carry, y = cell.apply(interop.from_torch(m), interop.carry_from_torch(m, hx), jnp.asarray(x.numpy()))
    out = interop.carry_to_torch(m, carry)
    for a, b in zip(out if kind == "lstm" else [out], out_t if kind == "lstm" else [out_t]):
        assert rel_err(t2n(a), t2n(b)) < RTOL
    # and back: to_torch into a fresh cell module reproduces the params
    m2 = type(m)(3, 4, **({"nonlinearity": ("relu" if kind == "rnn_relu" else "tanh")} if kind.startswith("rnn") else {}))
    p = interop.from_torch(interop.to_torch(interop.from_torch(m), m2))
    for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(interop.from_torch(m))):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_bias_false_modules(kind):
    m = make_module(kind, 3, 4, bias=False, batch_first=True)
    params = interop.from_torch(m)
    assert not np.any(params["b"]) and (kind != "gru" or not np.any(params["b_hn"]))
    xs = np.random.default_rng(0).normal(size=(2, 5, 3)).astype(np.float32)
    with torch.no_grad():
        out_t, _ = m(torch.tensor(xs))
    _, ys = jax.jit(lambda p, x: jr.unroll(interop.cell_for(m), p, x))(params, jnp.asarray(xs))
    assert rel_err(ys, t2n(out_t)) < RTOL
    interop.to_torch(params, m)  # zero biases are fine
    bad = dict(params, b=params["b"].at[0].set(1.0))
    before = t2n(m.weight_ih_l0).copy()
    with pytest.raises(ValueError, match=r"bias=False, but params has nonzero biases"):
        interop.to_torch(dict(bad, w_x=bad["w_x"] + 1.0), m)
    np.testing.assert_array_equal(t2n(m.weight_ih_l0), before)  # untouched on error


def test_carry_conversion_roundtrip():
    m = make_module("lstm", 3, 4, num_layers=2, bidirectional=True)
    h = torch.randn(4, 2, 4)
    c = torch.randn(4, 2, 4)
    carry = interop.carry_from_torch(m, (h, c))
    # layer 1's backward direction is torch's index 1 * 2 + 1 = 3
    np.testing.assert_array_equal(carry[1][1][0], h[3].numpy())
    np.testing.assert_array_equal(carry[1][1][1], c[3].numpy())
    h2, c2 = interop.carry_to_torch(m, carry)
    assert torch.equal(h2, h) and torch.equal(c2, c)
    g = make_module("gru", 3, 4)
    h_unbatched = torch.randn(1, 4)
    assert interop.carry_from_torch(g, h_unbatched).shape == (4,)
    with pytest.raises(ValueError, match=r"hx h must have shape \(4, batch, 4\).*got \(2, 2, 4\)"):
        interop.carry_from_torch(m, (h[:2], c[:2]))


def test_proj_size_layout_cell_and_carries():
    m = make_module("lstmp", 3, 4, num_layers=2, bidirectional=True)
    net = interop.cell_for(m)
    cell = net.layers[0].forward
    assert cell.kind == "lstmp" and not cell.fused and cell.hidden_size == PROJ and net.hidden_size == 2 * PROJ
    p = interop.from_torch(m)[1]["backward"]
    assert set(p) == {"w_x", "w_h", "b", "w_hr"}
    np.testing.assert_array_equal(p["w_hr"], t2n(m.weight_hr_l1_reverse).T)
    np.testing.assert_array_equal(p["w_h"], t2n(m.weight_hh_l1_reverse).T)
    assert p["w_x"].shape == (2 * PROJ, 16) and p["w_h"].shape == (PROJ, 16)
    h, c = torch.randn(4, 2, PROJ), torch.randn(4, 2, 4)
    carry = interop.carry_from_torch(m, (h, c))
    assert carry[1][1][0].shape == (2, PROJ) and carry[1][1][1].shape == (2, 4)
    h2, c2 = interop.carry_to_torch(m, carry)
    assert torch.equal(h2, h) and torch.equal(c2, c)
    with pytest.raises(ValueError, match=rf"hx h must have shape \(4, batch, {PROJ}\).*got \(4, 2, 4\)"):
        interop.carry_from_torch(m, (c, c))
    bad = interop.from_torch(m)
    bad[0]["forward"] = dict(bad[0]["forward"], w_hr=bad[0]["forward"]["w_hr"].T)
    with pytest.raises(ValueError, match=rf"params\[0\]\['forward'\]\['w_hr'\] must have shape \(4, {PROJ}\) .*"
                                         rf"proj_size={PROJ}.*got \({PROJ}, 4\)"):
        interop.to_torch(bad, m)


def test_rejects_other_modules():
    with pytest.raises(TypeError, match=r"module must be a torch.nn.RNN.*got Linear"):
        interop.from_torch(torch.nn.Linear(3, 4))
    with pytest.raises(TypeError, match=r"got dict"):
        interop.cell_for({})


def test_to_torch_rejects_mismatched_params():
    lstm_m = make_module("lstm", 3, 4)
    rnn_params = interop.from_torch(make_module("rnn", 3, 4))
    with pytest.raises(ValueError, match=r"params\['w_x'\] must have shape \(3, 16\).*got \(3, 4\)"):
        interop.to_torch(rnn_params, lstm_m)
    gru_params = interop.from_torch(make_module("gru", 3, 4))
    with pytest.raises(TypeError, match=r"params must be a dict with keys \['b', 'w_h', 'w_x'\].*got \['b', 'b_hn'"):
        interop.to_torch(gru_params, lstm_m)
    deep = make_module("gru", 3, 4, num_layers=2, bidirectional=True)
    deep_params = interop.from_torch(deep)
    with pytest.raises(TypeError, match=r"list of 2 per-layer params, got a list of length 1"):
        interop.to_torch(deep_params[:1], deep)
    with pytest.raises(TypeError, match=r"params\[1\] of a bidirectional module must be a dict"):
        interop.to_torch([deep_params[0], deep_params[1]["forward"]], deep)
    wrong_in = [deep_params[0], {"forward": deep_params[0]["forward"], "backward": deep_params[1]["backward"]}]
    with pytest.raises(ValueError, match=r"params\[1\]\['forward'\]\['w_x'\] must have shape \(8, 12\).*got \(3, 12\)"):
        interop.to_torch(wrong_in, deep)


def test_import_jaxrnn_does_not_import_torch():
    code = "import sys, jaxrnn, jaxrnn.interop; print('torch' in sys.modules)"
    root = os.path.dirname(os.path.dirname(os.path.abspath(jr.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "False"

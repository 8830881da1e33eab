"""A cell written by the user, with a dict carry, through every part of jaxrnn.

The cell is a peephole LSTM (Gers & Schmidhuber, 2000), which jaxrnn does not ship. Each
consumer's result is compared in float64 with plain Python loops over the cell's
equations written again in NumPy, with direct ``jax.grad``, or with finite differences.
"""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

import jaxrnn as jr
from conftest import assert_trees_close
from jaxrnn import diagnostics as dg

H, I = 5, 3
F64 = jnp.float64
RTOL, ATOL = 1e-10, 1e-12


def _batch_shape(batch_size):
    if batch_size is None:
        return ()
    return (batch_size,) if isinstance(batch_size, int) else tuple(batch_size)


def peephole_lstm(hidden_size):
    """The user's cell: an LSTM whose gates also look at the cell state."""

    def init(key, input_size, dtype=jnp.float32):
        k1, k2, k3, k4 = jax.random.split(key, 4)
        return {
            "w_x": (jax.random.normal(k1, (input_size, 4 * hidden_size)) / np.sqrt(input_size)).astype(dtype),
            "w_h": (jax.random.normal(k2, (hidden_size, 4 * hidden_size)) / np.sqrt(hidden_size)).astype(dtype),
            "p": (0.5 * jax.random.normal(k3, (3, hidden_size))).astype(dtype),
            "b": (0.1 * jax.random.normal(k4, (4 * hidden_size,))).astype(dtype),
        }

    def initial_carry(batch_size=None, dtype=jnp.float32):
        z = jnp.zeros(_batch_shape(batch_size) + (hidden_size,), dtype)
        return {"h": z, "c": z}

    def apply(params, carry, x_t):
        z = x_t @ params["w_x"] + carry["h"] @ params["w_h"] + params["b"]
        zi, zf, zg, zo = jnp.split(z, 4, axis=-1)
        i = jax.nn.sigmoid(zi + params["p"][0] * carry["c"])
        f = jax.nn.sigmoid(zf + params["p"][1] * carry["c"])
        c = f * carry["c"] + i * jnp.tanh(zg)
        o = jax.nn.sigmoid(zo + params["p"][2] * c)
        h = o * jnp.tanh(c)
        return {"h": h, "c": c}, h

    return jr.Cell(init=init, initial_carry=initial_carry, apply=apply, hidden_size=hidden_size)


def np_step(p, carry, x):
    """The same equations again, in float64 NumPy, on one row."""
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    hh, cc = np.asarray(carry["h"], np.float64), np.asarray(carry["c"], np.float64)
    z = np.asarray(x, np.float64) @ p["w_x"] + hh @ p["w_h"] + p["b"]
    n = hh.shape[-1]
    zi, zf, zg, zo = (z[..., k * n:(k + 1) * n] for k in range(4))
    i, f = sig(zi + p["p"][0] * cc), sig(zf + p["p"][1] * cc)
    c = f * cc + i * np.tanh(zg)
    h = sig(zo + p["p"][2] * c) * np.tanh(c)
    return {"h": h, "c": c}, h


def np_unroll(step, params, xs, carry, lengths=None, reverse=False):
    """Row by row: read the valid steps (backwards when ``reverse``), zeros elsewhere."""
    b_size, t_size = xs.shape[:2]
    lengths = np.full(b_size, t_size) if lengths is None else np.asarray(lengths)
    ys, finals = np.zeros(xs.shape[:2] + (H,)), []
    for b in range(b_size):
        c = {k: np.asarray(v[b], np.float64) for k, v in carry.items()}
        order = range(lengths[b])
        for t in (reversed(order) if reverse else order):
            c, ys[b, t] = step(params, c, xs[b, t])
        finals.append(c)
    return {k: np.stack([f[k] for f in finals]) for k in carry}, ys


CELL = peephole_lstm(H)


def setup(batch=3, steps=7, seed=0):
    params = CELL.init(jax.random.key(seed), I, F64)
    rng = np.random.default_rng(seed)
    xs = jnp.asarray(rng.normal(size=(batch, steps, I)), F64)
    carry = {k: jnp.asarray(0.3 * rng.normal(size=(batch, H)), F64) for k in ("h", "c")}
    return params, xs, carry


def close(a, b, rtol=RTOL, atol=ATOL):
    assert_trees_close(a, b, rtol, atol)


# --------------------------------------------------------------------------- unroll


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_unroll_equals_python_loop(reverse, with_lengths):
    params, xs, carry = setup()
    lengths = jnp.array([7, 3, 0]) if with_lengths else None
    got_c, got_y = jax.jit(lambda p, x, c: jr.unroll(CELL, p, x, c, lengths=lengths, reverse=reverse))(params, xs, carry)
    want_c, want_y = np_unroll(np_step, params, np.asarray(xs), carry, lengths, reverse)
    close(got_y, want_y)
    close(got_c, want_c)
    # time-major and unbatched layouts give the same numbers
    c_tm, y_tm = jr.unroll(CELL, params, jnp.swapaxes(xs, 0, 1), carry, lengths=lengths, reverse=reverse, time_major=True)
    close(jnp.swapaxes(y_tm, 0, 1), want_y)
    c1, y1 = jr.unroll(CELL, params, xs[1], {k: v[1] for k, v in carry.items()},
                       lengths=None if lengths is None else lengths[1], reverse=reverse)
    close(y1, want_y[1])
    close(c1, {k: v[1] for k, v in want_c.items()})


def test_default_carry_is_initial_carry_in_the_compute_dtype():
    params, xs, _ = setup()
    c, _ = jr.unroll(CELL, params, xs)
    assert c["h"].dtype == F64
    want_c, _ = np_unroll(np_step, params, np.asarray(xs), CELL.initial_carry(3, F64))
    close(c, want_c)


def test_every_remat_mode_gives_the_same_gradients():
    params, xs, carry = setup(steps=10)
    lengths = jnp.array([10, 6, 1])

    def loss(p, x, c, remat, unroll):
        c2, ys = jr.unroll(CELL, p, x, c, lengths=lengths, remat=remat, unroll=unroll)
        return jnp.sum(ys ** 2) + jnp.sum(c2["c"] * c2["h"])

    ref = jax.jit(jax.grad(loss, argnums=(0, 1, 2)), static_argnums=(3, 4))(params, xs, carry, None, 1)
    for remat, unroll in [("step", 1), (3, 2), ("sqrt", 1), (4, 1), (None, 3)]:
        got = jax.jit(jax.grad(loss, argnums=(0, 1, 2)), static_argnums=(3, 4))(params, xs, carry, remat, unroll)
        close(got, ref, 1e-9, 1e-11)


def test_gradients_match_finite_differences():
    params, xs, carry = setup(batch=2, steps=5)
    lengths = jnp.array([5, 2])

    def loss(p, x, c):
        c2, ys = jr.unroll(CELL, p, x, c, lengths=lengths, remat="sqrt")
        return jnp.sum(jnp.sin(ys)) + jnp.sum(c2["c"] ** 2)

    check_grads(loss, (params, xs, carry), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


def test_padding_never_reaches_the_gradient():
    params, xs, carry = setup(steps=6)
    lengths = jnp.array([6, 2, 4])
    pad = jnp.arange(6)[None, :, None] >= lengths[:, None, None]
    poisoned = jnp.where(pad, jnp.nan, xs)

    def loss(p, x):
        c2, ys = jr.unroll(CELL, p, x, carry, lengths=lengths)
        return jnp.sum(ys) + jnp.sum(c2["h"])

    g_clean = jax.grad(loss, argnums=(0, 1))(params, jnp.where(pad, 0.0, xs))
    g_nan = jax.grad(loss, argnums=(0, 1))(params, poisoned)
    close(g_nan, g_clean, 0, 0)


def test_hoisted_projection_when_the_cell_gives_project_and_step():
    def project(p, x):
        return x @ p["w_x"]

    def step(p, c, xp_t):
        return CELL.apply(dict(p, w_x=jnp.eye(4 * H, dtype=xp_t.dtype)), c, xp_t)

    hoisted = CELL._replace(project=project, step=step)
    params, xs, carry = setup()
    close(jr.unroll(hoisted, params, xs, carry, lengths=jnp.array([7, 2, 5])),
          jr.unroll(CELL, params, xs, carry, lengths=jnp.array([7, 2, 5])))


class LeakyCell:
    """A cell that is a plain class (no jr.Cell): an array carry, ``y_t != h_t``."""

    hidden_size = 2

    def init(self, key, input_size, dtype=jnp.float32):
        return {"w": jax.random.normal(key, (input_size + 4, 4), dtype) * 0.5, "out": jnp.ones((4, 2), dtype)}

    def initial_carry(self, batch_size=None, dtype=jnp.float32):
        return jnp.zeros(_batch_shape(batch_size) + (4,), dtype)

    def apply(self, params, h, x_t):
        h = 0.5 * h + 0.5 * jnp.tanh(jnp.concatenate([x_t, h], -1) @ params["w"])
        return h, h @ params["out"]


def test_a_plain_class_is_a_cell_too():
    cell = LeakyCell()
    params = cell.init(jax.random.key(1), 3, F64)
    xs = jnp.asarray(np.random.default_rng(1).normal(size=(2, 4, 3)), F64)
    h, ys = jr.unroll(cell, params, xs)
    hh = np.zeros((2, 4))
    for t in range(4):
        hh = 0.5 * hh + 0.5 * np.tanh(np.concatenate([xs[:, t], hh], -1) @ np.asarray(params["w"]))
        close(ys[:, t], hh @ np.asarray(params["out"]))
    close(h, hh)
    assert jr.output_size(cell) == 2


# --------------------------------------------------------------------------- stack, bidirectional


def test_stack_with_builtin_cells_and_bidirectional():
    params, xs, carry = setup()
    lengths = jnp.array([7, 4, 1])
    lstm = jr.lstm(4)
    net = jr.stack([CELL, lstm, jr.bidirectional(peephole_lstm(H), CELL)])
    p = net.init(jax.random.key(3), I, F64)
    assert len(p) == 3 and set(p[0]) == {"w_x", "w_h", "p", "b"}
    c = net.initial_carry(3, F64)
    got_c, got_y = jr.unroll(net, p, xs, c, lengths=lengths)
    # layer by layer with Python loops
    c0, y0 = np_unroll(np_step, p[0], np.asarray(xs), c[0], lengths)
    c1, y1 = jr.unroll(lstm, p[1], jnp.asarray(y0), c[1], lengths=lengths)  # built-in: checked elsewhere
    cf, yf = np_unroll(np_step, p[2]["forward"], np.asarray(y1), c[2][0], lengths)
    cb, yb = np_unroll(np_step, p[2]["backward"], np.asarray(y1), c[2][1], lengths, reverse=True)
    close(got_y, np.concatenate([yf, yb], -1), 1e-9, 1e-11)
    close(got_c, (c0, c1, (cf, cb)), 1e-9, 1e-11)
    # dropout between layers with a key: the masks of the key, the same for a user cell as
    # for any layer (inverted dropout on layer 0's outputs, drawn time-major)
    drop = jr.stack([CELL, lstm], dropout=0.5)
    key = jax.random.key(5)
    _, y_drop = jr.unroll(drop, p[:2], xs, c[:2], lengths=lengths, key=key)
    k1 = jax.random.split(key, 2)[1]
    y0_drop = jnp.swapaxes(jr.layers.dropout(jnp.swapaxes(jnp.asarray(y0), 0, 1), 0.5, k1), 0, 1)
    _, want_drop = jr.unroll(lstm, p[1], y0_drop, c[1], lengths=lengths)
    close(y_drop, want_drop, 1e-9, 1e-11)
    # one step of a stack of cells equals the first step of the unroll
    c_step, y_step = jr.stack([CELL, lstm]).apply(p[:2], c[:2], xs[:, 0])
    _, y_un = jr.unroll(jr.stack([CELL, lstm]), p[:2], xs[:, :1], c[:2])
    close(y_step, y_un[:, 0])


# --------------------------------------------------------------------------- sequence shapes


def test_sequence_shapes():
    params, xs, carry = setup()
    lengths = jnp.array([7, 3, 5])
    w = jnp.asarray(np.random.default_rng(2).normal(size=(H, 2)), F64)
    readout = lambda y: y @ w  # noqa: E731
    _, want_y = np_unroll(np_step, params, np.asarray(xs), carry, lengths)
    _, out = jr.sequence.many_to_one(CELL, params, xs, carry, lengths=lengths, readout=readout)
    close(out, np.stack([want_y[b, int(lengths[b]) - 1] for b in range(3)]) @ np.asarray(w))
    _, outs = jr.sequence.many_to_many(CELL, params, xs, carry, lengths=lengths, readout=readout)
    close(outs, want_y @ np.asarray(w))
    # one-to-many with a fixed "go" input, then free running fed by the previous output
    go = jnp.zeros((3, I), F64)
    _, outs = jr.sequence.one_to_many(CELL, params, xs[:, 0], 4, carry, next_input=go)
    c = {k: np.asarray(v) for k, v in carry.items()}
    for t in range(4):
        c, y = np_step(params, c, np.asarray(xs[:, 0] if t == 0 else go))
        close(outs[:, t], y)
    feed = jnp.asarray(np.random.default_rng(3).normal(size=(H, I)), F64)
    _, outs = jr.sequence.one_to_many(CELL, params, xs[:, 0], 3, carry, feedback=lambda y: y @ feed)
    c, x = {k: np.asarray(v) for k, v in carry.items()}, np.asarray(xs[:, 0])
    for t in range(3):
        c, y = np_step(params, c, x)
        close(outs[:, t], y)
        x = y @ np.asarray(feed)
    # encoder-decoder: the encoder's final state starts the decoder
    _, dec = jr.sequence.encoder_decoder(CELL, params, xs, CELL, params, xs[:, 0], 2, lengths=lengths,
                                         feedback=lambda y: y @ feed)
    enc_c, _ = np_unroll(np_step, params, np.asarray(xs), CELL.initial_carry(3, F64), lengths)
    c, x = enc_c, np.asarray(xs[:, 0])
    for t in range(2):
        c, y = np_step(params, c, x)
        close(dec[:, t], y)
        x = y @ np.asarray(feed)


# --------------------------------------------------------------------------- training


HEAD = jr.layers.affine(1)


def _loss_fn(params, carry, x, y):
    carry, ys = jr.unroll(CELL, params["rnn"], x, carry)
    return jnp.mean((HEAD.apply(params["head"], ys) - y) ** 2), carry


def _train_setup(batch=4, seg=5, segs=3, seed=0):
    params = {"rnn": CELL.init(jax.random.key(seed), I, F64), "head": HEAD.init(jax.random.key(seed + 1), H, F64)}
    rng = np.random.default_rng(seed)
    xs = rng.normal(size=(segs, batch, seg, I))
    ys = rng.normal(size=(segs, batch, seg, 1))
    return params, xs, ys


def test_tbptt_step_carries_the_forward_state_and_never_retraces():
    params, xs, ys = _train_setup()
    tx = jr.clipped(optax.sgd(0.1), max_norm=1.0)
    step = jr.tbptt.make_step(_loss_fn, tx, donate=False)
    state = jr.tbptt.init_state(params, tx, CELL.initial_carry(4, F64))
    for s in range(3):
        before_params, before_carry = state.params, state.carry
        want_carry, _ = np_unroll(np_step, before_params["rnn"], xs[s], before_carry)
        state, metrics = step(state, xs[s], ys[s])
        close(state.carry, want_carry)
        # the update is the clipped gradient of this segment's loss at the old params
        g = jax.grad(lambda p: _loss_fn(p, before_carry, xs[s], ys[s])[0])(before_params)
        norm = optax.tree.norm(g)
        close(metrics["grad_norm"], norm)
        want = jax.tree_util.tree_map(lambda p, d: p - 0.1 * d * min(1.0, 1.0 / float(norm)), before_params, g)
        close(state.params, want, 1e-9, 1e-12)
    assert step.trace_count == 1


def test_fused_epoch_k1k2_and_bptt_agree_with_the_step():
    params, xs, ys = _train_setup()
    tx = optax.adam(1e-2)
    carry0 = CELL.initial_carry(4, F64)
    step = jr.tbptt.make_step(_loss_fn, tx, donate=False)
    state = jr.tbptt.init_state(params, tx, carry0)
    for s in range(3):
        state, _ = step(state, xs[s], ys[s])
    epoch = jr.tbptt.make_epoch(_loss_fn, tx, donate=False)
    e_state, _ = epoch(jr.tbptt.init_state(params, tx, carry0), xs, ys)
    close(e_state.params, state.params, 1e-9, 1e-12)
    close(e_state.carry, state.carry, 1e-9, 1e-12)
    k_step = jr.tbptt.make_k1k2_step(_loss_fn, tx, 5, 5, donate=False)
    k_state = jr.tbptt.init_k1k2_state(params, tx, carry0)
    for s in range(3):
        k_state, _ = k_step(k_state, xs[s], ys[s])
    close(k_state.params, state.params, 1e-9, 1e-12)
    # BPTT over the whole sequence = one TBPTT step on it
    whole_x, whole_y = np.concatenate(list(xs), 1), np.concatenate(list(ys), 1)
    b_state, _ = jr.bptt.make_step(_loss_fn, tx, donate=False)(jr.bptt.init_state(params, tx, carry0), whole_x, whole_y)
    t_state, _ = jr.tbptt.make_step(_loss_fn, tx, donate=False)(jr.tbptt.init_state(params, tx, carry0), whole_x, whole_y)
    close(b_state.params, t_state.params, 1e-10, 1e-12)


def test_reset_carry_and_checkpoint_of_a_dict_carry(tmp_path):
    params, xs, ys = _train_setup()
    tx = optax.adam(1e-2)
    carry = {k: jnp.ones((4, H), F64) for k in ("h", "c")}
    reset = jr.tbptt.reset_carry(carry, jnp.array([True, False, True, False]))
    np.testing.assert_array_equal(np.asarray(reset["h"][:, 0]), [0, 1, 0, 1])
    np.testing.assert_array_equal(np.asarray(reset["c"][:, 0]), [0, 1, 0, 1])
    state, _ = jr.tbptt.make_step(_loss_fn, tx)(jr.tbptt.init_state(params, tx, carry), xs[0], ys[0])
    path = tmp_path / "state.safetensors"
    jr.checkpoint.save_state(path, state)
    restored = jr.checkpoint.restore_state(path, jr.tbptt.init_state(params, tx, CELL.initial_carry(4, F64))).state
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), restored, state)


def test_parallel_step_with_a_user_cell():
    pytest.importorskip("safetensors")
    here = os.path.dirname(os.path.abspath(__file__))
    script = textwrap.dedent(
        """
        import sys, numpy as np, jax, jax.numpy as jnp, optax
        sys.path.insert(0, sys.argv[1])
        import jaxrnn as jr
        from test_user_cells import CELL, _loss_fn, _train_setup
        params, xs, ys = _train_setup(seed=4)
        params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), params)
        xs, ys = xs.astype(np.float32), ys.astype(np.float32)
        tx = optax.adam(1e-2)
        mesh = jr.parallel.data_mesh()
        assert mesh.size == 2
        one = jr.tbptt.init_state(params, tx, CELL.initial_carry(4))
        two = jr.parallel.shard_state(one, mesh)
        s1, s2 = jr.tbptt.make_step(_loss_fn, tx, donate=False), jr.tbptt.make_step(_loss_fn, tx, mesh=mesh, donate=False)
        for s in range(3):
            one, _ = s1(one, xs[s], ys[s])
            two, _ = s2(two, xs[s], ys[s])
        err = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree_util.tree_leaves(one), jax.tree_util.tree_leaves(two)))
        assert err < 1e-5, err
        assert s2.trace_count == 1
        print("ok", err)
        """
    )
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(here), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", script, here], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]


# --------------------------------------------------------------------------- diagnostics


def _direct_state_gradient(params, xs, loss_at, s, t):
    """dL_s/dh_t by running to h_t, then differentiating the rest with jax.grad."""
    c = CELL.initial_carry(None, F64)
    for k in range(t + 1):
        c, _ = CELL.apply(params, c, xs[k])

    def rest(c_t):
        y, c2 = c_t["h"], c_t
        for k in range(t + 1, s + 1):
            c2, y = CELL.apply(params, c2, xs[k])
        return loss_at(y)

    return jax.grad(rest)(c)


def test_diagnostics_equal_direct_gradients():
    params, xs, _ = setup()
    x = xs[0]
    loss_at = lambda y: jnp.sum(jnp.sin(y) * jnp.arange(1.0, H + 1))  # noqa: E731
    grads = dg.state_gradients(CELL, params, x, lambda ys: jax.vmap(loss_at)(ys))
    assert set(grads) == {"h", "c"} and grads["h"].shape == (7, 7, H)
    for s, t in [(0, 0), (3, 3), (4, 1), (6, 0), (6, 5)]:
        want = _direct_state_gradient(params, x, loss_at, s, t)
        close({k: grads[k][s, t] for k in grads}, want, 1e-9, 1e-12)
    np.testing.assert_array_equal(np.asarray(grads["c"][2, 4]), 0.0)  # the future never matters
    norms = dg.gradient_norms(CELL, params, x, lambda ys: jax.vmap(loss_at)(ys))
    close(norms[4, 1], np.sqrt(sum(np.sum(np.asarray(grads[k][4, 1]) ** 2) for k in grads)))
    # one-step Jacobians on the flattened carry [c, h] (a dict's leaves in key order)
    jac = dg.step_jacobians(CELL, params, x)
    assert jac.shape == (7, 2 * H, 2 * H)
    c = CELL.initial_carry(None, F64)
    for k in range(3):
        c, _ = CELL.apply(params, c, x[k])
    flat = lambda cc: jnp.concatenate([cc["c"], cc["h"]])  # noqa: E731
    want = jax.jacfwd(lambda v: flat(CELL.apply(params, {"c": v[:H], "h": v[H:]}, x[3])[0]))(flat(c))
    close(jac[3], want, 1e-9, 1e-12)
    jn = dg.jacobian_norms(CELL, params, xs)
    assert jn.products.shape == (3, 7, 7)
    assert bool((jn.products <= jn.step_bound * (1 + 1e-9)).all())


def test_diagnostics_that_need_an_elman_cell_say_so():
    params, xs, _ = setup()
    with pytest.raises(TypeError, match=r"elman_bound apply to Elman cells only .*a cell of your own \(Cell\)"):
        dg.elman_bound(CELL, params, 4)
    with pytest.raises(TypeError, match=r"recurrent_norms needs the recurrent weight matrix params\['w_h'\].*keys \['out', 'w'\]"):
        dg.recurrent_norms(LeakyCell(), LeakyCell().init(jax.random.key(0), 3))
    norms = dg.recurrent_norms(CELL, params)  # a dict with a 2-D w_h: the whole matrix only
    assert set(norms) == {"w_h"}
    close(norms["w_h"], np.linalg.norm(np.asarray(params["w_h"]), 2))


# --------------------------------------------------------------------------- integrations, language model


def test_flax_and_equinox_wrappers_hold_a_user_cell():
    params, xs, carry = setup()
    want = jr.unroll(CELL, params, xs, carry, lengths=jnp.array([7, 2, 4]))
    pytest.importorskip("flax")
    from jaxrnn.integrations.flax_nnx import RNN as NNXRNN

    close(NNXRNN(CELL, params=params)(xs, carry, lengths=jnp.array([7, 2, 4])), want)
    pytest.importorskip("equinox")
    from jaxrnn.integrations.equinox import RNN as EqxRNN

    m = EqxRNN(CELL, params=params)
    close(m(xs, carry, lengths=jnp.array([7, 2, 4])), want)
    close(m.step(carry, xs[:, 0]), CELL.apply(params, carry, xs[:, 0]))


def test_language_model_with_a_cell_object():
    model = jr.lm.language_model(11, cell=peephole_lstm(6), embed=4, layers=2)
    assert model.hidden == 6 and model.cell.hidden_size == 6
    params = model.init(jax.random.key(0), F64)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 11, size=(2, 5)))
    carry, logits = model.apply(params, model.initial_carry(2, F64), tokens)
    assert logits.shape == (2, 5, 11) and set(carry[0]) == {"h", "c"}
    # the one-token step used for sampling gives the same logits as the whole-sequence apply
    c = model.initial_carry(2, F64)
    for t in range(5):
        c, lt = model.step(params, c, tokens[:, t])
        close(lt, logits[:, t], 1e-9, 1e-12)
    loss, _ = jr.lm.loss(model, params, model.initial_carry(2, F64), tokens[:, :-1], tokens[:, 1:])
    assert np.isfinite(float(loss))
    out = jr.lm.sample(model, params, 0, jnp.array([1, 2]), 4)
    assert out.shape[-1] >= 4
    with pytest.raises(ValueError, match=r"hidden=8 differs from cell.hidden_size=6"):
        jr.lm.language_model(11, cell=peephole_lstm(6), hidden=8)
    with pytest.raises(ValueError, match=r"cell must be one of .* or a cell object, got 'lsmt'"):
        jr.lm.language_model(11, cell="lsmt")


# --------------------------------------------------------------------------- errors


def _broken(apply=None, **kw):
    fields = dict(CELL._asdict(), **kw)
    if apply is not None:
        fields["apply"] = apply
    return jr.Cell(**fields)


def test_error_missing_fields():
    class NoApply:
        hidden_size = 3

        def init(self, key, input_size, dtype=jnp.float32):
            return {}

        def initial_carry(self, batch_size=None, dtype=jnp.float32):
            return jnp.zeros((3,))

    params, xs, _ = setup()
    with pytest.raises(TypeError, match=r"cell must be a recurrent cell: an object with init, initial_carry, apply and hidden_size .*got a NoApply without apply"):
        jr.unroll(NoApply(), params, xs)
    with pytest.raises(ValueError, match=r"cell.hidden_size must be a positive int \(the size of y_t\), got 0"):
        jr.unroll(CELL._replace(hidden_size=0), params, xs)
    with pytest.raises(TypeError, match=r"layers\[1\].apply must be callable, got NoneType"):
        jr.stack([CELL, CELL._replace(apply=None)])
    with pytest.raises(ValueError, match=r"must give both project and step .* or neither; got project=a function, step=None"):
        jr.unroll(CELL._replace(project=lambda p, x: x), params, xs)


def test_error_apply_returns_another_carry():
    params, xs, carry = setup(batch=4)

    def grows(p, c, x):
        new, y = CELL.apply(p, c, x)
        return dict(new, h=jnp.concatenate([new["h"], new["h"][:, :2]], -1)), y

    with pytest.raises(ValueError, match=r"grows returned carry\['h'\] of shape \(4, 7\), expected \(4, 5\)"):
        jr.unroll(_broken(grows), params, xs, carry)

    def renames(p, c, x):
        new, y = CELL.apply(p, c, x)
        return {"hidden": new["h"], "c": new["c"]}, y

    with pytest.raises(TypeError, match=r"renames returned a carry of structure .*'hidden'.* expected the structure it was given"):
        jr.unroll(_broken(renames), params, xs, carry)

    def to32(p, c, x):
        new, y = CELL.apply(p, c, x)
        return jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), new), y

    with pytest.raises(TypeError, match=r"to32 returned carry\['c'\] of dtype float32, expected float64"):
        jr.unroll(_broken(to32), params, xs, carry)

    def wide_y(p, c, x):
        new, y = CELL.apply(p, c, x)
        return new, jnp.concatenate([y, y], -1)

    with pytest.raises(ValueError, match=r"wide_y returned y_t of shape \(4, 10\), expected \(4, 5\) \(x_t's batch shape and hidden_size=5\)"):
        jr.unroll(_broken(wide_y), params, xs, carry)

    def single(p, c, x):
        return CELL.apply(p, c, x)[0]

    with pytest.raises(TypeError, match=r"single must return a pair \(carry, y_t\), got dict"):
        jr.unroll(_broken(single), params, xs, carry)


def test_error_params_and_carry_that_do_not_fit():
    params, xs, carry = setup()
    with pytest.raises(TypeError, match=r"params do not fit the cell: .*init\(key, input_size=3\) makes .* got"):
        jr.unroll(CELL, {k: v for k, v in params.items() if k != "p"}, xs, carry)
    with pytest.raises(ValueError, match=r"params\['w_x'\] has shape \(4, 20\) but .*init\(key, input_size=3\) makes \(3, 20\)"):
        jr.unroll(CELL, dict(params, w_x=jnp.zeros((4, 20), F64)), xs, carry)
    with pytest.raises(ValueError, match=r"carry\['h'\] has shape \(3, 6\), expected \(3, 5\)"):
        jr.unroll(CELL, params, xs, dict(carry, h=jnp.zeros((3, 6), F64)))
    with pytest.raises(TypeError, match=r"carry must have the structure of .*initial_carry"):
        jr.unroll(CELL, params, xs, (carry["h"], carry["c"]))


def test_error_inside_apply_is_annotated():
    params, xs, carry = setup()

    def typo(p, c, x):
        return CELL.apply(dict(p, w_x=p["wx"]), c, x)

    with pytest.raises(KeyError) as info:
        jr.unroll(_broken(typo), params, xs, carry)
    assert any("raised inside cell.apply = " in n and "typo" in n for n in getattr(info.value, "__notes__", []))


# --------------------------------------------------------------------------- memory


def test_generic_path_keeps_no_more_than_a_plain_scan():
    """remat=None keeps what a hand-written lax.scan of apply keeps; "step"/"sqrt" less."""
    params = CELL.init(jax.random.key(0), 16, jnp.float32)
    xs = jnp.ones((8, 256, 16), jnp.float32)
    carry = CELL.initial_carry(8)

    def plain(p):
        def body(c, x):
            return CELL.apply(p, c, x)
        c, ys = jax.lax.scan(body, carry, jnp.swapaxes(xs, 0, 1))
        return jnp.sum(c["h"]) + jnp.sum(ys[-1])

    def ours(p, remat):
        c, ys = jr.unroll(CELL, p, xs, carry, remat=remat)
        return jnp.sum(c["h"]) + jnp.sum(ys[:, -1])

    def temp(f):
        return jax.jit(jax.grad(f)).lower(params).compile().memory_analysis().temp_size_in_bytes

    base = temp(plain)
    assert temp(lambda p: ours(p, None)) <= 1.05 * base
    assert temp(lambda p: ours(p, "step")) < 0.7 * base
    assert temp(lambda p: ours(p, "sqrt")) < 0.3 * base

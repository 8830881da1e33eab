"""Flax NNX and Equinox wrappers: the same outputs, gradients and updates as the plain functions.

Each wrapper is built around the same jaxrnn params as a plain reference computed once
per module kind (jit-compiled, shared by the Flax and the Equinox tests).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxrnn as jr
from conftest import assert_trees_close

F32 = jnp.float32
TOL = dict(rtol=1e-5, atol=1e-6)

# every kind of module in one: a stack of a bidirectional GRU layer and an LSTM layer
CELLS = {
    "bidirectional+stack": jr.stack([jr.bidirectional(jr.gru(3)), jr.lstm(6)]),
}
XS = jnp.asarray(np.random.default_rng(0).standard_normal((3, 5, 4)), F32)
LENGTHS = jnp.array([5, 2, 4])
W = jnp.asarray(np.random.default_rng(1).standard_normal((3, 5, 1)), F32)  # weights of a scalar loss
TX = optax.chain(optax.clip_by_global_norm(0.1), optax.adam(1e-2))


def _loss_of_outputs(carry, ys):
    return jnp.sum(W * jnp.tanh(ys)), (carry, ys)


def _plain_loss(cell, params):
    return _loss_of_outputs(*jr.unroll(cell, params, XS, lengths=LENGTHS))


def _wrapper_loss(model):
    return _loss_of_outputs(*model(XS, lengths=LENGTHS))


@functools.lru_cache(maxsize=None)
def _reference(kind):
    """(cell, params, (carry, ys), grads) of the plain functions for ``CELLS[kind]``."""
    cell = CELLS[kind]
    params = cell.init(jax.random.key(7), 4)
    (_, out), grads = jax.jit(jax.value_and_grad(functools.partial(_plain_loss, cell), has_aux=True))(params)
    return cell, params, out, grads


@functools.lru_cache(maxsize=None)
def _reference_after_one_update(kind):
    """The params after one clipped-Adam step with the plain gradients."""
    _, params, _, grads = _reference(kind)

    @jax.jit
    def update(p, g):
        updates, _ = TX.update(g, TX.init(p), p)
        return optax.apply_updates(p, updates)

    return update(params, grads)



def _assert_trees_close(a, b):
    assert_trees_close(a, b, **TOL)


# --------------------------------------------------------------------------- Flax NNX


@pytest.fixture(scope="module")
def nnx():
    return pytest.importorskip("flax.nnx")


def _nnx_to_tree(state, nnx, like):
    """A gradient ``nnx.State`` of the wrapper back in jaxrnn's layout, shaped like ``like``."""
    flat = jax.tree_util.tree_leaves(state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    flat = [v[...] if isinstance(v, nnx.Variable) else v for v in flat]
    # nnx.State orders keys as a dict pytree does; list indices become int keys, same order
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(like), flat)


@pytest.mark.parametrize("kind", list(CELLS))
def test_flax_rnn_same_outputs_and_gradients_as_plain(nnx, kind):
    from jaxrnn.integrations.flax_nnx import RNN

    cell, params, out_ref, grads_ref = _reference(kind)
    model = RNN(cell, params=params)
    _assert_trees_close(model.param_tree(), params)
    (_, out), grads = nnx.jit(nnx.value_and_grad(_wrapper_loss, has_aux=True))(model)
    _assert_trees_close(out, out_ref)
    _assert_trees_close(_nnx_to_tree(grads, nnx, grads_ref), grads_ref)
    # a fresh initialisation has jaxrnn's layout and is drawn by cell.init from rngs.params()
    fresh = RNN(cell, input_size=4, rngs=nnx.Rngs(params=3))
    _assert_trees_close(fresh.param_tree(), cell.init(nnx.Rngs(params=3).params(), 4))


def test_flax_step_optimizer_and_errors(nnx):
    from jaxrnn.integrations.flax_nnx import RNN

    kind = "bidirectional+stack"
    cell, params, _, _ = _reference(kind)
    model = RNN(cell, params=params)
    opt = nnx.Optimizer(model, TX, wrt=nnx.Param)

    @nnx.jit
    def train_step(model, opt):
        grads = nnx.grad(lambda m: _wrapper_loss(m)[0])(model)
        opt.update(model, grads)

    train_step(model, opt)
    _assert_trees_close(model.param_tree(), _reference_after_one_update(kind))

    lstm = jr.lstm(6)
    p = lstm.init(jax.random.key(1), 4)
    x = XS[:, 0]
    _assert_trees_close(RNN(lstm, params=p).step(lstm.initial_carry(3), x), lstm.apply(p, lstm.initial_carry(3), x))

    with pytest.raises(ValueError, match="pass either params, or input_size and rngs"):
        RNN(cell, 4, rngs=nnx.Rngs(0), params=params)
    with pytest.raises(ValueError, match="pass input_size and rngs"):
        RNN(cell, 4)
    with pytest.raises(TypeError, match="cell must be a recurrent cell: an object with init, initial_carry, apply and hidden_size"):
        RNN("lstm", 4, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match="step needs a Cell or a Stack"):
        RNN(jr.bidirectional(jr.gru(2)), 4, rngs=nnx.Rngs(0)).step(None, x)


# --------------------------------------------------------------------------- Equinox


@pytest.fixture(scope="module")
def eqx():
    return pytest.importorskip("equinox")


@pytest.mark.parametrize("kind", list(CELLS))
def test_equinox_rnn_same_outputs_and_gradients_as_plain(eqx, kind):
    from jaxrnn.integrations.equinox import RNN

    cell, params, out_ref, grads_ref = _reference(kind)
    model = RNN(cell, params=params)
    (_, out), grads = eqx.filter_jit(eqx.filter_value_and_grad(_wrapper_loss, has_aux=True))(model)
    _assert_trees_close(out, out_ref)
    _assert_trees_close(grads.params, grads_ref)
    # the Equinox way: one sequence per call, batch with vmap
    out_v = eqx.filter_jit(jax.vmap(lambda m, x, n: m(x, lengths=n), in_axes=(None, 0, 0)))(model, XS, LENGTHS)
    _assert_trees_close(out_v, out)
    # a fresh initialisation is cell.init(key, input_size)
    _assert_trees_close(RNN(cell, input_size=4, key=jax.random.key(3)).params, cell.init(jax.random.key(3), 4))


def test_equinox_step_training_and_errors(eqx):
    from jaxrnn.integrations.equinox import RNN

    kind = "bidirectional+stack"
    cell, params, _, _ = _reference(kind)
    model = RNN(cell, params=params)

    @eqx.filter_jit
    def train_step(model, opt_state):
        g = eqx.filter_grad(lambda m: _wrapper_loss(m)[0])(model)
        updates, opt_state = TX.update(g, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), opt_state

    model, _ = train_step(model, TX.init(eqx.filter(model, eqx.is_array)))
    _assert_trees_close(model.params, _reference_after_one_update(kind))

    lstm = jr.lstm(6)
    p = lstm.init(jax.random.key(1), 4)
    x = XS[:, 0]
    _assert_trees_close(RNN(lstm, params=p).step(lstm.initial_carry(3), x), lstm.apply(p, lstm.initial_carry(3), x))

    with pytest.raises(ValueError, match="pass either params, or input_size and key"):
        RNN(cell, 4, key=jax.random.key(0), params=params)
    with pytest.raises(TypeError, match="step needs a Cell or a Stack"):
        RNN(jr.bidirectional(lstm), params={"forward": p, "backward": p}).step(None, x)
    with pytest.raises(ValueError, match="pass input_size and key"):
        RNN(cell, key=jax.random.key(0))
    with pytest.raises(TypeError, match="cell must be a recurrent cell: an object with init, initial_carry, apply and hidden_size"):
        RNN(None, params=params)
    with pytest.raises(TypeError, match="params must be a pytree of arrays"):
        RNN(cell, params={"w_x": "not an array"})

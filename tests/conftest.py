"""Shared test set-up and helpers.

float64 is enabled for the whole test process so that finite-difference checks and
parity with float64 NumPy references are meaningful (the doctests switch it off again,
see the conftest.py at the repository's root). The helpers below are imported by the
test modules (``from conftest import ...``); tree comparisons use chex.
"""

import chex
import jax
import jax.numpy as jnp

import jaxrnn as jr

jax.config.update("jax_enable_x64", True)

#: The built-in cells by name (``jr.cells.BUILTIN``).
KINDS = ("rnn", "rnn_relu", "lstm", "gru")


def make_cell(kind, hidden_size):
    """The built-in cell ``kind`` with ``hidden_size``."""
    return jr.cells.from_name(kind, hidden_size)


def random_tree(tree_fn, rng, dtype=jnp.float32, scale=0.5):
    """A tree shaped like ``tree_fn()``'s, every entry drawn from N(0, scale^2) (so biases
    and carries are nonzero, unlike ``init`` and ``initial_carry``)."""
    shapes = jax.eval_shape(tree_fn)
    return jax.tree.map(lambda s: jnp.asarray(scale * rng.normal(size=s.shape), dtype), shapes)


def random_params(cell, input_size, rng, dtype=jnp.float32, scale=0.5):
    """Random params shaped like ``cell.init``'s."""
    return random_tree(lambda: cell.init(jax.random.key(0), input_size), rng, dtype, scale)


def random_carry(cell, batch, rng, dtype=jnp.float32, scale=0.5):
    """A random carry shaped like ``cell.initial_carry(batch)``'s."""
    return random_tree(lambda: cell.initial_carry(batch), rng, dtype, scale)


def assert_trees_close(a, b, rtol=1e-5, atol=1e-6, *, same_dtypes=False):
    """Same tree structure, same leaf shapes (and dtypes if asked), values close."""
    chex.assert_trees_all_equal_structs(a, b)
    chex.assert_trees_all_equal_shapes(a, b)
    if same_dtypes:
        chex.assert_trees_all_equal_dtypes(a, b)
    chex.assert_trees_all_close(a, b, rtol=rtol, atol=atol)

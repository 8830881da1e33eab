"""The many-to-one classifier of ``classify.py``, written as an Equinox model.

``jaxrnn.integrations.equinox.RNN`` is an ``eqx.Module`` whose ``params`` field is
jaxrnn's LSTM parameter pytree; an ``eqx.nn.Linear`` reads the output at the last
valid step. As usual in Equinox the model handles one sequence and ``jax.vmap`` makes
the batch. The task is the one of ``classify.py``: which of two symbols is in the
majority in a row of odd length 5 to 25 (junk padding after the end).

Target: accuracy >= 0.97 on 2,000 fresh sequences with the default settings (400
steps, well under a minute on 2 CPU cores); >= 0.9 after ``--steps 100``.

Run (needs ``pip install "jaxrnn[equinox]"``)::

    python examples/equinox_classify.py [--steps 400] [--quick] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

import jaxrnn as jr
from jaxrnn.integrations.equinox import RNN

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from classify import BATCH, HIDDEN, make_batch  # noqa: E402  (the same task and sizes)


class Classifier(eqx.Module):
    rnn: RNN
    head: eqx.nn.Linear

    def __init__(self, hidden: int, *, key):
        k1, k2 = jax.random.split(key)
        self.rnn = RNN(jr.lstm(hidden), input_size=2, key=k1)
        self.head = eqx.nn.Linear(hidden, 2, key=k2, dtype=jnp.float32)

    def __call__(self, xs, length):                              # xs: (time, 2), length: ()
        _, ys = self.rnn(xs, lengths=length)                     # jr.unroll on self.rnn.params
        return self.head(jr.sequence.last_valid(ys, length))     # (2,) logits


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400, help="training steps (default 400)")
    parser.add_argument("--quick", action="store_true", help="the short run the target names: --steps 100")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate (default 1e-2)")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps = 100

    key = jax.random.key(args.seed)
    k_model, k_test, key = jax.random.split(key, 3)
    model = eqx.filter_jit(Classifier)(HIDDEN, key=k_model)  # built by one compiled program
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(args.lr))
    opt_state = tx.init(eqx.filter(model, eqx.is_array))

    def loss_fn(model, xs, lengths, labels):
        return jr.layers.softmax_cross_entropy(jax.vmap(model)(xs, lengths), labels)

    @eqx.filter_jit
    def train_step(model, opt_state, key):
        xs, lengths, labels = make_batch(key, BATCH)
        loss, grads = eqx.filter_value_and_grad(loss_fn)(model, xs, lengths, labels)
        updates, opt_state = tx.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), opt_state, loss

    @eqx.filter_jit
    def accuracy(model, xs, lengths, labels):
        return jnp.mean(jnp.argmax(jax.vmap(model)(xs, lengths), -1) == labels)

    test = jax.jit(make_batch, static_argnums=1)(k_test, 2000)
    start = time.time()
    for step, k in enumerate(jax.random.split(key, args.steps), 1):
        model, opt_state, loss = train_step(model, opt_state, k)
        if step % 200 == 0 or step == args.steps:
            print(f"step {step:5d}  loss {float(loss):.4f}  test accuracy {float(accuracy(model, *test)):.4f}")
    acc = float(accuracy(model, *test))
    print(f"trained {args.steps} steps in {time.time() - start:.1f} s")
    print(f"accuracy: {acc:.4f}")
    return acc


if __name__ == "__main__":
    main()

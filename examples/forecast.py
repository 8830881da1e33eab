"""Many-to-many regression: forecast a noisy sum of sines one step ahead, with ``jr.train.fit``.

The series is ``s_t = sin(2πt/23) + 0.6 sin(2πt/61 + 1) + 0.4 sin(2πt/9.5 + 2) + ε_t``,
``ε_t ~ N(0, 0.1²)``. A GRU reads it one value per step and predicts the next value at
every step (an output per step, a squared error per step). Training is truncated BPTT
over offset batches of the 20,000-step training stretch (``jr.data.offset_batches`` with
``targets=`` the series shifted by one), run by the library's training loop::

    result = jr.train.fit(step, state, batches, num_steps=..., evaluate=test_mse, ...)

which also gives the progress bar, periodic evaluation, and with ``--out DIR`` a
checkpoint (run the same command again to resume), ``metrics.json`` and ``curves.png``.

The result is the mean squared error on the next 2,000 steps of the series (after a
warm-up of 100 steps from a zero state) against the naive forecast ``ŝ_{t+1} = s_t``
(persistence), as the skill ``1 - MSE_model / MSE_naive``. The noise alone costs
``0.01`` per step that no forecast can remove, so the skill cannot reach 1.

Target: skill >= 0.75 with the default settings (600 steps, under 30 s on 2 CPU
cores); >= 0.3 after ``--steps 60``, the run ``--quick`` makes (a few seconds, for CI).

Run::

    python examples/forecast.py [--steps 600] [--seed 0] [--out DIR] [--quick]
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxrnn as jr

HIDDEN, BATCH, SEQ_LEN, TRAIN_LEN, TEST_LEN, WARMUP, NOISE = 32, 16, 50, 20_000, 2_000, 100, 0.1

cell, head = jr.gru(HIDDEN), jr.layers.affine(1)


def make_series(seed: int, length: int) -> np.ndarray:
    t = np.arange(length, dtype=np.float64)
    s = np.sin(2 * np.pi * t / 23) + 0.6 * np.sin(2 * np.pi * t / 61 + 1) + 0.4 * np.sin(2 * np.pi * t / 9.5 + 2)
    s += NOISE * np.random.default_rng(seed).normal(size=length)
    return s.astype(np.float32)[:, None]  # (N, 1): one feature per step


def init(key):
    k1, k2 = jax.random.split(key)
    return {"rnn": cell.init(k1, 1), "head": head.init(k2, HIDDEN)}


def predict(params, carry, x):
    """x: (B, T, 1) -> (carry, (B, T, 1)) one-step-ahead predictions."""
    carry, hs = jr.unroll(cell, params["rnn"], x, carry)
    return carry, head.apply(params["head"], hs)


def loss_fn(params, carry, x, y):
    carry, pred = predict(params, carry, x)
    return jnp.mean((pred - y) ** 2), carry


@jax.jit
def test_mse(params, series):
    """MSE of the one-step-ahead forecast over series[WARMUP + 1:], from a zero state."""
    _, pred = predict(params, cell.initial_carry(1), series[None, :-1])
    err = (pred[0, WARMUP:] - series[WARMUP + 1:]) ** 2
    return jnp.mean(err)


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600, help="training steps (default 600)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (default 3e-3)")
    parser.add_argument("--out", default=None, metavar="DIR", help="write checkpoint.safetensors, metrics.json and "
                        "curves.png to DIR, and resume from its checkpoint if there is one")
    parser.add_argument("--quick", action="store_true", help="the short run the target names: --steps 60")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    steps = 60 if args.quick else args.steps

    series = make_series(args.seed, TRAIN_LEN + TEST_LEN + 1)
    train, test = series[: TRAIN_LEN + 1], jnp.asarray(series[TRAIN_LEN:])
    naive = float(np.mean((series[TRAIN_LEN + WARMUP + 1:] - series[TRAIN_LEN + WARMUP:-1]) ** 2))
    batches = jr.data.offset_batches(train[:-1], BATCH, SEQ_LEN, targets=train[1:])

    tx = jr.clipped(optax.adam(args.lr), max_norm=1.0, skip_nonfinite=True)
    state = jr.tbptt.init_state(init(jax.random.key(args.seed)), tx, cell.initial_carry(BATCH))
    step = jr.tbptt.make_step(loss_fn, tx)
    files = {}
    if args.out is not None:
        os.makedirs(args.out, exist_ok=True)
        files = {"checkpoint": os.path.join(args.out, "checkpoint.safetensors"), "resume": True,
                 "metrics": os.path.join(args.out, "metrics.json"), "curves": os.path.join(args.out, "curves.png")}

    start = time.time()
    result = jr.train.fit(step, state, batches, num_steps=steps, evaluate=lambda st: test_mse(st.params, test),
                          eval_every=max(1, steps // 4), tokens_per_step=BATCH * SEQ_LEN,
                          progress=not args.no_progress, **files,
                          format_eval=lambda s, v: f"step {s}: test MSE {v['loss']:.4f} (naive {naive:.4f})")
    mse = float(result.history["val_loss"][-1]) if result.history["val_loss"] else float(test_mse(result.state.params, test))
    skill = 1.0 - mse / naive
    print(f"trained {result.step} steps ({result.stopped}) in {time.time() - start:.1f} s")
    print(f"test MSE {mse:.4f} vs naive (persistence) {naive:.4f}; the noise floor is {NOISE ** 2:.4f}")
    print(f"skill: {skill:.4f}")
    return skill


if __name__ == "__main__":
    main()

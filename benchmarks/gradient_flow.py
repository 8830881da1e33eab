"""Gradient flow through time, measured with ``jr.diagnostics``.

Figure 1 (``gradient_flow.png``): for a tanh RNN, a ReLU RNN, an LSTM and a GRU, at
initialisation and after a short full-BPTT training run on the delayed-recall task
(``jr.tasks.delayed_recall``), the relative gradient ``||dL_s/dh_t|| / ||dL_s/dh_s||``
and the Jacobian-product norm ``||dh_s/dh_t||_2`` against the distance ``s - t``
(geometric mean over ``s`` and over sequences), with the bound ``(gamma_w gamma_h)^(s-t)``
for the Elman cells (``gamma_w = ||W_h||_2``, ``gamma_h = 1``) and, for the gated cells,
the product of the measured one-step Jacobian norms (a valid bound for any cell).

Figure 2 (``gradient_flow_clipping.png``): an exploding configuration, a tanh RNN whose
``W_h`` is scaled to ``gamma_w > 1`` trained by SGD with a large learning rate, with and
without clipping by global norm (``jr.clipped``): loss and gradient norm per update.

Usage::

    python benchmarks/gradient_flow.py            # full run (a few minutes on 2 cores)
    python benchmarks/gradient_flow.py --quick    # a smoke run: 50 updates per cell

Writes ``gradient_flow{,_clipping}.png`` and ``gradient_flow.{md,json}`` to ``--out``
(``_quick`` names with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

import jaxrnn as jr  # noqa: E402
from _common import machine_info, output_dir  # noqa: E402

CELLS = {
    "tanh RNN": lambda h: jr.rnn(h, "tanh"),
    "ReLU RNN": lambda h: jr.rnn(h, "relu"),
    "LSTM": jr.lstm,
    "GRU": jr.gru,
}


def make_model(cell, num_symbols):
    head = jr.layers.affine(num_symbols)

    def init(key, hidden):
        k1, k2 = jax.random.split(key)
        return {"rnn": cell.init(k1, num_symbols), "head": head.init(k2, hidden)}

    def per_step_ce(params, ys, y):
        """Per-step cross-entropy, (B, T) (blank targets of t < k map to a real class)."""
        logits = head.apply(params["head"], ys)
        return jr.layers.softmax_cross_entropy(logits, jnp.minimum(y, num_symbols - 1), reduction="none")

    def loss_fn(params, carry, x, y):
        carry, ys = jr.unroll(cell, params["rnn"], x, carry)
        mask = y < num_symbols
        logits = head.apply(params["head"], ys)
        loss = jr.layers.softmax_cross_entropy(logits, jnp.minimum(y, num_symbols - 1), mask=mask)
        return loss, carry

    @jax.jit
    def accuracy(params, x, y):
        _, ys = jr.unroll(cell, params["rnn"], x)
        return jr.tasks.accuracy(head.apply(params["head"], ys), y, y < num_symbols)

    return init, per_step_ce, loss_fn, accuracy


def make_flow_curves(cell, per_step_ce):
    """A jitted ``(params, x, y) -> (gradient ratio, Jacobian products, step bound)`` by
    distance: geometric means over ``s`` and over the sequences of ``x``."""

    def one(params, xb, yb):
        loss = lambda ys: per_step_ce(params, ys, yb)  # noqa: E731   (T,) per-step losses
        rel = jr.diagnostics.gradient_norms(cell, params["rnn"], xb, loss, relative=True)
        jn = jr.diagnostics.jacobian_norms(cell, params["rnn"], xb)
        return rel, jn.products, jn.step_bound

    def gm(m):
        # geometric mean over sequences and over s at fixed s - t; exact zeros (dead ReLU
        # units can zero a whole Jacobian product) are floored at 1e-30 for the log.
        logs = jnp.log(jnp.maximum(m, 1e-30))
        return jnp.exp(jnp.mean(jr.diagnostics.by_distance(logs, "mean"), axis=0))

    @jax.jit
    def curves(params, x, y):
        rel, prod, sb = jax.vmap(one, in_axes=(None, 0, 0))(params, x, y)  # (N, T, T) each
        return gm(rel), gm(prod), gm(sb)

    return curves


def train_bptt(loss_fn, params, tx, carry, batches, progress):
    state = jr.bptt.init_state(params, tx, carry)
    step = jr.bptt.make_step(loss_fn, tx)
    losses, norms = [], []
    for x, y in batches:
        state, metrics = step(state, x, y)
        losses.append(float(metrics["loss"]))
        norms.append(float(metrics["grad_norm"]))
        progress.update(1)
    return state.params, losses, norms


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smaller run: 50 updates, T <= 30 (a smoke run)")
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--lag", type=int, default=5, help="delayed-recall lag for the training runs")
    p.add_argument("--symbols", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=50, help="T of the diagnosed sequences and the training sequences")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--updates", type=int, default=None, help="training updates per cell (default 1000; 50 quick)")
    p.add_argument("--diag-seqs", type=int, default=8, help="sequences the diagnostics average over")
    p.add_argument("--explode-gamma", type=float, default=1.5, help="||W_h|| of the exploding tanh RNN (default 1.5)")
    p.add_argument("--explode-lr", type=float, default=2.0, help="SGD learning rate of the exploding runs (default 2)")
    p.add_argument("--explode-clip", type=float, default=1.0, help="max_norm of the clipped run")
    p.add_argument("--explode-updates", type=int, default=None, help="updates per exploding run (default 300; 50 quick)")
    p.add_argument("--explode-seq-len", type=int, default=50, help="sequence length of the exploding runs (default 50)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="output folder (default: benchmarks/results; a new temporary folder with --quick)")
    args = p.parse_args(argv)
    args.out = output_dir(args.out, args.quick, "gradient_flow")
    if args.updates is None:
        args.updates = 50 if args.quick else 1000
    if args.explode_updates is None:
        args.explode_updates = 50 if args.quick else 300
    if args.quick:
        args.diag_seqs = min(args.diag_seqs, 4)
        args.seq_len = min(args.seq_len, 30)

    from tqdm import tqdm

    header = machine_info()
    key = jax.random.key(args.seed)
    k_diag, k_train, k_init, k_explode = jax.random.split(key, 4)
    diag = jr.tasks.delayed_recall(k_diag, args.diag_seqs, args.seq_len, args.lag, args.symbols)
    gen = jax.jit(lambda k: tuple(jr.tasks.delayed_recall(k, args.batch, args.seq_len, args.lag, args.symbols)[:2]))
    test = jr.tasks.delayed_recall(jax.random.fold_in(key, 99), 256, args.seq_len, args.lag, args.symbols)
    train_keys = jax.random.split(k_train, args.updates)
    total = args.updates * len(CELLS) + 2 * args.explode_updates
    results = {}
    t0 = time.perf_counter()
    with tqdm(total=total, desc="updates", unit="upd") as progress:
        for i, (name, make) in enumerate(CELLS.items()):
            progress.set_postfix_str(name)
            cell = make(args.hidden)
            init, per_step_ce, loss_fn, accuracy = make_model(cell, args.symbols)
            params0 = init(jax.random.fold_in(k_init, i), args.hidden)
            tx = jr.clipped(optax.adam(3e-3), max_norm=5.0)
            batches = (gen(k) for k in train_keys)
            params1, losses, _ = train_bptt(loss_fn, params0, tx, cell.initial_carry(args.batch), batches, progress)
            entry = {"losses": losses}
            curves = make_flow_curves(cell, per_step_ce)
            for tag, prm in (("init", params0), ("trained", params1)):
                rel, prod, sb = (np.asarray(a) for a in curves(prm, diag.inputs, diag.targets))
                norms = {g: float(v) for g, v in jr.diagnostics.recurrent_norms(cell, prm["rnn"]).items()}
                entry[tag] = {
                    "relative_gradient": rel.tolist(), "jacobian_product": prod.tolist(), "step_bound": sb.tolist(),
                    "recurrent_norms": norms, "accuracy": float(accuracy(prm, test.inputs, test.targets)),
                }
            results[name] = entry

        # ---- exploding configuration: tanh RNN, W_h = gamma * orthogonal, SGD, with/without clipping
        cell = jr.rnn(args.hidden, "tanh")
        init, per_step_ce, loss_fn, accuracy = make_model(cell, args.symbols)
        params0 = init(k_explode, args.hidden)
        params0["rnn"]["w_h"] = args.explode_gamma * params0["rnn"]["w_h"]
        ex_keys = jax.random.split(jax.random.fold_in(k_explode, 1), args.explode_updates)
        ex_gen = jax.jit(
            lambda k: tuple(jr.tasks.delayed_recall(k, args.batch, args.explode_seq_len, args.lag, args.symbols)[:2])
        )
        ex_test = jr.tasks.delayed_recall(jax.random.fold_in(key, 98), 256, args.explode_seq_len, args.lag, args.symbols)
        explode = {}
        for tag, tx in (
            ("no clipping", optax.sgd(args.explode_lr)),
            (f"clipped, max_norm={args.explode_clip:g}", jr.clipped(optax.sgd(args.explode_lr), max_norm=args.explode_clip)),
        ):
            progress.set_postfix_str(f"exploding tanh RNN, {tag}")
            prm = jax.tree_util.tree_map(jnp.array, params0)  # a copy: the step donates its state
            batches = (ex_gen(k) for k in ex_keys)
            prm1, losses, norms = train_bptt(loss_fn, prm, tx, cell.initial_carry(args.batch), batches, progress)
            finite = [math.isfinite(v) for v in losses]
            explode[tag] = {
                "losses": losses, "grad_norms": norms,
                "first_nonfinite_update": None if all(finite) else finite.index(False),
                "accuracy": float(accuracy(prm1, ex_test.inputs, ex_test.targets)),
                "final_gamma_w": float(jr.diagnostics.spectral_norm(prm1["rnn"]["w_h"])),
            }
    wall = time.perf_counter() - t0

    suffix = "_quick" if args.quick else ""
    os.makedirs(args.out, exist_ok=True)
    config = {k: v for k, v in vars(args).items() if k != "out"}
    with open(os.path.join(args.out, f"gradient_flow{suffix}.json"), "w") as f:
        json.dump({"header": header, "config": config, "wall_seconds": wall, "cells": results,
                   "exploding": explode}, f)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # ---- figure 1
    d = np.arange(args.seq_len)
    fig, axes = plt.subplots(2, 2, figsize=(12, 9), sharey=True)
    axes = axes.ravel()
    colors = {"init": "tab:blue", "trained": "tab:orange"}
    for ax, (name, entry) in zip(axes, results.items()):
        elman = "RNN" in name
        for tag in ("init", "trained"):
            e = entry[tag]
            c = colors[tag]
            ax.semilogy(d, e["relative_gradient"], color=c, lw=2, label=f"{tag}: ||dL_s/dh_t|| / ||dL_s/dh_s||")
            ax.semilogy(d, e["jacobian_product"], color=c, lw=1, ls="--", label=f"{tag}: ||dh_s/dh_t||")
            if elman:
                g = e["recurrent_norms"]["w_h"]
                ax.semilogy(d, g ** d.astype(float), color=c, lw=1, ls=":",
                            label=f"{tag}: bound (γ_w γ_h)^(s-t), γ_w={g:.2f}")
            else:
                ax.semilogy(d, e["step_bound"], color=c, lw=1, ls=":", label=f"{tag}: bound ∏ ||J_k||")
        acc = entry["trained"]["accuracy"]
        ax.set_title(f"{name} (H={args.hidden}); trained acc {acc:.2f}")
        ax.set_xlabel("distance s - t (steps)")
        ax.set_ylim(1e-12, 1e6)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7.5, loc="lower left")
    for ax in axes[::2]:
        ax.set_ylabel("norm (geometric mean over s and sequences)")
    fig.suptitle(
        f"Gradient flow through time: delayed recall (lag {args.lag}, {args.symbols} symbols), "
        f"T = {args.seq_len};\ninit vs after {args.updates} full-BPTT updates",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, f"gradient_flow{suffix}.png"), dpi=110)

    # ---- figure 2
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
    for (tag, e), c in zip(explode.items(), ("tab:red", "tab:green")):
        u = np.arange(1, len(e["losses"]) + 1)
        ax1.plot(u, e["losses"], color=c, lw=1, label=tag)
        ax2.semilogy(u, e["grad_norms"], color=c, lw=1, label=tag)
        if e["first_nonfinite_update"] is not None:
            ax1.axvline(e["first_nonfinite_update"] + 1, color=c, ls=":", label=f"{tag}: non-finite from here")
    ax1.axhline(np.log(args.symbols), color="gray", ls=":", lw=1, label=f"chance: ln {args.symbols}")
    ax1.set_xlabel("SGD update")
    ax1.set_yscale("log")
    ax1.set_ylabel("training loss (log scale)")
    ax1.set_title(f"tanh RNN, ||W_h|| = {args.explode_gamma:g} at init, SGD lr {args.explode_lr:g}")
    ax1.legend(fontsize=8)
    ax2.axhline(args.explode_clip, color="gray", ls=":", lw=1, label=f"max_norm = {args.explode_clip:g}")
    ax2.set_xlabel("SGD update")
    ax2.set_ylabel("global gradient norm (before clipping)")
    ax2.set_title("gradient norm")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, f"gradient_flow_clipping{suffix}.png"), dpi=110)

    # ---- markdown
    v = header["versions"]
    pick = [dd for dd in (1, 5, 10, 20, 40) if dd < args.seq_len]
    lines = [
        "# Gradient flow through time",
        "",
        f"Machine: {header['cpu']}, {header['cores']} cores ({header['jax_backend']}); python {v['python']}, "
        f"jax {v['jax']}, jaxlib {v.get('jaxlib', '?')}, optax {v['optax']}, torch {v['torch']}; {header['date']}.",
        f"Command: `python benchmarks/gradient_flow.py{' --quick' if args.quick else ''}`; seed {args.seed}; "
        f"wall time {wall:.0f} s (1-min load average at start: {header['load_average_1_5_15'][0]:.1f}).",
        "",
        f"Cells of H={args.hidden}; training: delayed recall (lag {args.lag}, {args.symbols} symbols, sequences of "
        f"{args.seq_len}), {args.updates} full-BPTT updates (`jr.bptt.make_step`), Adam 3e-3 behind "
        f"`jr.clipped(max_norm=5)`, batch {args.batch}. Diagnostics on {args.diag_seqs} sequences of {args.seq_len} "
        "steps; values are geometric means over s and over sequences at fixed distance d = s - t.",
        "",
        "## Relative gradient ||dL_s/dh_t|| / ||dL_s/dh_s|| by distance d",
        "",
        "| cell | state | γ_w = ‖W_h‖₂ | accuracy | " + " | ".join(f"d={dd}" for dd in pick) + " |",
        "|---|---|---:|---:|" + "---:|" * len(pick),
    ]
    for name, entry in results.items():
        for tag in ("init", "trained"):
            e = entry[tag]
            lines.append(
                f"| {name} | {tag} | {e['recurrent_norms']['w_h']:.2f} | {e['accuracy']:.3f} | "
                + " | ".join(f"{e['relative_gradient'][dd]:.2e}" for dd in pick) + " |"
            )
    lines += [
        "",
        "## Jacobian product ||dh_s/dh_t||₂ and its bound at d = " + str(pick[-1]),
        "",
        "| cell | state | measured | ∏‖J_k‖ (any cell) | (γ_w γ_h)^d (Elman) |",
        "|---|---|---:|---:|---:|",
    ]
    dd = pick[-1]
    for name, entry in results.items():
        for tag in ("init", "trained"):
            e = entry[tag]
            eb = f"{e['recurrent_norms']['w_h'] ** dd:.2e}" if "RNN" in name else "n/a (gated)"
            lines.append(f"| {name} | {tag} | {e['jacobian_product'][dd]:.2e} | {e['step_bound'][dd]:.2e} | {eb} |")
    gate_lines = []
    for name, entry in results.items():
        rn = entry["trained"]["recurrent_norms"]
        if len(rn) > 1:
            gate_lines.append(f"{name}: " + ", ".join(f"{g} {val:.2f}" for g, val in rn.items()))
    lines += ["", "Per-gate spectral norms of W_h after training: " + "; ".join(gate_lines) + ".", ""]
    lines += [
        "## Exploding configuration: clipping",
        "",
        f"tanh RNN H={args.hidden}, W_h = {args.explode_gamma:g} x orthogonal (γ_w = {args.explode_gamma:g}), "
        f"SGD lr {args.explode_lr:g}, {args.explode_updates} updates on sequences of {args.explode_seq_len} steps "
        "(same task, batch, initial weights and data order for both runs).",
        "",
        "| run | max grad norm | median grad norm | first non-finite update | final loss (mean of last 20) | accuracy |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for tag, e in explode.items():
        fin = [x for x in e["losses"][-20:] if math.isfinite(x)]
        gn = [x for x in e["grad_norms"] if math.isfinite(x)]
        lines.append(
            f"| {tag} | {max(gn):.3g} | {float(np.median(gn)):.3g} | "
            f"{'none' if e['first_nonfinite_update'] is None else e['first_nonfinite_update'] + 1} | "
            f"{(np.mean(fin) if fin else float('nan')):.3f} | {e['accuracy']:.3f} |"
        )
    lines.append("")
    with open(os.path.join(args.out, f"gradient_flow{suffix}.md"), "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

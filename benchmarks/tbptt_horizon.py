"""Truncation horizon: truncated BPTT cannot learn a dependency longer than its segments.

Task: delayed recall with lag ``k`` (``jr.tasks.delayed_recall``): the target at step
``t`` is the input symbol at step ``t - k``. The same recurrent model is trained

* by TBPTT (``jr.tbptt.make_epoch``) over one long stream read with offset batching
  (``jr.data.offset_batches``), the carry passed from segment to segment through
  ``stop_gradient``, with segment lengths ``T`` below, at and above ``k``;
* by full BPTT (``jr.bptt.make_step``) over fresh whole sequences.

Within a segment the longest path a gradient can take is ``T - 1`` steps, so for
``T <= k`` no gradient ever connects a target to the input it must recall, even though
the carried state could hold it: accuracy stays at chance, ``1 / num_symbols``. For
``T > k`` the last ``T - k`` steps of every segment carry the signal and the model
learns the delay line.

Every run is evaluated the same way: fresh sequences from a zero carry, accuracy over
the steps ``t >= k``.

Usage::

    python benchmarks/tbptt_horizon.py            # full run (a few minutes on 2 cores)
    python benchmarks/tbptt_horizon.py --quick    # a smoke run: 100 updates, one seed

Writes ``tbptt_horizon.{md,json,png}`` to ``--out`` (default ``benchmarks/results``).
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

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

import jaxrnn as jr  # noqa: E402
from _common import machine_info, output_dir  # noqa: E402


def make_model(kind: str, hidden: int, num_symbols: int):
    cell = {"gru": jr.gru, "lstm": jr.lstm}[kind](hidden)
    head = jr.layers.affine(num_symbols)

    def init(key):
        k1, k2 = jax.random.split(key)
        return {"rnn": cell.init(k1, num_symbols), "head": head.init(k2, hidden)}

    def loss_fn(params, carry, x, y):
        # y holds the blank class `num_symbols` where there is nothing to recall yet.
        carry, hs = jr.unroll(cell, params["rnn"], x, carry)
        logits = head.apply(params["head"], hs)
        mask = y < num_symbols
        loss = jr.layers.softmax_cross_entropy(logits, jnp.minimum(y, num_symbols - 1), mask=mask)
        return loss, carry

    @jax.jit
    def evaluate(params, x, y):
        _, hs = jr.unroll(cell, params["rnn"], x, cell.initial_carry(x.shape[0]))
        logits = head.apply(params["head"], hs)
        return jr.tasks.accuracy(logits, y, y < num_symbols)

    return cell, init, loss_fn, evaluate


def run_tbptt(args, seg_len, seed, eval_batch, progress):
    cell, init, loss_fn, evaluate = make_model(args.cell, args.hidden, args.symbols)
    key = jax.random.key(seed)
    k_init, k_data = jax.random.split(key)
    params = init(k_init)
    tx = jr.clipped(optax.adam(args.lr), max_norm=5.0)
    # One long stream, B offset streams; each update reads one segment of T steps per stream.
    n = args.batch * args.updates * seg_len
    stream = jr.tasks.delayed_recall(k_data, 1, n, args.lag, args.symbols)
    batches = jr.data.offset_batches(
        np.asarray(stream.inputs[0]), args.batch, seg_len, targets=np.asarray(stream.targets[0]), epochs=1
    )
    state = jr.tbptt.init_state(params, tx, cell.initial_carry(args.batch))
    epoch = jr.tbptt.make_epoch(loss_fn, tx)
    chunk = args.chunk
    losses = []
    done = 0
    t0 = time.perf_counter()
    while done < args.updates:
        xs, ys = batches.take(min(chunk, args.updates - done))
        state, metrics = epoch(state, jnp.asarray(xs), jnp.asarray(ys))
        losses.extend(np.asarray(metrics["loss"]).tolist())
        done += xs.shape[0]
        progress.update(xs.shape[0])
    secs = time.perf_counter() - t0
    acc = float(evaluate(state.params, *eval_batch))
    return {"method": f"TBPTT T={seg_len}", "seg_len": seg_len, "seed": seed, "accuracy": acc,
            "final_loss": float(np.mean(losses[-20:])), "seconds": secs, "losses": losses,
            "tokens_per_update": args.batch * seg_len}


def run_bptt(args, seed, eval_batch, progress):
    cell, init, loss_fn, evaluate = make_model(args.cell, args.hidden, args.symbols)
    key = jax.random.key(seed)
    k_init, k_data = jax.random.split(key)
    params = init(k_init)
    tx = jr.clipped(optax.adam(args.lr), max_norm=5.0)
    state = jr.bptt.init_state(params, tx, cell.initial_carry(args.batch))
    step = jr.bptt.make_step(loss_fn, tx)
    gen = jax.jit(lambda k: jr.tasks.delayed_recall(k, args.batch, args.bptt_len, args.lag, args.symbols)[:2])
    keys = jax.random.split(k_data, args.updates)
    losses = []
    t0 = time.perf_counter()
    for i in range(args.updates):
        x, y = gen(keys[i])
        state, metrics = step(state, x, y)
        losses.append(float(metrics["loss"]))
        progress.update(1)
    secs = time.perf_counter() - t0
    acc = float(evaluate(state.params, *eval_batch))
    return {"method": f"full BPTT L={args.bptt_len}", "seg_len": None, "seed": seed, "accuracy": acc,
            "final_loss": float(np.mean(losses[-20:])), "seconds": secs, "losses": losses,
            "tokens_per_update": args.batch * args.bptt_len}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="100 updates, one seed, T = k/2 and 3k/2 (a smoke test, too short to learn)")
    p.add_argument("--lag", type=int, default=20, help="k, the recall lag (default 20)")
    p.add_argument("--symbols", type=int, default=2, help="alphabet size; chance accuracy is 1/symbols (default 2)")
    p.add_argument("--cell", choices=["gru", "lstm"], default="gru")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--updates", type=int, default=None, help="optimizer updates per run (default 2500; 100 with --quick)")
    p.add_argument("--segments", type=int, nargs="+", default=None, help="TBPTT segment lengths (default k/4, k/2, k, 3k/2, 2k; k/2 and 3k/2 with --quick)")
    p.add_argument("--bptt-len", type=int, default=None, help="sequence length for full BPTT (default 4k)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default 0 1; 0 with --quick)")
    p.add_argument("--no-bptt", action="store_true", help="skip the full-BPTT baseline")
    p.add_argument("--chunk", type=int, default=100, help="segments per fused make_epoch call")
    p.add_argument("--eval-len", type=int, default=None, help="length of evaluation sequences (default 10 k)")
    p.add_argument("--out", default=None, help="output folder (default: benchmarks/results; a new temporary folder with --quick)")
    args = p.parse_args(argv)
    args.out = output_dir(args.out, args.quick, "tbptt_horizon")
    k = args.lag
    if args.updates is None:
        args.updates = 100 if args.quick else 2500
    if args.segments is None:  # quick: one segment length on each side of k
        args.segments = (sorted({max(1, k // 2), (3 * k) // 2}) if args.quick
                         else sorted({max(1, k // 4), max(1, k // 2), k, (3 * k) // 2, 2 * k}))
    if args.bptt_len is None:
        args.bptt_len = 4 * k
    if args.seeds is None:
        args.seeds = [0] if args.quick else [0, 1]
    if args.eval_len is None:
        args.eval_len = 10 * k
    args.chunk = min(args.chunk, args.updates)

    from tqdm import tqdm

    header = machine_info()
    ev = jr.tasks.delayed_recall(jax.random.key(12345), 256, args.eval_len, k, args.symbols)
    eval_batch = (ev.inputs, ev.targets)
    runs = []
    total = args.updates * (len(args.segments) + (0 if args.no_bptt else 1)) * len(args.seeds)
    t_start = time.perf_counter()
    with tqdm(total=total, desc="updates", unit="upd") as progress:
        for seed in args.seeds:
            for seg in args.segments:
                progress.set_postfix_str(f"seed {seed} TBPTT T={seg}")
                runs.append(run_tbptt(args, seg, seed, eval_batch, progress))
            if not args.no_bptt:
                progress.set_postfix_str(f"seed {seed} full BPTT")
                runs.append(run_bptt(args, seed, eval_batch, progress))
    wall = time.perf_counter() - t_start

    chance = 1.0 / args.symbols
    methods = []
    for r in runs:
        if r["method"] not in methods:
            methods.append(r["method"])
    table = []
    for m in methods:
        rs = [r for r in runs if r["method"] == m]
        accs = [r["accuracy"] for r in rs]
        seg = rs[0]["seg_len"]
        table.append({
            "method": m, "seg_len": seg, "longest_gradient_path": (seg - 1) if seg else args.bptt_len - 1,
            "accuracy_per_seed": accs, "accuracy_mean": float(np.mean(accs)),
            "final_train_loss_mean": float(np.mean([r["final_loss"] for r in rs])),
            "seconds_mean": float(np.mean([r["seconds"] for r in rs])), "tokens_per_update": rs[0]["tokens_per_update"],
        })

    config = {k_: v for k_, v in vars(args).items() if k_ not in ("out",)}
    os.makedirs(args.out, exist_ok=True)
    name = "tbptt_horizon_quick" if args.quick else "tbptt_horizon"
    with open(os.path.join(args.out, name + ".json"), "w") as f:
        json.dump({"header": header, "config": config, "chance": chance, "wall_seconds": wall, "table": table,
                   "runs": [{k_: v for k_, v in r.items() if k_ != "losses"} for r in runs]}, f, indent=1)

    # ---- plot: training loss curves and final accuracy
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12.5, 4.4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, m in enumerate(methods):
        for j, r in enumerate(r_ for r_ in runs if r_["method"] == m):
            ls = np.asarray(r["losses"])
            w = max(1, len(ls) // 50)
            smooth = np.convolve(ls, np.ones(w) / w, mode="valid")
            ax1.plot(np.arange(len(smooth)) + w - 1, smooth, color=colors[i % len(colors)],
                     alpha=0.9 if j == 0 else 0.5, label=m if j == 0 else None)
    ax1.axhline(np.log(args.symbols), color="gray", ls=":", label=f"chance: ln {args.symbols}")
    ax1.set_xlabel("optimizer update")
    ax1.set_ylabel("training cross-entropy (smoothed)")
    ax1.set_title(f"delayed recall, lag k={k}, {args.cell.upper()} H={args.hidden}")
    ax1.legend(fontsize=8)
    xs_ = np.arange(len(table))
    for i, row in enumerate(table):
        ax2.bar(i, row["accuracy_mean"], color=colors[i % len(colors)], alpha=0.85)
        ax2.scatter([i] * len(row["accuracy_per_seed"]), row["accuracy_per_seed"], color="k", s=12, zorder=3)
        ax2.text(i, row["accuracy_mean"] + 0.02, f"{row['accuracy_mean']:.3f}", ha="center", fontsize=9)
    ax2.axhline(chance, color="gray", ls=":", label=f"chance 1/{args.symbols}")
    ax2.set_xticks(xs_)
    ax2.set_xticklabels([row["method"].replace(" ", "\n", 1) for row in table], fontsize=8)
    ax2.set_ylim(0, 1.1)
    ax2.set_ylabel(f"accuracy on fresh sequences (t >= k), k={k}")
    ax2.set_title("T <= k: no gradient path of length k")
    ax2.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, name + ".png"), dpi=110)

    # ---- markdown
    v = header["versions"]
    lines = [
        f"# TBPTT horizon: delayed recall with lag k = {k}",
        "",
        f"Machine: {header['cpu']}, {header['cores']} cores ({header['jax_backend']}); python {v['python']}, "
        f"jax {v['jax']}, jaxlib {v.get('jaxlib', '?')}, optax {v['optax']}, torch {v['torch']}; {header['date']}.",
        f"Command: `python benchmarks/tbptt_horizon.py{' --quick' if args.quick else ''}`; wall time {wall:.0f} s "
        f"(1-min load average at start: {header['load_average_1_5_15'][0]:.1f}; timings are indicative only "
        "when the machine is shared).",
        "",
        f"Model: {args.cell.upper()} (H={args.hidden}) + affine head, {args.symbols} symbols one-hot "
        f"(chance accuracy {chance:.3f}); Adam lr {args.lr} behind `jr.clipped(max_norm=5)`; batch {args.batch}; "
        f"{args.updates} updates per run; seeds {args.seeds}.",
        f"TBPTT: one stream of {args.batch} x {args.updates} x T steps read by `jr.data.offset_batches`, "
        f"`jr.tbptt.make_epoch` (carry passed on through `stop_gradient`). Full BPTT: fresh sequences of "
        f"{args.bptt_len} steps from a zero carry, `jr.bptt.make_step`.",
        f"Evaluation: 256 fresh sequences of {args.eval_len} steps from a zero carry, accuracy over steps t >= k.",
        "",
        "| method | longest gradient path (steps) | accuracy (mean) | per seed | final train loss | s / run |",
        "|---|---:|---:|---|---:|---:|",
    ]
    for row in table:
        lines.append(
            f"| {row['method']} | {row['longest_gradient_path']} | {row['accuracy_mean']:.3f} | "
            + ", ".join(f"{a:.3f}" for a in row["accuracy_per_seed"])
            + f" | {row['final_train_loss_mean']:.3f} | {row['seconds_mean']:.1f} |"
        )
    n_eval = 256 * max(args.eval_len - k, 0)
    se = math.sqrt(chance * (1 - chance) / max(n_eval, 1))
    lines += [
        "",
        f"Chance: {chance:.3f} accuracy, loss ln {args.symbols} = {np.log(args.symbols):.3f}. Each accuracy is "
        f"measured on {n_eval} positions (correlated within a sequence), so a guesser's accuracy has a "
        f"binomial standard error of about {se:.4f}.",
        "",
        "How to read it: within a segment of T steps the longest gradient path is T - 1 steps, so for T <= k no "
        "gradient ever connects a target to the input it must recall, although the carried state could hold it. "
        "Any accuracy above chance for T <= k comes from the readout learning to decode what the dynamics happen "
        "to keep of that input in the carry, not from learning to store it; for T > k the last T - k steps of "
        "every segment carry the signal and the delay line is learned.",
        "",
    ]
    with open(os.path.join(args.out, name + ".md"), "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

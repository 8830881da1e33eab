"""Compile time of a jaxrnn training step against the sequence length L.

The step (float32 LSTM B=32, I=128, H=256, linear head on every step, MSE,
``clip_by_global_norm(5)`` + SGD, as in ``throughput.py``) is traced, lowered and
compiled from scratch (a new function object each time, so no cache is hit) for every
L. The recurrence is a ``lax.scan`` (inside ``jaxrnn/fused.py``: an outer scan over
chunks and an inner scan over the steps of a chunk), so the program does not grow with
L and neither should the compile time. Each L is compiled ``--repeats`` times, the
lengths interleaved round-robin so they see the same machine load; medians are
reported, and the ratio compile(L=8192) / compile(L=128) (target <= 1.5).

Usage::

    python benchmarks/compile_time.py            # L = 128 ... 8192, remat None/step/sqrt
    python benchmarks/compile_time.py --quick    # L = 128 and 8192, default remat only

Writes ``compile_time.{md,json}`` (``compile_time_quick.*`` with ``--quick``) to
``--out`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import command_line, header_markdown, machine_info, output_dir, write_results  # noqa: E402

FULL_LENGTHS = (128, 512, 2048, 8192)
QUICK_LENGTHS = (128, 8192)
REMATS = {"remat=None": None, 'remat="step"': "step", 'remat="sqrt"': "sqrt"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Writes compile_time.{md,json} (compile_time_quick.* with --quick).")
    p.add_argument("--quick", action="store_true", help="L = 128 and 8192, remat=None only, 2 repeats")
    p.add_argument("--lengths", type=int, nargs="+", default=None)
    p.add_argument("--repeats", type=int, default=None, help="compiles per (L, remat) (default 5, quick 2)")
    p.add_argument("--out", default=None, help="output folder (default: benchmarks/results; a new temporary folder with --quick)")
    return p.parse_args(argv)


def compile_once(L, remat, B=32, I=128, H=256):
    """Seconds to trace+lower and to compile a fresh training step for length L."""
    import jax
    import jax.numpy as jnp
    import optax

    import jaxrnn as jr

    cell = jr.lstm(H)
    params = {"rnn": jax.eval_shape(lambda: cell.init(jax.random.key(0), I)),
              "head": {"w": jax.ShapeDtypeStruct((H, I), jnp.float32), "b": jax.ShapeDtypeStruct((I,), jnp.float32)}}
    tx = optax.chain(optax.clip_by_global_norm(5.0), optax.sgd(0.01))

    def loss_fn(p, x, y):
        _, hs = jr.unroll(cell, p["rnn"], x, remat=remat)
        return jnp.mean((hs @ p["head"]["w"] + p["head"]["b"] - y) ** 2)

    def step(params, opt_state, x, y):  # a new function object each call: no cache hit
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state = jax.eval_shape(tx.init, params)
    x = jax.ShapeDtypeStruct((B, L, I), jnp.float32)
    t0 = time.perf_counter()
    lowered = jax.jit(step).lower(params, opt_state, x, x)
    t1 = time.perf_counter()
    lowered.compile()
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def main(argv=None):
    args = parse_args(argv)
    args.out = output_dir(args.out, args.quick, "compile_time")
    lengths = args.lengths or (QUICK_LENGTHS if args.quick else FULL_LENGTHS)
    repeats = args.repeats or (2 if args.quick else 5)
    remats = {"remat=None": None} if args.quick else REMATS
    info = machine_info()
    print(f"{info['cpu']}, {info['cores']} cores, load {info['load_average_1_5_15']}, jax {info['jax']}")
    compile_once(64, None)  # warm up JAX's own imports and caches of unrelated pieces
    samples = {(name, L): {"lower": [], "compile": []} for name in remats for L in lengths}
    for r in range(repeats):
        for name, remat in remats.items():
            for L in (lengths if r % 2 == 0 else lengths[::-1]):
                lo, co = compile_once(L, remat)
                samples[(name, L)]["lower"].append(lo)
                samples[(name, L)]["compile"].append(co)
                print(f"  round {r + 1}: {name} L={L}: lower {lo:.2f} s, compile {co:.2f} s")

    rows = []
    for (name, L), s in samples.items():
        rows.append({"remat": name, "L": L, "lower_s": s["lower"], "compile_s": s["compile"],
                     "lower_median_s": statistics.median(s["lower"]), "compile_median_s": statistics.median(s["compile"]),
                     "total_median_s": statistics.median(a + b for a, b in zip(s["lower"], s["compile"]))})
    ratios = {}
    lo_L, hi_L = min(lengths), max(lengths)
    for name in remats:
        a = next(r for r in rows if r["remat"] == name and r["L"] == lo_L)
        b = next(r for r in rows if r["remat"] == name and r["L"] == hi_L)
        ratios[name] = {"compile": b["compile_median_s"] / a["compile_median_s"],
                        "lower+compile": b["total_median_s"] / a["total_median_s"]}

    md = header_markdown("Compile time vs sequence length", info, command_line())
    md += ("\nTraining step of a float32 LSTM (B=32, I=128, H=256, head + MSE + clip 5 + SGD), traced, lowered "
           f"and compiled from scratch; median of {repeats} compiles per cell, lengths interleaved.\n\n")
    md += "| remat | L | trace+lower s | compile s | total s |\n|---|---|---|---|---|\n"
    for r in sorted(rows, key=lambda r: (list(remats).index(r["remat"]), r["L"])):
        md += f"| {r['remat']} | {r['L']} | {r['lower_median_s']:.2f} | {r['compile_median_s']:.2f} | {r['total_median_s']:.2f} |\n"
    md += f"\n| remat | compile(L={hi_L}) / compile(L={lo_L}) | (trace+lower+compile) ratio | target |\n|---|---|---|---|\n"
    for name, rr in ratios.items():
        md += f"| {name} | **{rr['compile']:.2f}** | {rr['lower+compile']:.2f} | <= 1.5 |\n"
    name = "compile_time_quick" if args.quick else "compile_time"
    md_path, _ = write_results(name, md, {"machine": info, "command": command_line(), "repeats": repeats,
                                          "rows": rows, "ratios": ratios}, args.out)
    print(f"wrote {md_path}")


if __name__ == "__main__":
    main()

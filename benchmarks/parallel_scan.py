"""minGRU / minLSTM: sequential scan against associative scan, forward + backward.

For each cell (``jr.mingru``, ``jr.minlstm``, both ``log_space=False`` and ``True``) and
each sequence length T, one jitted ``jax.grad`` of ``sum(ys)`` with respect to the
params and the inputs is timed with ``jr.unroll(..., scan="sequential")`` and with
``scan="associative"``, float32, I=H, at two shapes: B=8, H=128 (a small model's layer)
and B=1, H=16 (so little work per step that the per-step cost of the sequential loop
dominates). The two scans are timed in interleaved rounds (``_common.interleaved``);
medians and the median per-round ratio associative / sequential are reported. The
ratios decide what ``scan="auto"`` does on a CPU (``jaxrnn.linear_scan.auto_associative``).
The seconds to trace and compile each program are recorded too.

Usage::

    python benchmarks/parallel_scan.py            # T = 256, 1024, 4096
    python benchmarks/parallel_scan.py --quick    # T = 32, smaller B and H, two variants

Writes ``parallel_scan.{md,json}`` (``parallel_scan_quick.*`` with ``--quick``) to
``--out`` (default ``benchmarks/results``; a temporary folder with ``--quick``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import command_line, header_markdown, interleaved, machine_info, output_dir, timer, write_results  # noqa: E402

#: (cell, log_space) pairs of a full run; a quick run takes one of each cell.
VARIANTS = (("mingru", False), ("mingru", True), ("minlstm", False), ("minlstm", True))
FULL = {"lengths": (256, 1024, 4096), "shapes": ((8, 128), (1, 16)), "rounds": 3, "reps": 1, "variants": VARIANTS}
QUICK = {"lengths": (32,), "shapes": ((4, 32),), "rounds": 2, "reps": 1, "variants": (("mingru", False), ("minlstm", True))}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Writes parallel_scan.{md,json} (parallel_scan_quick.* with --quick).")
    p.add_argument("--quick", action="store_true", help="T = 32, B=4, H=32, 2 rounds, two of the four variants")
    p.add_argument("--lengths", type=int, nargs="+", default=None)
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--out", default=None, help="output folder (default: benchmarks/results; a new temporary folder with --quick)")
    return p.parse_args(argv)


def runners(name, log_space, T, B, H):
    """``({"sequential": run, "associative": run}, {scan: seconds to trace and compile})``
    for one cell, shape and length."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jaxrnn as jr

    cell = (jr.mingru if name == "mingru" else jr.minlstm)(H, log_space=log_space)
    params = cell.init(jax.random.key(0), H)
    xs = jnp.asarray(np.random.default_rng(0).normal(size=(B, T, H)), jnp.float32)
    out, compile_s = {}, {}
    for scan in ("sequential", "associative"):
        def loss(p, x, scan=scan):
            return jr.unroll(cell, p, x, scan=scan)[1].sum()

        t0 = time.perf_counter()
        fn = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, xs).compile()
        compile_s[scan] = time.perf_counter() - t0
        jax.block_until_ready(fn(params, xs))
        out[scan] = timer(lambda fn=fn: fn(params, xs), jax.block_until_ready)
    return out, compile_s


def measure(cfg, B, H, name, log_space, T) -> dict:
    """One row: both scans of one cell at one shape and length, interleaved."""
    print(f"B={B} H={H} {name} log_space={log_space} T={T}", flush=True)
    # Tiny shapes: several calls per timing, so that a timing is not one short call.
    reps = cfg["reps"] if B * H >= 1024 else 20
    runs, compile_s = runners(name, log_space, T, B, H)
    res = interleaved(runs, cfg["rounds"], reps, "sequential")
    return {"B": B, "H": H, "cell": name, "log_space": log_space, "T": T, "compile_s": compile_s,
            "sequential_ms": 1e3 * res["sequential"]["median_s"], "associative_ms": 1e3 * res["associative"]["median_s"],
            "ratio_median": res["associative"]["ratio_median"], "ratio_min": res["associative"]["ratio_min"],
            "ratio_max": res["associative"]["ratio_max"], "raw": res}


def main(argv=None):
    args = parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)
    if args.lengths:
        cfg["lengths"] = tuple(args.lengths)
    if args.rounds:
        cfg["rounds"] = args.rounds
    args.out = output_dir(args.out, args.quick, "parallel_scan")
    info = machine_info()
    print(f"{info['cpu']}, {info['cores']} cores, load {info['load_average_1_5_15']}, jax {info['jax']}")
    rows = []
    for B, H in cfg["shapes"]:
        for name, log_space in cfg["variants"]:
            for T in cfg["lengths"]:
                rows.append(measure(cfg, B, H, name, log_space, T))
    info_end = machine_info()
    md = header_markdown("minGRU / minLSTM: sequential vs associative scan", info, command_line())
    md += (f"\nForward + backward (`jax.jit(jax.grad(sum(ys)))` w.r.t. params and inputs), float32, I=H; "
           f"median of {cfg['rounds']} interleaved rounds. Ratio = associative / sequential "
           f"(median of per-round ratios; below 1: the associative scan is faster). Load average at the end: "
           f"{info_end['load_average_1_5_15']} (a shared machine).\n\n")
    columns = ["B", "H", "cell", "log_space", "T", "sequential ms", "associative ms", "ratio (min-max)",
               "compile s, sequential / associative"]
    table = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        cells = [r["B"], r["H"], r["cell"], r["log_space"], r["T"], f"{r['sequential_ms']:.1f}", f"{r['associative_ms']:.1f}",
                 f"**{r['ratio_median']:.2f}** ({r['ratio_min']:.2f}-{r['ratio_max']:.2f})",
                 f"{r['compile_s']['sequential']:.1f} / {r['compile_s']['associative']:.1f}"]
        table.append("| " + " | ".join(str(c) for c in cells) + " |")
    md += "\n".join(table) + "\n"
    name = "parallel_scan_quick" if args.quick else "parallel_scan"
    md_path, _ = write_results(name, md, {"machine": info, "load_average_at_end": info_end["load_average_1_5_15"],
                                          "command": command_line(), "config": cfg, "rows": rows}, args.out)
    print(md)
    print(f"wrote {md_path}")


if __name__ == "__main__":
    main()

"""Training throughput: jaxrnn vs PyTorch (nn.LSTM / nn.GRU / nn.RNN, oneDNN) vs Flax.

One training step = the recurrent layer over ``(B, L, I)`` inputs, a linear head
``H -> I`` on every output, mean squared error against ``(B, L, I)`` targets, the
gradient, clipping by global norm 5 and an SGD update (lr 0.01); float32 throughout.

* ``jaxrnn``: ``jr.unroll`` (the fast path of ``jaxrnn/fused.py``) + head + MSE, optax
  ``chain(clip_by_global_norm(5), sgd)``, one ``jax.jit`` with donated state.
* ``jaxrnn-plain``: the same with the fast path switched off (``jr.unroll``'s generic
  ``lax.scan`` of ``cell.step``): what the library did before the fast path.
* ``torch``: ``nn.LSTM``/``nn.GRU``/``nn.RNN`` (``batch_first=True``) + ``nn.Linear`` +
  ``mse_loss``, ``clip_grad_norm_(5)``, ``optim.SGD``; ``torch.set_num_threads`` = the
  cores available to this process (eager mode; PyTorch picks its oneDNN kernels).
* ``flax``: ``nn.RNN(nn.OptimizedLSTMCell)`` / ``nn.RNN(nn.GRUCell)`` /
  ``nn.RNN(nn.SimpleCell)`` + ``nn.Dense``, same optax chain, one ``jax.jit``.

All competitors run in one process, in interleaved rounds (each round runs every
competitor for ``--reps`` steps, alternating the order); the reported ratio is the median
over rounds of the per-round time ratio to PyTorch, which cancels most of the drift of
a shared machine. Tokens per second = B L / (median seconds per step).

Usage::

    python benchmarks/throughput.py            # all cells and shapes (about 10 minutes)
    python benchmarks/throughput.py --quick    # the LSTM base shape only, few rounds

Writes ``throughput.md`` and ``throughput.json`` (``throughput_quick.*`` with
``--quick``) to ``--out`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import command_line, header_markdown, interleaved, machine_info, output_dir, timer, write_results  # noqa: E402

SHAPES = {
    "base": dict(B=32, L=128, I=128, H=256),
    "large-batch": dict(B=256, L=128, I=128, H=256),
    "long-sequence": dict(B=32, L=1024, I=128, H=256),
}
CELLS = ("lstm", "gru", "rnn_tanh")
LR, MAX_NORM = 0.01, 5.0


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Writes throughput.{md,json} (throughput_quick.* with --quick).")
    p.add_argument("--quick", action="store_true", help="LSTM base shape only, 3 rounds (about a minute)")
    p.add_argument("--cells", nargs="+", choices=CELLS, default=None, help="cells to run (default: all)")
    p.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=None, help="shapes to run (default: all)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds per case (default 7, quick 3)")
    p.add_argument("--reps", type=int, default=None, help="steps per competitor per round (default: ~0.5 s worth)")
    p.add_argument("--unroll", type=int, default=1, help="lax.scan unroll passed to jr.unroll")
    p.add_argument("--no-flax", action="store_true", help="skip Flax")
    p.add_argument("--no-plain", action="store_true", help="skip the generic-path jaxrnn")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: cores available)")
    p.add_argument("--wait-idle", type=float, default=None,
                   help="before each case, wait until other processes use at most this many cores (measured "
                        "over 3 s from /proc/stat while this one sleeps); PyTorch's threads slow down "
                        "many-fold when other processes compete for the cores")
    p.add_argument("--wait-max", type=float, default=1800, help="longest wait per case, seconds (default 1800)")
    p.add_argument("--out", default=None, help="output folder (default: benchmarks/results; a new temporary folder with --quick)")
    return p.parse_args(argv)


# --------------------------------------------------------------------------- data


def make_data(shape, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((shape["B"], shape["L"], shape["I"])).astype(np.float32)
    y = rng.standard_normal((shape["B"], shape["L"], shape["I"])).astype(np.float32)
    return x, y


# --------------------------------------------------------------------------- jax runners


def _jax_runner(loss_fn, params, x, y):
    import jax
    import optax

    tx = optax.chain(optax.clip_by_global_norm(MAX_NORM), optax.sgd(LR))

    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    step = jax.jit(step, donate_argnums=(0, 1))
    state = [params, tx.init(params)]
    xj, yj = jax.device_put(x), jax.device_put(y)

    def one():
        state[0], state[1], loss = step(state[0], state[1], xj, yj)
        return loss

    run = timer(one, lambda out: out.block_until_ready())
    run(3)  # compile + warm up
    return run


def jaxrnn_runner(kind, shape, x, y, unroll=1, plain=False, remat=None):
    import jax
    import jax.numpy as jnp

    import jaxrnn as jr
    from jaxrnn import fused

    h, i = shape["H"], shape["I"]
    cell = {"lstm": jr.lstm, "gru": jr.gru, "rnn_tanh": jr.rnn}[kind](h)
    k1, k2 = jax.random.split(jax.random.key(0))
    params = {"rnn": cell.init(k1, i), "head": {"w": jax.random.normal(k2, (h, i)) / jnp.sqrt(h), "b": jnp.zeros(i)}}

    def loss_fn(p, x, y):
        _, hs = jr.unroll(cell, p["rnn"], x, unroll=unroll, remat=remat)
        pred = hs @ p["head"]["w"] + p["head"]["b"]
        return jnp.mean((pred - y) ** 2)

    if not plain:
        return _jax_runner(loss_fn, params, x, y)
    saved = fused.applies
    fused.applies = lambda *a: False  # trace the generic path once; the compiled step keeps it
    try:
        return _jax_runner(loss_fn, params, x, y)
    finally:
        fused.applies = saved


def flax_runner(kind, shape, x, y):
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    h, i = shape["H"], shape["I"]
    make_cell = {"lstm": nn.OptimizedLSTMCell, "gru": nn.GRUCell, "rnn_tanh": nn.SimpleCell}[kind]

    class Model(nn.Module):
        @nn.compact
        def __call__(self, x):
            hs = nn.RNN(make_cell(features=h))(x)
            return nn.Dense(i)(hs)

    model = Model()
    params = model.init(jax.random.key(0), x[:, :2])

    def loss_fn(p, x, y):
        return jnp.mean((model.apply(p, x) - y) ** 2)

    return _jax_runner(loss_fn, params, x, y)


# --------------------------------------------------------------------------- torch runner


def torch_runner(kind, shape, x, y):
    import torch

    h, i = shape["H"], shape["I"]
    torch.manual_seed(0)
    rnn = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn_tanh": torch.nn.RNN}[kind](i, h, batch_first=True)
    head = torch.nn.Linear(h, i)
    params = list(rnn.parameters()) + list(head.parameters())
    opt = torch.optim.SGD(params, lr=LR)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def one():
        opt.zero_grad(set_to_none=True)
        out, _ = rnn(xt)
        loss = torch.nn.functional.mse_loss(head(out), yt)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, MAX_NORM)
        opt.step()
        return loss

    run = timer(one, lambda out: out.item())
    run(3)
    return run


# --------------------------------------------------------------------------- main


def main(argv=None):
    args = parse_args(argv)
    args.out = output_dir(args.out, args.quick, "throughput")
    import torch

    threads = args.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    cells = args.cells or (("lstm",) if args.quick else CELLS)
    shapes = args.shapes or (("base",) if args.quick else tuple(SHAPES))
    rounds = args.rounds or (3 if args.quick else 7)
    info = machine_info()
    print(f"{info['cpu']}, {info['cores']} cores, load {info['load_average_1_5_15']}, jax {info['jax']}, torch {info['torch']}")

    results = []
    for shape_name in shapes:
        shape = SHAPES[shape_name]
        for kind in cells:
            if kind != "lstm" and shape_name != "base" and args.quick:
                continue
            x, y = make_data(shape)
            waited = wait_for_idle(args.wait_idle, args.wait_max)
            print(f"{kind} {shape_name} {shape}: compiling...")
            runners = {"jaxrnn": jaxrnn_runner(kind, shape, x, y, unroll=args.unroll)}
            if not args.no_plain:
                runners["jaxrnn-plain"] = jaxrnn_runner(kind, shape, x, y, unroll=args.unroll, plain=True)
            if not args.no_flax:
                runners["flax"] = flax_runner(kind, shape, x, y)
            runners["torch"] = torch_runner(kind, shape, x, y)
            # About half a second per competitor per round.
            reps = args.reps or max(1, int(round(0.5 / max(runners["torch"](1), 1e-3))))
            load_before = os.getloadavg()[0]
            res = interleaved(runners, rounds=rounds, reps=reps, reference="torch")
            tokens = shape["B"] * shape["L"]
            row = {"cell": kind, "shape": shape_name, **shape, "reps": reps, "rounds": rounds, "results": {},
                   "load_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
                   "waited_s": waited}
            for name, r in res.items():
                row["results"][name] = {**r, "tokens_per_s": tokens / r["median_s"]}
            row["ratio_jaxrnn_to_flax"] = _median_ratio(res["jaxrnn"]["seconds"], res["flax"]["seconds"]) if "flax" in res else None
            results.append(row)
            print("  " + "  ".join(f"{k}: {1e3 * v['median_s']:.1f} ms (x{v['ratio_median']:.3f} torch)" for k, v in res.items()))

    md = header_markdown("Training throughput: jaxrnn vs PyTorch vs Flax", info, command_line())
    md += (
        "\nOne step = recurrent layer + linear head H->I on every step + MSE + gradient + "
        "clip_by_global_norm(5) + SGD, float32. Ratio = median over interleaved rounds of "
        "(time per step / PyTorch's time per step in the same round); below 1 is faster than "
        f"PyTorch. jax `unroll={args.unroll}`, torch threads = {threads}.\n\n"
    )
    names = ["jaxrnn", "jaxrnn-plain", "flax", "torch"]
    md += "| cell | shape (B, L, I, H) | " + " | ".join(f"{n} ms/step" for n in names) + \
          " | jaxrnn tokens/s | torch tokens/s | jaxrnn / torch | jaxrnn / flax | plain / torch | flax / torch |\n"
    md += "|---|---|" + "---|" * (len(names) + 6) + "\n"
    for row in results:
        r = row["results"]

        def ms(n):
            return f"{1e3 * r[n]['median_s']:.1f}" if n in r else "-"

        def ratio(n):
            return f"{r[n]['ratio_median']:.3f}" if n in r else "-"

        jf = f"{row['ratio_jaxrnn_to_flax']:.3f}" if row["ratio_jaxrnn_to_flax"] is not None else "-"
        md += (f"| {row['cell']} | {row['shape']} ({row['B']}, {row['L']}, {row['I']}, {row['H']}) | "
               + " | ".join(ms(n) for n in names)
               + f" | {r['jaxrnn']['tokens_per_s']:,.0f} | {r['torch']['tokens_per_s']:,.0f} | **{ratio('jaxrnn')}** | {jf} | "
               + f"{ratio('jaxrnn-plain')} | {ratio('flax')} |\n")
    md += ("\n1-minute load average before / after each case: "
           + "; ".join(f"{row['cell']} {row['shape']}: {row['load_1min_before_after'][0]} / "
                       f"{row['load_1min_before_after'][1]}" for row in results) + ".\n")
    md += ("\nPer-round ratios (min-max) for jaxrnn / torch: "
           + "; ".join(f"{row['cell']} {row['shape']}: {row['results']['jaxrnn']['ratio_min']:.3f}-"
                       f"{row['results']['jaxrnn']['ratio_max']:.3f}" for row in results) + ".\n")
    md += cpu_table(results, names)
    name = "throughput_quick" if args.quick else "throughput"
    md_path, _ = write_results(name, md, {"machine": info, "command": command_line(), "unroll": args.unroll,
                                          "torch_threads": threads, "results": results}, args.out)
    print(f"wrote {md_path}")


def cpu_table(results, names) -> str:
    """Markdown: per case and competitor, the cores kept busy, kernel time and page faults."""
    rows = [(row, n, row["results"][n]) for row in results for n in names if n in row["results"]]
    if not any(r.get("cpu") for _, _, r in rows):
        return ""
    md = ("\nWhere the time goes (this process, all threads, per step; medians over rounds): cores busy = "
          "CPU seconds / wall seconds; kernel = CPU time in the kernel, mostly zero-filling freshly mapped "
          "pages (minor page faults): glibc gives every block above its mmap threshold (at most 32 MiB) "
          "its own mapping and returns it at free, so a step that allocates such blocks faults its pages in "
          "again on every call, in PyTorch as in XLA.\n\n"
          "| cell | shape | competitor | ms/step | cores busy | kernel ms/step | minor faults/step |\n"
          "|---|---|---|---|---|---|---|\n")
    for row, n, r in rows:
        c = r.get("cpu")
        if not c:
            continue
        md += (f"| {row['cell']} | {row['shape']} | {n} | {1e3 * r['median_s']:.1f} | {r['cores_busy']:.2f} | "
               f"{1e3 * c['kernel_s']:.1f} | {c['minor_faults']:,.0f} |\n")
    return md


def busy_cores(window=3.0):
    """Cores kept busy by the whole machine over ``window`` seconds (this process sleeps)."""
    import time

    def snap():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v), v[3] + v[4]  # total, idle + iowait

    t0, i0 = snap()
    time.sleep(window)
    t1, i1 = snap()
    total = max(t1 - t0, 1)
    return (1 - (i1 - i0) / total) * (os.cpu_count() or 1)


def wait_for_idle(limit, max_wait):
    """Sleep until other processes keep at most ``limit`` cores busy; seconds waited."""
    import time

    if limit is None:
        return 0.0
    t0 = time.time()
    while busy_cores() > limit and time.time() - t0 < max_wait:
        time.sleep(5)
    return round(time.time() - t0, 1)


def _median_ratio(a, b):
    import statistics

    return statistics.median(x / y for x, y in zip(a, b))


if __name__ == "__main__":
    main()

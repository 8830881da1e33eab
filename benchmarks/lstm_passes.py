"""Where an LSTM training step's time goes, jaxrnn against PyTorch ``nn.LSTM``: forward and backward.

For one float32 LSTM layer (default B=32, T=64, I=64, H=256: the language model's shape
in ``lm_compare.py``), with the loss ``sum(h_t^2)`` over every output, this times in
interleaved rounds:

* ``forward``: what a training step runs before its backward pass. jaxrnn:
  ``jax.vjp(loss, params, x)`` (the outputs and the residuals the backward pass reads);
  PyTorch: the forward with autograd recording.
* ``forward+backward``: the whole gradient. jaxrnn: ``jax.grad(loss, (params, x))``;
  PyTorch: ``loss.backward()`` (gradients of the weights and the inputs).

The backward time is the difference of the two medians. The script also times the
matrix products of jaxrnn's gradient on their own (``products``: each shape in a
``lax.fori_loop``, the per-step ones as a dependent chain), which gives the time the
gradient cannot go below with XLA's products on this machine:

* the input projection ``(T B, I) @ (I, 4H)``, once;
* the recurrent products ``(B, H) @ (H, 4H)`` forward and ``(B, 4H) @ (4H, H)`` backward,
  ``T`` of each, one after the other;
* per chunk of ``K`` steps (the fast path's chunk length), the weight gradient
  ``(I + H, K B) @ (K B, 4H)`` and the input gradient ``(K B, 4H) @ (4H, I)``. Each competitor's rounds also
record the cores it kept busy (CPU seconds of all the process's threads / wall
seconds; the kernel accounts CPU time in ticks, so this is rough for calls of a few
milliseconds, as in ``--quick``). ``--one-core`` pins the whole process to one CPU first (every thread of both
frameworks then shares that core), which tells the code per core apart from the use of
the second core.

Usage::

    python benchmarks/lstm_passes.py                  # 11 rounds at B=32, T=64, I=64, H=256
    python benchmarks/lstm_passes.py --one-core       # the same, pinned to one CPU
    python benchmarks/lstm_passes.py --quick          # 3 rounds, a small shape

Writes ``lstm_passes.{md,json}`` (``_B.._T.._I.._H..`` for another ``--shape``, ``_one_core``
and ``_quick`` appended as they apply)
to ``--out`` (default ``benchmarks/results``). PyTorch is optional: without it only
jaxrnn is timed.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (command_line, output_dir, header_markdown, interleaved, machine_info,  # noqa: E402
                     pin_to_one_cpu, timer, write_results)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--shape", type=int, nargs=4, metavar=("B", "T", "I", "H"), default=None,
                   help="batch, steps, input and hidden size (default 32 64 64 256; quick 8 16 16 32)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 11, quick 3)")
    p.add_argument("--reps", type=int, default=10, help="calls per competitor per round")
    p.add_argument("--one-core", action="store_true", help="pin the process to one CPU before timing")
    p.add_argument("--quick", action="store_true", help="small shape, 3 rounds")
    p.add_argument("--out", default=None, help="output folder (default: benchmarks/results; a new temporary folder with --quick)")
    return p.parse_args(argv)


def jax_runners(B, T, I, H):
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jaxrnn as jr

    cell = jr.lstm(H)
    params = cell.init(jax.random.key(0), I)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((B, T, I)).astype(np.float32))

    def loss(p, x):
        _, hs = jr.unroll(cell, p, x)
        return jnp.sum(hs * hs)

    forward = jax.jit(lambda p, x: jax.vjp(loss, p, x))
    grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
    return {"jaxrnn forward": timer(lambda: forward(params, x), jax.block_until_ready),
            "jaxrnn forward+backward": timer(lambda: grad(params, x), jax.block_until_ready)}


def product_times(B, T, I, H, reps=5):
    """Seconds of each matrix product of jaxrnn's LSTM gradient, timed alone (median of
    ``reps`` calls of a jitted ``fori_loop`` over as many products as the gradient runs):
    ``{name: (seconds, GFLOP, count)}``."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax import lax

    from jaxrnn import fused

    k = fused.chunk_length(T)
    n_chunks = -(-T // k)
    key = jax.random.key(1)
    w = jax.random.normal(key, (H, 4 * H)) / np.sqrt(H)
    w_t = jnp.asarray(w.T)  # what the backward loop multiplies by (fused.maths._rec)

    def chain(step, n):  # n dependent products: the recurrence's serial order
        return jax.jit(lambda h: lax.fori_loop(0, n, lambda i, h: step(h), h))

    def repeat(n):  # n independent products of the same shapes (accumulated)
        return jax.jit(lambda a, b: lax.fori_loop(0, n, lambda i, acc: acc + (a * (1 + i * 1e-7)) @ b,
                                                  jnp.zeros((a.shape[0], b.shape[1]), a.dtype)))

    def normal(*shape):
        return jax.random.normal(key, shape)

    cases = [  # name, jitted function, its arguments, the product's (M, K, N), products per gradient
        ("input projection (T B, I) @ (I, 4H)", repeat(1), (normal(T * B, I), normal(I, 4 * H)), (T * B, I, 4 * H), 1),
        ("forward recurrent (B, H) @ (H, 4H)", chain(lambda h: jnp.tanh((h @ w)[:, :H]), T), (jnp.ones((B, H)),),
         (B, H, 4 * H), T),
        ("backward recurrent (B, 4H) @ (4H, H)", chain(lambda d: jnp.tile(jnp.tanh(d @ w_t), (1, 4)), T),
         (jnp.ones((B, 4 * H)),), (B, 4 * H, H), T),
        (f"weight gradient (I + H, K B) @ (K B, 4H), K = {k}", repeat(n_chunks),
         (normal(I + H, k * B), normal(k * B, 4 * H)), (I + H, k * B, 4 * H), n_chunks),
        ("input gradient (K B, 4H) @ (4H, I)", repeat(n_chunks), (normal(k * B, 4 * H), normal(4 * H, I)),
         (k * B, 4 * H, I), n_chunks),
    ]
    out = {}
    for name, f, args, (m, kk, nn), n in cases:
        run = timer(lambda: f(*args), jax.block_until_ready)
        run(2)
        out[name] = (float(np.median([run(1) for _ in range(reps)])), n * 2 * m * kk * nn / 1e9, n)
    return out


def torch_runners(B, T, I, H, threads):
    try:
        import torch
    except ImportError:
        return {}
    import numpy as np

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(I, H, batch_first=True)
    x = torch.tensor(np.random.default_rng(0).standard_normal((B, T, I)).astype(np.float32), requires_grad=True)

    def forward():
        out, _ = lstm(x)
        return (out * out).sum()

    def forward_backward():
        loss = forward()
        loss.backward()
        return loss

    return {"PyTorch forward": timer(forward, float), "PyTorch forward+backward": timer(forward_backward, float)}


def main(argv=None):
    args = parse_args(argv)
    args.out = output_dir(args.out, args.quick, "lstm_passes")
    if args.one_core:
        pin_to_one_cpu()
    B, T, I, H = args.shape or ((8, 16, 16, 32) if args.quick else (32, 64, 64, 256))
    rounds = args.rounds or (3 if args.quick else 11)
    info = machine_info()
    threads = 1 if args.one_core else (info.get("torch_threads") or 1)
    print(f"{info['cpu']}, {info['cores']} core(s) usable, load {info['load_average_1_5_15']}; B={B} T={T} I={I} H={H}")
    runners = {**jax_runners(B, T, I, H), **torch_runners(B, T, I, H, threads)}
    for run in runners.values():  # compile and warm up
        run(3)
    res = interleaved(runners, rounds, args.reps, reference="jaxrnn forward+backward")

    def ms(name):
        return 1e3 * res[name]["median_s"]

    fws = ["jaxrnn"] + (["PyTorch"] if "PyTorch forward" in res else [])
    passes = {fw: {"forward_ms": ms(f"{fw} forward"), "forward_backward_ms": ms(f"{fw} forward+backward"),
                   "backward_ms": ms(f"{fw} forward+backward") - ms(f"{fw} forward"),
                   "cores_busy_forward": res[f"{fw} forward"]["cores_busy"],
                   "cores_busy_forward_backward": res[f"{fw} forward+backward"]["cores_busy"]} for fw in fws}

    title = "LSTM training step, forward and backward: jaxrnn vs PyTorch"
    md = header_markdown(title, info, command_line())
    md += (f"\nOne float32 LSTM layer, B={B}, T={T}, I={I}, H={H}, loss sum(h^2) over every step; median of {rounds} "
           f"interleaved rounds x {args.reps} calls. "
           + ("The process was pinned to one CPU (every thread shares it); PyTorch ran 1 thread.\n\n" if args.one_core
              else f"Default threading (PyTorch: {threads} threads).\n\n"))
    md += "| | forward ms | forward+backward ms | backward ms | cores busy (fwd / fwd+bwd) |\n|---|---|---|---|---|\n"
    for fw, p in passes.items():
        md += (f"| {fw} | {p['forward_ms']:.2f} | {p['forward_backward_ms']:.2f} | {p['backward_ms']:.2f} | "
               f"{p['cores_busy_forward']:.2f} / {p['cores_busy_forward_backward']:.2f} |\n")
    products = product_times(B, T, I, H, reps=3 if args.quick else 7)
    floor_ms = 1e3 * sum(v[0] for v in products.values())
    md += ("\nThe matrix products of jaxrnn's gradient, each timed on its own (median of "
           f"{3 if args.quick else 7} calls; the per-step ones as a dependent chain with a tanh between):\n\n"
           "| product | count | ms | GFLOP | GFLOP/s |\n|---|---:|---:|---:|---:|\n")
    for name, (sec, gflop, n) in products.items():
        md += f"| {name} | {n} | {1e3 * sec:.2f} | {gflop:.3f} | {gflop / sec:.0f} |\n"
    total_gflop = sum(v[1] for v in products.values())
    md += (f"| all | | **{floor_ms:.2f}** | {total_gflop:.3f} | {total_gflop / floor_ms * 1e3:.0f} |\n\n"
           f"jaxrnn's gradient took {passes['jaxrnn']['forward_backward_ms']:.2f} ms, "
           f"{passes['jaxrnn']['forward_backward_ms'] / floor_ms:.2f}x the products' time alone.\n")
    if "PyTorch" in passes:
        j, t = passes["jaxrnn"], passes["PyTorch"]
        md += (f"\njaxrnn / PyTorch time: forward {j['forward_ms'] / t['forward_ms']:.2f}, backward "
               f"{j['backward_ms'] / t['backward_ms']:.2f}, whole gradient "
               f"{j['forward_backward_ms'] / t['forward_backward_ms']:.2f} (per-round ratios of the whole gradient: "
               f"{res['PyTorch forward+backward']['ratio_max'] ** -1:.2f}-{res['PyTorch forward+backward']['ratio_min'] ** -1:.2f}).\n")
        md += (f"PyTorch's gradient took {t['forward_backward_ms'] / floor_ms:.2f}x the time of XLA's products alone; "
               f"0.85x PyTorch's time would be {0.85 * t['forward_backward_ms'] / floor_ms:.2f}x it.\n")
    else:
        md += "\nPyTorch is not installed: only jaxrnn was timed.\n"
    shape_tag = "" if args.quick or (B, T, I, H) == (32, 64, 64, 256) else f"_B{B}_T{T}_I{I}_H{H}"
    name = "lstm_passes" + shape_tag + ("_one_core" if args.one_core else "") + ("_quick" if args.quick else "")
    md_path, _ = write_results(name, md, {"machine": info, "command": command_line(), "shape": [B, T, I, H],
                                          "rounds": rounds, "reps": args.reps, "one_core": args.one_core,
                                          "passes": passes, "timings": res,
                                          "products": {k: {"seconds": v[0], "gflop": v[1], "count": v[2]}
                                                       for k, v in products.items()},
                                          "products_ms": floor_ms}, args.out)
    print(md)
    print(f"wrote {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

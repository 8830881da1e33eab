"""Where an LSTM training step's time goes, jaxrnn against PyTorch ``nn.LSTM``: forward and backward.

For one float32 LSTM layer (default B=32, T=64, I=64, H=256: the language model's shape
in ``lm_compare.py``), with the loss ``sum(h_t^2)`` over every output, this times in
interleaved rounds:

* ``forward``: what a training step runs before its backward pass. jaxrnn:
  ``jax.vjp(loss, params, x)`` (the outputs and the residuals the backward pass reads);
  PyTorch: the forward with autograd recording.
* ``forward+backward``: the whole gradient. jaxrnn: ``jax.grad(loss, (params, x))``;
  PyTorch: ``loss.backward()`` (gradients of the weights and the inputs).

The backward time is the difference of the two medians. Each competitor's rounds also
record the cores it kept busy (CPU seconds of all the process's threads / wall
seconds; the kernel accounts CPU time in ticks, so this is rough for calls of a few
milliseconds, as in ``--quick``). ``--one-core`` pins the whole process to one CPU first (every thread of both
frameworks then shares that core), which tells the code per core apart from the use of
the second core.

Usage::

    python benchmarks/lstm_passes.py                  # 11 rounds at B=32, T=64, I=64, H=256
    python benchmarks/lstm_passes.py --one-core       # the same, pinned to one CPU
    python benchmarks/lstm_passes.py --quick          # 3 rounds, a small shape

Writes ``lstm_passes.{md,json}`` (``_one_core`` and ``_quick`` appended as they apply)
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
    if "PyTorch" in passes:
        j, t = passes["jaxrnn"], passes["PyTorch"]
        md += (f"\njaxrnn / PyTorch time: forward {j['forward_ms'] / t['forward_ms']:.2f}, backward "
               f"{j['backward_ms'] / t['backward_ms']:.2f}, whole gradient "
               f"{j['forward_backward_ms'] / t['forward_backward_ms']:.2f} (per-round ratios of the whole gradient: "
               f"{res['PyTorch forward+backward']['ratio_max'] ** -1:.2f}-{res['PyTorch forward+backward']['ratio_min'] ** -1:.2f}).\n")
    else:
        md += "\nPyTorch is not installed: only jaxrnn was timed.\n"
    name = "lstm_passes" + ("_one_core" if args.one_core else "") + ("_quick" if args.quick else "")
    md_path, _ = write_results(name, md, {"machine": info, "command": command_line(), "shape": [B, T, I, H],
                                          "rounds": rounds, "reps": args.reps, "one_core": args.one_core,
                                          "passes": passes, "timings": res}, args.out)
    print(md)
    print(f"wrote {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

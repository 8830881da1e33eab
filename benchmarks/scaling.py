"""Data-parallel TBPTT: training throughput against the number of devices.

One character-level LSTM language model (``jr.lm``) is trained with TBPTT over offset
batches of a text, by ``jr.tbptt.make_step(..., mesh=jr.parallel.data_mesh(n))`` for
``n = 1, 2, 4, 8`` devices, and by the plain single-device step (``mesh=None``) as the
baseline. Two regimes:

* **strong scaling**: the global batch ``B`` is fixed, each device gets ``B / n`` rows;
* **weak scaling**: each device gets ``b`` rows, the global batch is ``n · b``.

Throughput is training tokens (``B · T`` per step) per second over timed steps after two
warm-up steps (compilation), with the loss fetched at the end of each timing; every
configuration is compiled first, then all are timed in turn, round after round, and the
median round is reported (a shared machine's load changes during the run).

On a CPU, the devices are forced with ``XLA_FLAGS=--xla_force_host_platform_device_count=8``
(set by this script before JAX starts unless the flag is already there). These are not
8 processors: they share the host's cores (2 on the machine of the recorded results, with
other jobs running), so the numbers show the **overhead** of the sharded step (the
all-reduce of the gradients, smaller per-device work, the placement of every batch),
not a speed-up. On a machine with several accelerators the same script measures real
scaling.

Usage::

    python benchmarks/scaling.py            # LSTM 256, B=64, T=64; several minutes on 2 cores
    python benchmarks/scaling.py --quick    # LSTM 128, B=32, T=32, 1 and 2 devices; a smoke run

Writes ``scaling.{md,json}`` (``scaling_quick.{md,json}`` with ``--quick``) to ``--out``
(default ``benchmarks/results``). Reads the text from ``--corpus`` (default the shared
Shakespeare file if present, else the Python standard library's source via
``jr.corpus.load_default``).
"""

from __future__ import annotations

import os
import sys

_FLAG = "--xla_force_host_platform_device_count"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" {_FLAG}=8").strip()

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import optax  # noqa: E402

import jaxrnn as jr  # noqa: E402
from _common import corpus_file, machine_info, output_dir  # noqa: E402



def load_tokens(path: str | None, limit: int) -> tuple[np.ndarray, int, str]:
    path = corpus_file(path)
    with open(path, encoding="utf-8") as f:
        text = f.read(limit)
    chars = sorted(set(text))
    lookup = {c: i for i, c in enumerate(chars)}
    return np.array([lookup[c] for c in text], np.int32), len(chars), path


class Run:
    """One configuration: a compiled TBPTT step on ``devices`` (``None``: no mesh) and its state."""

    def __init__(self, model, tokens, batch: int, seq_len: int, devices: int | None):
        tx = jr.clipped(optax.adam(1e-3), max_norm=5.0)
        mesh = None if devices is None else jr.parallel.data_mesh(devices)
        k_init, k_drop = jax.random.split(jax.random.key(0))
        state = jr.tbptt.init_state(model.init(k_init), tx, jr.lm.train_carry(model, batch, k_drop))
        if mesh is not None:
            state = jr.parallel.shard_state(state, mesh)
        self.step = jr.tbptt.make_step(jr.lm.loss_fn(model), tx, mesh=mesh)
        self.batches = jr.data.offset_batches(tokens, batch, seq_len)
        self.tokens_per_step = batch * seq_len
        self.rates: list[float] = []
        self.info = {"devices": 1 if devices is None else devices, "mesh": devices is not None, "batch": batch,
                     "rows_per_device": batch // (1 if devices is None else devices)}
        t0 = time.perf_counter()
        for _ in range(2):  # compilation, then one more step to settle
            state, metrics = self.step(state, *next(self.batches))
        jax.block_until_ready(metrics["loss"])
        self.info["first_two_steps_s"] = time.perf_counter() - t0
        self.state, self.loss = state, float(metrics["loss"])

    def time(self, steps: int) -> None:
        """Time ``steps`` steps, the loss fetched at the end."""
        state = self.state
        t0 = time.perf_counter()
        for _ in range(steps):
            state, metrics = self.step(state, *next(self.batches))
        self.loss = float(metrics["loss"])
        self.rates.append(steps * self.tokens_per_step / (time.perf_counter() - t0))
        self.state = state

    def result(self) -> dict:
        assert np.isfinite(self.loss), self.loss
        assert self.step.trace_count == 1, self.step.trace_count
        return {**self.info, "tokens_per_s": statistics.median(self.rates), "tokens_per_s_all": self.rates,
                "final_loss": self.loss}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller model and fewer steps (about a minute)")
    p.add_argument("--corpus", default=None, help="text file (default: the shared Shakespeare file or stdlib source)")
    p.add_argument("--devices", default=None, help="device counts to measure (default 1,2,4,8; 1,2 with --quick)")
    p.add_argument("--out", default=None, help="output folder (default: benchmarks/results; a new temporary folder with --quick)")
    args = p.parse_args(argv)
    args.out = output_dir(args.out, args.quick, "scaling")

    if args.quick:
        hidden, embed, seq_len, batch, per_device, steps, repeats = 128, 32, 32, 32, 4, 10, 3
    else:
        hidden, embed, seq_len, batch, per_device, steps, repeats = 256, 64, 64, 64, 8, 10, 5
    if args.devices is None:
        args.devices = "1,2" if args.quick else "1,2,4,8"
    counts = [int(c) for c in args.devices.split(",")]
    counts = [c for c in counts if c <= jax.device_count()]
    header = machine_info()
    tokens, vocab, source = load_tokens(args.corpus, 400_000)
    model = jr.lm.language_model(vocab, cell="lstm", hidden=hidden, embed=embed)
    config = {"cell": "lstm", "hidden": hidden, "embed": embed, "vocab": vocab, "seq_len": seq_len,
              "strong_batch": batch, "weak_rows_per_device": per_device, "timed_steps": steps, "repeats": repeats,
              "corpus": source, "tokens": int(len(tokens)), "optimizer": "adam 1e-3, clip 5"}
    print(json.dumps({"machine": header, "config": config}, indent=1), flush=True)

    # Compile every configuration first, then time them round-robin, so that a change in
    # the machine's load during the run spreads over all of them.
    runs = [("strong", Run(model, tokens, batch, seq_len, n)) for n in [None] + counts]
    runs += [("weak", Run(model, tokens, per_device * n, seq_len, n)) for n in counts]
    for r in range(repeats):
        for _, run in runs:
            run.time(steps)
        print(f"repeat {r + 1}/{repeats}: " + ", ".join(f"{run.rates[-1]:,.0f}" for _, run in runs), flush=True)
    results = {"strong": [], "weak": []}
    for regime, run in runs:
        r = run.result()
        results[regime].append(r)
        print(f"{regime:6s} devices={r['devices']} mesh={r['mesh']!s:5s} B={r['batch']:4d} "
              f"({r['rows_per_device']} rows/device): {r['tokens_per_s']:,.0f} tokens/s "
              f"(first two steps {r['first_two_steps_s']:.1f} s)", flush=True)

    name = "scaling_quick" if args.quick else "scaling"
    os.makedirs(args.out, exist_ok=True)
    header["load_average_at_end"] = os.getloadavg()
    with open(os.path.join(args.out, name + ".json"), "w") as f:
        json.dump({"machine": header, "config": config, "results": results}, f, indent=1)
        f.write("\n")
    with open(os.path.join(args.out, name + ".md"), "w") as f:
        f.write(render(header, config, results))
    print(f"wrote {os.path.join(args.out, name)}.{{md,json}}")
    return 0


def render(header: dict, config: dict, results: dict) -> str:
    v = header["versions"]
    lines = [
        "# Data-parallel TBPTT throughput vs device count",
        "",
        f"- machine: {header['cpu']}, {header['cores']} cores, backend `{header['jax_backend']}` "
        f"with {len(header['devices'])} devices (`XLA_FLAGS={header['XLA_FLAGS']}`)",
        f"- load average at start / end: {header['load_average_1_5_15']} / {header['load_average_at_end']} "
        "(the machine was shared with other jobs)",
        f"- python {v['python']}, jax {v['jax']}, jaxlib {v.get('jaxlib')}, optax {v['optax']}, torch {v['torch']}",
        f"- date: {header['date']}",
        f"- model: char-level {config['cell'].upper()} {config['hidden']}, embed {config['embed']}, vocabulary "
        f"{config['vocab']}, T = {config['seq_len']}, {config['optimizer']}; corpus {config['corpus']}",
        f"- timing: median of {config['repeats']} rounds of {config['timed_steps']} steps after 2 warm-up steps, "
        "the configurations timed in turn each round; "
        "`jr.tbptt.make_step(loss_fn, tx, mesh=jr.parallel.data_mesh(n))`",
        "",
    ]
    if header["jax_backend"] == "cpu":
        lines += [
            "**Read this as overhead, not speed-up.** The devices are CPU devices forced by "
            "`--xla_force_host_platform_device_count`; they share the same "
            f"{header['cores']} cores, so more devices cannot run faster. The drop from the "
            "no-mesh baseline shows what the sharded step costs here: the gradient all-reduce "
            "between devices, per-device work too small to keep the cores busy, and the "
            "placement of every batch. The machine was shared with other jobs, so single rounds vary "
            "(the min - max column); compare medians, and only large ratios.",
            "",
        ]
    for regime, title in (("strong", f"Strong scaling: global batch {config['strong_batch']}"),
                          ("weak", f"Weak scaling: {config['weak_rows_per_device']} rows per device")):
        rows = results[regime]
        base = rows[0]["tokens_per_s"]
        lines += [f"## {title}", "",
                  "| devices | mesh | global batch | rows/device | tokens/s (median) | min - max over rounds | "
                  "vs first row | first two steps (s) |",
                  "|---:|:---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            lo, hi = min(r["tokens_per_s_all"]), max(r["tokens_per_s_all"])
            lines.append(f"| {r['devices']} | {'yes' if r['mesh'] else 'no'} | {r['batch']} | {r['rows_per_device']} | "
                         f"{r['tokens_per_s']:,.0f} | {lo:,.0f} - {hi:,.0f} | {r['tokens_per_s'] / base:.2f} | "
                         f"{r['first_two_steps_s']:.1f} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

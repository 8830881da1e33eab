"""Long streams: the peak memory of TBPTT training does not grow with the stream length.

Each run trains a character-level LSTM language model (vocabulary 64, embedding 16,
hidden 64, batch B=32 streams, segments of T=64 tokens) with ``jr.tbptt.make_step`` over
``jr.data.offset_batches`` of a stream of ``N`` random token ids, run by
``jr.train.fit`` (with its per-step history and a checkpoint every 200 steps), in a
fresh Python process, 3 times each (the median is compared: the peak includes the
compilations, whose memory varies by a few percent between identical runs, and the
spread between identical runs is reported). The process's peak resident memory is ``ru_maxrss`` of
``resource.getrusage`` read at the end of the run (Linux: kibibytes), so the import of
JAX, the compilations and everything the loop keeps are included. The resident memory is
also sampled every 200 steps during the run (``/proc/self/statm``): flat within a run
means nothing accumulates per step.

Every ``N`` trains the same number of steps (``N = 10^5`` for 30 epochs, ``N = 10^6``
for 3): the resident memory of a process settles over its first few hundred steps, so
runs of different lengths would compare the number of steps, not the stream length.

What grows with ``N`` by design: the token array itself (``4·N`` bytes as int32).
Nothing else may: the batches are slices of the stream made on the host per segment,
the carry is ``(B, H)``, and the loop keeps no device arrays from earlier steps.

Usage::

    python benchmarks/long_stream.py            # N = 10^5 x 30 epochs, 10^6 x 3 epochs; each 3 times (about 3 minutes)
    python benchmarks/long_stream.py --quick    # N = 10^4 x 20 epochs, 10^5 x 2 epochs; once (about 30 s)

Writes ``long_stream.{md,json}`` (``long_stream_quick.*`` with ``--quick``) to ``--out``
(default ``benchmarks/results``; a new temporary folder with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import command_line, header_markdown, machine_info, output_dir, write_results  # noqa: E402

VOCAB, EMBED, HIDDEN, BATCH, SEQ_LEN = 64, 16, 64, 32, 64
# (tokens, epochs): the same number of steps for each stream length
FULL, QUICK = ((10**5, 30), (10**6, 3)), ((10**4, 20), (10**5, 2))


def _rss_mib() -> float:
    """The resident memory now (Linux ``/proc/self/statm``), MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class _Sampled:
    """The batches, with the resident memory recorded every ``every`` batches read."""

    def __init__(self, batches, every: int = 200):
        self.batches, self.every, self.read, self.samples = batches, every, 0, []

    def __iter__(self):
        return self

    def __next__(self):
        self.read += 1
        if self.read % self.every == 0:
            self.samples.append(round(_rss_mib(), 1))
        return next(self.batches)

    def state_dict(self):
        return self.batches.state_dict()


def child(n: int, epochs: int) -> dict:
    """Train over a stream of ``n`` tokens for ``epochs`` epochs; return the measurements."""
    import resource
    import time

    import jax
    import numpy as np
    import optax

    import jaxrnn as jr

    tokens = np.random.default_rng(0).integers(0, VOCAB, n, dtype=np.int32)  # no int64 temporary
    model = jr.lm.language_model(VOCAB, "lstm", hidden=HIDDEN, embed=EMBED)
    tx = jr.clipped(optax.adam(2e-3), 5.0, skip_nonfinite=True)
    state = jr.tbptt.init_state(model.init(jax.random.key(0)), tx, jr.lm.train_carry(model, BATCH, 0))
    batches = _Sampled(jr.data.offset_batches(tokens, BATCH, SEQ_LEN, epochs=epochs))
    steps = len(batches.batches)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        result = jr.train.fit(jr.tbptt.make_step(jr.lm.loss_fn(model), tx), state, batches, num_steps=steps,
                              checkpoint=os.path.join(d, "ckpt.safetensors"), checkpoint_every=200,
                              progress=False, log=None)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    losses = [v for v in result.history["train_loss"][-50:] if v is not None]
    return {"tokens": n, "epochs": epochs, "steps": result.step, "stopped": result.stopped,
            "seconds": seconds, "tokens_per_s": result.step * BATCH * SEQ_LEN / seconds,
            "peak_rss_mib": peak / 1024, "rss_before_training_mib": before / 1024,
            "token_array_mib": tokens.nbytes / 2**20, "final_train_loss": sum(losses) / len(losses),
            "rss_every_200_steps_mib": batches.samples}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="N = 10^4 x 20 epochs, 10^5 x 2 epochs, once")
    p.add_argument("--epochs", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--repeats", type=int, default=None, help="fresh processes per N (default 3, 1 with --quick)")
    p.add_argument("--out", default=None, help="output folder (default: benchmarks/results; a new temporary folder with --quick)")
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(args.child, args.epochs)))
        return 0

    args.out = output_dir(args.out, args.quick, "long_stream")
    repeats = args.repeats or (1 if args.quick else 3)
    runs = []
    sizes = QUICK if args.quick else FULL
    for n, epochs in [size for size in sizes for _ in range(repeats)]:
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", str(n), "--epochs", str(epochs)],
                             capture_output=True, text=True, check=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = runs[-1]
        print(f"N = {n:>9,} x {epochs} epochs: {r['steps']:>6} steps in {r['seconds']:6.1f} s, "
              f"peak RSS {r['peak_rss_mib']:7.1f} MiB "
              f"(before training {r['rss_before_training_mib']:.1f} MiB; during: {r['rss_every_200_steps_mib']})",
              flush=True)
    small, large = runs[0], runs[-1]
    peaks = {n: [r["peak_rss_mib"] for r in runs if r["tokens"] == n] for n in (small["tokens"], large["tokens"])}
    med = {n: statistics.median(v) for n, v in peaks.items()}
    growth = med[large["tokens"]] / med[small["tokens"]] - 1.0
    flat = abs(growth) <= 0.05
    spread = max(max(v) / min(v) - 1.0 for v in peaks.values())  # between identical runs: the noise
    verdict = (f"the median peak RSS at N = {large['tokens']:,} ({med[large['tokens']]:.1f} MiB) is {growth:+.1%} of "
               f"that at N = {small['tokens']:,} ({med[small['tokens']]:.1f} MiB), {'within' if flat else 'OUTSIDE'} "
               f"5%, for {large['tokens'] // small['tokens']}x the stream length and the same number of steps "
               f"({repeats} fresh process(es) per N; identical runs differ by up to {spread:.1%})")
    samples = large["rss_every_200_steps_mib"]
    if len(samples) >= 2:
        verdict += (f"; within the N = {large['tokens']:,} run the resident memory went from {samples[0]} MiB at step "
                    f"200 to {samples[-1]} MiB at step {200 * len(samples)}")
    print(verdict)

    info = machine_info()
    md = header_markdown("Long streams: peak memory of TBPTT training vs the stream length", info, command_line())
    md += (f"\nLSTM language model (vocabulary {VOCAB}, embedding {EMBED}, hidden {HIDDEN}), B={BATCH} streams, "
           f"T={SEQ_LEN}, over N random tokens for " + ", ".join(f"{e} epochs at N = {n:,}" for n, e in sizes)
           + " (the same number of steps) with `jr.train.fit` (checkpoint every 200 steps); each run in a fresh "
           "process; peak RSS = `ru_maxrss` at the end of the run.\n\n")
    md += ("| N tokens | epochs | steps | seconds | tokens/s | peak RSS (MiB) | RSS before training (MiB) | token array (MiB) "
           "| RSS every 200 steps (MiB) |\n")
    md += "|---:|---:|---:|---:|---:|---:|---:|---:|---|\n"
    for r in runs:
        md += (f"| {r['tokens']:,} | {r['epochs']} | {r['steps']:,} | {r['seconds']:.1f} | {r['tokens_per_s']:,.0f} | "
               f"{r['peak_rss_mib']:.1f} | {r['rss_before_training_mib']:.1f} | {r['token_array_mib']:.2f} | "
               f"{', '.join(str(v) for v in r['rss_every_200_steps_mib']) or '-'} |\n")
    md += f"\nResult: {verdict}.\n"
    name = "long_stream_quick" if args.quick else "long_stream"
    md_path, _ = write_results(name, md, {"machine": info, "sizes": sizes, "repeats": repeats, "runs": runs,
                                          "median_growth": growth, "spread_between_identical_runs": spread,
                                          "flat_within_5_percent": flat}, args.out)
    print(f"wrote {md_path}")
    return 0 if flat else 1


if __name__ == "__main__":
    sys.exit(main())

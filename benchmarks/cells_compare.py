"""Every built-in cell on the same character-level language model: validation bits/char and speed.

For each name in ``jr.cells.BUILTIN`` (so a cell added there joins the table), one run
of :func:`jaxrnn.train.fit` with a TBPTT step (:func:`jaxrnn.tbptt.make_step` over
:func:`jaxrnn.lm.loss_fn`) at the settings of ``lm_compare.py``: the Shakespeare corpus
(``../shared/corpora/shakespeare.txt``; the standard library's source where it is
missing), character level, one layer of hidden size 256 (``lstmp``: cell state 256,
projection to 128, the default ``H // 2``), embedding 64, batch 32, segments of 64
steps, Adam 2e-3, global-norm clipping at 5, 1500 steps, validation every 250 steps.
The runs are one after the other in one process, each from the same seed.

Recorded per cell: parameter count, final validation bits per character (the whole
validation split, carried across segments, :func:`jaxrnn.lm.evaluate`), training
tokens per second after the first step (which includes compilation; the steps are
timed by ``fit`` with the loss read back every 10 steps), compile-and-first-step
seconds, and the validation curve.

Usage::

    python benchmarks/cells_compare.py                   # every cell, 1500 steps each
    python benchmarks/cells_compare.py --cells lstm mgu  # some cells
    python benchmarks/cells_compare.py --quick           # smoke run: 20k characters, hidden 16, 6 steps,
                                                         # one validation at the end

Writes ``NAME.md``, ``NAME.json`` and ``NAME.png`` (bits/char and tokens/s per cell)
to ``--out`` (default ``benchmarks/results``; a temporary folder with ``--quick``),
with ``NAME`` = ``cells_compare`` (``cells_compare_quick`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _common import command_line, corpus_file, header_markdown, machine_info, output_dir, write_results  # noqa: E402


def run_cell(name: str, corpus, s: dict) -> dict:
    """Train the LM with cell ``name`` for ``s["steps"]`` steps; its numbers."""
    import jax
    import numpy as np
    import optax

    import jaxrnn as jr

    model = jr.lm.language_model(corpus.vocab.size, cell=name, hidden=s["hidden"], embed=s["embed"])
    tx = jr.clipped(optax.adam(s["lr"]), s["clip"])
    k_init, k_drop = jax.random.split(jax.random.key(s["seed"]))
    params = model.init(k_init)
    n_params = int(sum(np.prod(a.shape) for a in jax.tree.leaves(params)))
    state = jr.tbptt.init_state(params, tx, jr.lm.train_carry(model, s["batch_size"], k_drop))
    step = jr.tbptt.make_step(jr.lm.loss_fn(model), tx)
    batches = jr.data.offset_batches(corpus.train, s["batch_size"], s["seq_len"])

    def evaluate(st):
        return jr.lm.evaluate(model, st.params, corpus.valid, s["batch_size"], s["seq_len"])

    t0 = time.perf_counter()
    result = jr.train.fit(step, state, batches, num_steps=s["steps"], evaluate=evaluate,
                          eval_every=s["eval_every"], progress=False, log=None)
    wall = time.perf_counter() - t0
    if result.stopped != "done":
        raise SystemExit(f"{name}: training stopped early ({result.stopped}): {result.message}")
    e = result.elapsed
    later = e["train_seconds"] - e["first_step_seconds"]
    tokens = (s["steps"] - 1) * s["batch_size"] * s["seq_len"]
    h = result.history
    val_bpc = [None if v is None else v / math.log(2) for v in h["val_loss"]]
    return {"cell": name, "proj_size": model.proj_size, "output_size": int(model.net.hidden_size),
            "parameters": n_params, "val_bpc": val_bpc[-1], "tokens_per_s": tokens / later if later > 0 else None,
            "first_step_seconds": e["first_step_seconds"], "train_seconds": e["train_seconds"],
            "eval_seconds": e["eval_seconds"], "wall_seconds": wall, "val_steps": h["val_steps"], "val_bpc_curve": val_bpc}


def plot(path: str, runs: list, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["cell"] for r in runs]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    a1.bar(names, [r["val_bpc"] for r in runs], color="tab:blue")
    a1.set_ylabel("validation bits per character (lower is better)")
    a2.bar(names, [r["tokens_per_s"] or 0.0 for r in runs], color="tab:orange")
    a2.set_ylabel("training tokens / s (after the first step)")
    for ax in (a1, a2):
        ax.tick_params(axis="x", rotation=45)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(runs: list, s: dict, info: dict) -> str:
    lines = [header_markdown("Every built-in cell on a character-level language model", info, command_line()), ""]
    lines.append(f"Corpus `{s['corpus']}` ({s['corpus_chars']:,} characters, vocabulary {s['vocab']}); one layer, "
                 f"hidden {s['hidden']}, embed {s['embed']}, batch {s['batch_size']} x {s['seq_len']} steps, Adam "
                 f"{s['lr']}, clip {s['clip']}, {s['steps']} steps, seed {s['seed']}. Tokens/s counts the training "
                 "steps after the first (which compiles); all runs in one process, one after the other.")
    lines += ["", "| cell | parameters | validation bits/char | training tokens/s | compile + first step (s) |",
              "|---|---:|---:|---:|---:|"]
    for r in runs:
        name = r["cell"] + (f" (P={r['proj_size']})" if r["proj_size"] else "")
        tps = f"{r['tokens_per_s']:,.0f}" if r["tokens_per_s"] else "n/a"
        lines.append(f"| {name} | {r['parameters']:,} | {r['val_bpc']:.3f} | {tps} | {r['first_step_seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--corpus", default=None, help="text file (default ../shared/corpora/shakespeare.txt)")
    p.add_argument("--cells", nargs="+", default=None, metavar="NAME", help="cells to run (default: every BUILTIN)")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--embed", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--clip", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="output folder (default: benchmarks/results; a temporary one with --quick)")
    p.add_argument("--quick", action="store_true", help="smoke run: 20k characters, hidden 16, embed 8, batch 4 x 16, "
                   "6 steps, one validation at the end")
    args = p.parse_args(argv)
    out = output_dir(args.out, args.quick, "cells_compare")
    name = "cells_compare" + ("_quick" if args.quick else "")

    import jaxrnn as jr

    cells = args.cells or list(jr.cells.BUILTIN)
    unknown = sorted(set(cells) - set(jr.cells.BUILTIN))
    if unknown:
        p.error(f"--cells: unknown {unknown}; the cells are {list(jr.cells.BUILTIN)}")
    path = corpus_file(args.corpus)
    s = {"corpus": path, "hidden": args.hidden, "embed": args.embed, "batch_size": args.batch_size,
         "seq_len": args.seq_len, "steps": args.steps, "eval_every": args.eval_every, "lr": args.lr,
         "clip": args.clip, "seed": args.seed}
    if args.quick:
        with open(path, encoding="utf-8") as f:
            text = f.read(20_000)
        path = os.path.join(tempfile.mkdtemp(prefix="jaxrnn_cells_compare_"), "quick_corpus.txt")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        s.update(corpus=path, hidden=16, embed=8, batch_size=4, seq_len=16, steps=6, eval_every=None)
    corpus = jr.corpus.load_corpus(s["corpus"], level="char")
    with open(s["corpus"], encoding="utf-8") as f:
        s["corpus_chars"] = len(f.read())
    s["vocab"] = corpus.vocab.size
    info = machine_info()
    runs = []
    for cell in cells:
        r = run_cell(cell, corpus, s)
        print(f"{cell:>9}: val {r['val_bpc']:.3f} bits/char, {r['tokens_per_s'] or float('nan'):,.0f} tokens/s, "
              f"first step {r['first_step_seconds']:.1f} s, {r['wall_seconds']:.0f} s in all", flush=True)
        runs.append(r)
    info["load_average_1_5_15_at_end"] = [round(v, 2) for v in os.getloadavg()]
    md_path, _ = write_results(name, markdown(runs, s, info), {"machine": info, "settings": s, "runs": runs}, out)
    plot(os.path.join(out, f"{name}.png"), runs,
         f"{s['steps']} steps, hidden {s['hidden']}, batch {s['batch_size']} x {s['seq_len']}")
    print(f"wrote {md_path} and {name}.json, {name}.png beside it")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

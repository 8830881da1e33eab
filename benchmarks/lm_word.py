"""A word-level language model in the style of the PTB "medium" setting, with ``jaxrnn train``.

There is no Penn Treebank here, so the script first writes a corpus in its format from
``../shared/corpora/shakespeare.txt``, the way the PTB files were made: every non-empty
line becomes a sentence, lower-cased, words only (letters with inner apostrophes; numbers
become ``N``), punctuation dropped; the 10,000 most frequent training words are the
vocabulary (``<unk>`` counted among them) and every other word is written as ``<unk>``;
the lines are split by position, 80% / 10% / 10%, into ``ptb.train.txt``,
``ptb.valid.txt`` and ``ptb.test.txt``.

It then runs the command line on it::

    jaxrnn train --corpus WORK/ptb --format ptb --level word --layers 2 --hidden 256 --embed 256
                 --dropout 0.5 --batch-size 20 --seq-len 35 --optimizer adam --lr 2e-3 --clip 5 ...

PTB medium (Zaremba et al., 2014) is a 2-layer LSTM of 650 units, dropout 0.5, 35-step
TBPTT, batch 20, clipping at 5, SGD with learning-rate decay over 39 epochs. This run
keeps the architecture and the truncation but is scaled to about ten minutes on a 2-core
CPU (``--hidden``, ``--steps``), with Adam instead of the long SGD schedule.

Usage::

    python benchmarks/lm_word.py            # the recorded run
    python benchmarks/lm_word.py --quick    # a smoke run (under a minute of training)

Writes ``NAME.md`` / ``NAME.json`` and ``NAME/`` (metrics.json, curves.png, sample.txt,
log.txt) under ``--out`` (default ``benchmarks/results``, ``NAME = lm_word_shakespeare``,
``_quick`` appended with ``--quick``).
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import re
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _common import ROOT, corpus_file, machine_info, output_dir  # noqa: E402
from lm_compare import run_logged  # noqa: E402

WORD = re.compile(r"[a-z]+(?:'[a-z]+)*|[0-9]+")


def make_ptb(corpus: str, dest: str, vocab_size: int = 10_000, limit_lines: int | None = None) -> dict:
    """Write ptb.{train,valid,test}.txt built from a plain-text file; return statistics."""
    with open(corpus, encoding="utf-8") as f:
        lines = f.read().splitlines()
    sentences = []
    for line in lines:
        words = ["N" if w.isdigit() else w for w in WORD.findall(line.lower())]
        if words:
            sentences.append(words)
    if limit_lines:
        sentences = sentences[:limit_lines]
    n = len(sentences)
    a, b = int(n * 0.8), int(n * 0.9)
    splits = {"train": sentences[:a], "valid": sentences[a:b], "test": sentences[b:]}
    counts = collections.Counter(w for s in splits["train"] for w in s)
    keep = {w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: vocab_size - 1]}
    os.makedirs(dest, exist_ok=True)
    stats = {"sentences": n, "vocabulary": len(keep) + 1}
    for name, sents in splits.items():
        words = [[w if w in keep else "<unk>" for w in s] for s in sents]
        with open(os.path.join(dest, f"ptb.{name}.txt"), "w", encoding="utf-8") as f:
            for s in words:
                f.write(" " + " ".join(s) + " \n")
        total = sum(len(s) + 1 for s in words)  # + <eos>
        unk = sum(w == "<unk>" for s in words for w in s)
        stats[name] = {"sentences": len(sents), "tokens_with_eos": total, "unk_rate": unk / max(total, 1)}
    return stats


def render(args, name: str, dest: str, summary_path: str) -> None:
    """Write NAME.md (and the results into NAME.json) from the saved summary and metrics."""
    with open(summary_path) as f:
        summary = json.load(f)
    with open(os.path.join(dest, "metrics.json")) as f:
        m = json.load(f)
    summary["results"] = {k: m[k] for k in ("val_loss", "val_perplexity", "test_loss", "test_perplexity", "steps",
                                            "tokens", "tokens_per_s", "train_seconds", "eval_seconds",
                                            "wall_seconds", "parameters", "vocab_size")}
    with open(summary_path, "w") as f:
        json.dump(summary, f, indent=2, sort_keys=True)
    info, stats, proc, cfg = summary["machine"], summary["corpus"], summary["process"], m["config"]
    v = info["versions"]
    epochs = m["tokens"] / stats["train"]["tokens_with_eos"]
    hist = m["history"]
    md = [
        f"# Word-level LSTM language model, PTB-medium style ({name})",
        "",
        f"- Machine: {info['cpu']}, {info['cores']} cores ({info['platform']}), shared with other jobs "
        f"(1-minute load average {proc['load_average_1min_at_start']:.1f} at the start, "
        f"{proc['load_average_1min_at_end']:.1f} at the end).",
        f"- Versions: Python {v['python']}, jax {v['jax']}, jaxlib {v['jaxlib']}, optax {v['optax']}. Date: {info['date']}.",
        f"- Corpus: `{os.path.relpath(os.path.abspath(args.corpus), ROOT)}` rewritten in Penn-Treebank format by "
        f"`benchmarks/lm_word.py`: {stats['sentences']:,} non-empty lines as sentences, lower case, words only, "
        f"numbers as N; the {stats['vocabulary']:,} most frequent training words (<unk> included) are kept, the "
        f"rest written as <unk>; the reader adds <eos>, so the model's vocabulary is {m['vocab_size']:,}. "
        f"Tokens (with <eos>) train / valid / test: {stats['train']['tokens_with_eos']:,} / "
        f"{stats['valid']['tokens_with_eos']:,} / {stats['test']['tokens_with_eos']:,}; <unk> rate "
        f"{100 * stats['train']['unk_rate']:.1f}% / {100 * stats['valid']['unk_rate']:.1f}% / "
        f"{100 * stats['test']['unk_rate']:.1f}%.",
        f"- Command: `{summary['command']}`.",
        f"- Model: 2-layer LSTM, hidden = embed = {cfg['hidden']}, dropout {cfg['dropout']} (embeddings, between the "
        f"layers, before the output){', tied weights' if cfg['tie'] else ''}; {m['parameters']:,} parameters. "
        f"TBPTT 35 steps, batch 20, Adam {cfg['lr']}, global-norm clip 5, {m['steps']} steps "
        f"({epochs:.2f} epochs of the training split).",
        "",
        "| | value |",
        "|---|---|",
        f"| validation perplexity | {m['val_perplexity']:.2f} |",
        f"| test perplexity | {m['test_perplexity']:.2f} |",
        f"| validation / test loss (nats/word) | {m['val_loss']:.4f} / {m['test_loss']:.4f} |",
        f"| training tokens/s | {m['tokens_per_s']:,.0f} |",
        f"| time in training steps / validation and test (s) | {m['train_seconds']:.1f} / {m['eval_seconds']:.1f} |",
        f"| wall time (s) | {m['wall_seconds']:.1f} |",
        "",
        "Validation perplexity during training: "
        + ", ".join(f"step {s}: {math.exp(l):.1f}" for s, l in zip(hist["val_steps"], hist["val_loss"])) + ".",
        "",
        f"Curves: `{name}/curves.png`; a sample (temperature 0.8): `{name}/sample.txt`; the run's output: "
        f"`{name}/log.txt`. The perplexities are not comparable with published PTB numbers (another corpus, a "
        "much shorter run).",
        "",
    ]
    with open(os.path.join(args.out, name + ".md"), "w") as f:
        f.write("\n".join(md))
    print("\n".join(md))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--corpus", default=None,
                   help="plain-text file (default: ../shared/corpora/shakespeare.txt, else the Python standard library's source)")
    p.add_argument("--hidden", type=int, default=256, help="hidden = embed size of both layers")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--dropout", type=float, default=0.5)
    p.add_argument("--tie", action="store_true", help="tie the output weights to the embedding")
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--out", default=None, help="output folder (default: benchmarks/results; a new temporary folder with --quick)")
    p.add_argument("--name", default="lm_word_shakespeare")
    p.add_argument("--work", default=os.path.join("/tmp", "jaxrnn_lm_word"))
    p.add_argument("--quick", action="store_true", help="first 20,000 lines, hidden 64, 40 steps")
    p.add_argument("--report-only", action="store_true", help="rewrite NAME.md from the saved results")
    args = p.parse_args(argv)
    args.out = output_dir(args.out, args.quick, "lm_word")
    args.corpus = corpus_file(args.corpus)
    name = args.name + ("_quick" if args.quick else "")
    limit = None
    if args.quick:
        limit, args.hidden, args.steps, args.eval_every = 20_000, 64, 40, 20

    ptb_dir = os.path.join(args.work, name + "_ptb")
    run_dir = os.path.join(args.work, name + "_run")
    if not args.report_only:
        stats = make_ptb(os.path.abspath(args.corpus), ptb_dir, limit_lines=limit)
        print(f"wrote {ptb_dir}: {json.dumps(stats)}", flush=True)
        shutil.rmtree(run_dir, ignore_errors=True)
    dest = os.path.join(args.out, name)
    os.makedirs(dest, exist_ok=True)
    settings = ["--corpus", ptb_dir, "--format", "ptb", "--level", "word", "--cell", "lstm", "--layers", "2",
                "--hidden", str(args.hidden), "--embed", str(args.hidden), "--dropout", str(args.dropout),
                "--batch-size", "20", "--seq-len", "35", "--steps", str(args.steps), "--optimizer", "adam",
                "--lr", str(args.lr), "--clip", "5", "--seed", "0", "--eval-every", str(args.eval_every)]
    if args.tie:
        settings.append("--tie")
    summary_path = os.path.join(args.out, name + ".json")
    if not args.report_only:
        info = machine_info()
        proc = run_logged([sys.executable, "-m", "jaxrnn.cli", "train", *settings, "--out", run_dir, "--no-progress"],
                          os.path.join(dest, "log.txt"))
        for fname in ("metrics.json", "curves.png", "sample.txt"):
            shutil.copy(os.path.join(run_dir, fname), os.path.join(dest, fname))
        summary = {"machine": info, "corpus": stats, "command": "jaxrnn train " + " ".join(settings), "process": proc}
        with open(summary_path, "w") as f:
            json.dump(summary, f, indent=2, sort_keys=True)
    render(args, name, dest, summary_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

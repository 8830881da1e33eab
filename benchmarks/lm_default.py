"""Time ``jaxrnn train`` with no arguments (the default corpus and settings) and record it.

The default run reads the Python standard library's source (character level, see
``jaxrnn.corpus.load_default``) and trains a 1-layer LSTM (hidden 256, embed 64, batch
32 x 64, Adam 2e-3, clip 5) for 800 steps. This script runs exactly ``jaxrnn train
--out DIR`` (plus ``--no-progress``), measures the wall time of the whole command, and
writes ``NAME.md`` / ``NAME.json`` and ``NAME/`` (metrics.json, curves.png, sample.txt,
log.txt) under ``--out``.

Usage::

    python benchmarks/lm_default.py            # the default run (a few minutes on 2 cores)
    python benchmarks/lm_default.py --quick    # --steps 20, for a smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _common import machine_info, output_dir  # noqa: E402
from lm_compare import run_logged  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--out", default=None, help="output folder (default: benchmarks/results; a new temporary folder with --quick)")
    p.add_argument("--name", default="lm_default")
    p.add_argument("--work", default=os.path.join("/tmp", "jaxrnn_lm_default"))
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    args.out = output_dir(args.out, args.quick, "lm_default")
    name = args.name + ("_quick" if args.quick else "")
    run_dir = os.path.join(args.work, name)
    shutil.rmtree(run_dir, ignore_errors=True)
    dest = os.path.join(args.out, name)
    os.makedirs(dest, exist_ok=True)
    cmd = [sys.executable, "-m", "jaxrnn.cli", "train", "--out", run_dir, "--no-progress"]
    if args.quick:
        cmd += ["--steps", "20"]
    info = machine_info()
    proc = run_logged(cmd, os.path.join(dest, "log.txt"))
    for fname in ("metrics.json", "curves.png", "sample.txt"):
        shutil.copy(os.path.join(run_dir, fname), os.path.join(dest, fname))
    with open(os.path.join(run_dir, "metrics.json")) as f:
        m = json.load(f)
    keys = ("val_loss", "val_perplexity", "val_bpc", "test_perplexity", "test_bpc", "steps", "tokens_per_s",
            "train_seconds", "first_step_seconds", "eval_seconds", "wall_seconds", "parameters", "vocab_size", "corpus")
    summary = {"machine": info, "command": "jaxrnn train", "process": proc, "results": {k: m[k] for k in keys}}
    with open(os.path.join(args.out, name + ".json"), "w") as f:
        json.dump(summary, f, indent=2, sort_keys=True)
    with open(os.path.join(run_dir, "sample.txt"), encoding="utf-8") as f:
        sample = f.read()
    v = info["versions"]
    md = [
        f"# `jaxrnn train` with no arguments ({name})",
        "",
        f"- Machine: {info['cpu']}, {info['cores']} cores ({info['platform']}), shared with other jobs "
        f"(1-minute load average {proc['load_average_1min_at_start']:.1f} at the start, "
        f"{proc['load_average_1min_at_end']:.1f} at the end).",
        f"- Versions: Python {v['python']}, jax {v['jax']}, jaxlib {v['jaxlib']}, optax {v['optax']}. Date: {info['date']}.",
        f"- Corpus: {m['corpus']}.",
        f"- Command: `jaxrnn train{' --steps 20' if args.quick else ''}` (the defaults: 1-layer LSTM 256, embed 64, "
        f"batch 32 x 64, Adam 2e-3, clip 5, {m['steps']} steps, 5 validations); {m['parameters']:,} parameters.",
        "",
        "| | value |",
        "|---|---|",
        f"| wall time of the whole command (s) | {proc['seconds']:.1f} |",
        f"| in training steps (first step, with compilation, included) / first step / validation and test (s) | "
        f"{m['train_seconds']:.1f} / {m['first_step_seconds']:.1f} / {m['eval_seconds']:.1f} |",
        f"| training tokens/s | {m['tokens_per_s']:,.0f} |",
        f"| validation bits/char (perplexity) | {m['val_bpc']:.3f} ({m['val_perplexity']:.2f}) |",
        f"| test bits/char (perplexity) | {m['test_bpc']:.3f} ({m['test_perplexity']:.2f}) |",
        "",
        "The sample it printed at the end (temperature 0.8, after a line break):",
        "",
        "```python",
        sample.rstrip("\n"),
        "```",
        "",
    ]
    with open(os.path.join(args.out, name + ".md"), "w") as f:
        f.write("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``jaxrnn train`` against the PyTorch reference on a character-level language model.

Runs, one after the other (never at the same time):

1. ``jaxrnn train`` (the command line, unmodified) on the corpus;
2. ``benchmarks/torch_lm_reference.py`` with the same settings (same model, data
   order, initialisation scheme, TBPTT with detached state, Adam, global-norm clipping);
3. optionally (``--speed-rounds R``) an interleaved throughput check: ``R`` rounds, each
   timing ``--speed-steps`` training steps (after 5 warm-up steps) of four variants in
   fresh processes, one after the other so that all see about the same machine load:
   jaxrnn and PyTorch with their default threading, and each pinned to one core (the
   probe process sets its CPU affinity to a single CPU before it starts any framework,
   so every thread it makes shares that core; PyTorch also gets
   ``torch.set_num_threads(1)``). The median tokens/s of each is reported, with the
   cores each variant kept busy (CPU seconds of all its threads / wall seconds). On a
   machine shared with other jobs, multi-threaded kernels can lose much more than
   one-core ones (a thread that waits at a barrier for a descheduled sibling), so the
   one-core variants tell the frameworks apart from the load.

   Pinning is what makes "one core" true: ``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false``
   (what this script used before 2026-11-22) leaves XLA:CPU 0.10.2's YNNPACK products
   on two threads; the process still kept 1.8 cores busy.

Default settings (the issue's): ``../shared/corpora/shakespeare.txt``, character level,
LSTM hidden 256, embed 64, batch 32, seq-len 64, Adam 2e-3, clip 5, 1500 steps,
validation every 250 steps.

Usage::

    python benchmarks/lm_compare.py                 # full comparison (tens of minutes on 2 cores)
    python benchmarks/lm_compare.py --quick         # smoke run: 300k characters, hidden 64, 20 steps
    python benchmarks/lm_compare.py --only report   # rebuild the report from saved runs

Writes to ``--out`` (default ``benchmarks/results``), with ``NAME`` = ``--name``
(default ``lm_shakespeare_char``, ``_quick`` appended with ``--quick``):
``NAME.md`` / ``NAME.json`` (machine, versions, settings, both runs' numbers, checks),
``NAME_curves.png`` (both runs' training and validation curves), ``NAME_jax/`` and
``NAME_torch/`` (each run's ``metrics.json``; the jaxrnn run's ``curves.png`` and
``sample.txt``; and the log). Checkpoints stay in ``--work``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from _common import corpus_file, cpu_counters, machine_info, output_dir, pin_to_one_cpu  # noqa: E402


# --------------------------------------------------------------------------- helpers


def load() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = ROOT + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    return e


def run_logged(cmd: list[str], log_path: str) -> dict:
    """Run ``cmd``, tee its output into ``log_path``; return timing and load information."""
    start_load, t0 = load(), time.perf_counter()
    print("$ " + " ".join(cmd), flush=True)
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env(), cwd=ROOT)
        for line in proc.stdout:
            log.write(line)
            log.flush()
            print("  " + line.rstrip(), flush=True)
        rc = proc.wait()
    if rc != 0:
        raise SystemExit(f"command failed with status {rc}: {' '.join(cmd)} (log: {log_path})")
    return {"seconds": time.perf_counter() - t0, "load_average_1min_at_start": start_load,
            "load_average_1min_at_end": load()}


def settings_args(s: dict) -> list[str]:
    return ["--corpus", s["corpus"], "--cell", s["cell"], "--layers", str(s["layers"]), "--hidden", str(s["hidden"]),
            "--embed", str(s["embed"]), "--batch-size", str(s["batch_size"]), "--seq-len", str(s["seq_len"]),
            "--steps", str(s["steps"]), "--optimizer", "adam", "--lr", str(s["lr"]), "--clip", str(s["clip"]),
            "--seed", str(s["seed"]), "--eval-every", str(s["eval_every"])]


# --------------------------------------------------------------------------- speed probe


VARIANTS = {  # name -> (framework, extra environment); "_1core": pinned to one CPU
    "jax": ("jax", {}),
    "torch": ("torch", {}),
    "jax_1core": ("jax", {}),
    "torch_1core": ("torch", {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}),
}


def speed_probe(variant: str, s: dict, steps: int) -> dict:
    """``{"tokens_per_s", "cores_busy"}`` over ``steps`` training steps after 5 warm-up
    steps (run in its own process); ``cores_busy`` = CPU seconds of all the process's
    threads / wall seconds over the timed steps."""
    framework = VARIANTS[variant][0]
    if variant.endswith("_1core"):
        pin_to_one_cpu()
    warm = 5

    def cpu() -> float:
        c = cpu_counters()
        return c["user_s"] + c["kernel_s"]

    if framework == "jax":
        import jax
        import optax

        import jaxrnn as jr

        corpus = jr.corpus.load_corpus(s["corpus"], level="char")
        model = jr.lm.language_model(corpus.vocab.size, cell=s["cell"], hidden=s["hidden"], embed=s["embed"],
                                     layers=s["layers"])
        tx = jr.clipped(optax.adam(s["lr"]), s["clip"])
        k1, k2 = jax.random.split(jax.random.key(s["seed"]))
        state = jr.tbptt.init_state(model.init(k1), tx, jr.lm.train_carry(model, s["batch_size"], k2))
        step = jr.tbptt.make_step(jr.lm.loss_fn(model), tx)
        batches = jr.data.offset_batches(corpus.train, s["batch_size"], s["seq_len"])
        for _ in range(warm):
            state, m = step(state, *next(batches))
        jax.block_until_ready(m["loss"])
        t0, c0 = time.perf_counter(), cpu()
        for _ in range(steps):
            state, m = step(state, *next(batches))
        jax.block_until_ready(m["loss"])
        dt, dc = time.perf_counter() - t0, cpu() - c0
    else:
        import torch

        sys.path.insert(0, HERE)
        import torch_lm_reference as ref

        if variant.endswith("_1core"):
            torch.set_num_threads(1)
        torch.manual_seed(s["seed"])
        train, _, _, chars = ref.read_corpus(s["corpus"])
        model = ref.LanguageModel(len(chars), s["cell"], s["hidden"], s["embed"], s["layers"], 0.0)
        params = list(model.parameters())
        opt = torch.optim.Adam(params, lr=s["lr"])
        batches = ref.OffsetBatches(train, s["batch_size"], s["seq_len"])
        state = model.initial_state(s["batch_size"])

        def one(state):
            x, y = next(batches)
            state = ref.detach(state)
            logits, state = model(x, state)
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, len(chars)), y.reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, s["clip"])
            opt.step()
            float(loss.detach())
            return state

        for _ in range(warm):
            state = one(state)
        t0, c0 = time.perf_counter(), cpu()
        for _ in range(steps):
            state = one(state)
        dt, dc = time.perf_counter() - t0, cpu() - c0
    return {"tokens_per_s": steps * s["batch_size"] * s["seq_len"] / dt, "cores_busy": dc / dt}


# --------------------------------------------------------------------------- report


def plot(path: str, runs: dict, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    colors = {"jax": "tab:blue", "torch": "tab:orange"}
    names = {"jax": "jaxrnn", "torch": "PyTorch reference"}
    for fw, m in runs.items():
        h = m["history"]
        loss = np.asarray(h["train_loss"]) / math.log(2)
        w = max(1, min(50, len(loss) // 10))
        smooth = np.convolve(loss, np.ones(w) / w, mode="valid")
        ax.plot(np.asarray(h["train_steps"])[w - 1:], smooth, color=colors[fw], lw=1.0, alpha=0.6,
                label=f"{names[fw]}: training ({w}-step mean)")
        ax.plot(h["val_steps"], np.asarray(h["val_loss"]) / math.log(2), "o-", color=colors[fw],
                label=f"{names[fw]}: validation (final {m['val_bpc']:.3f})")
    ax.set_xlabel("step")
    ax.set_ylabel("bits per character")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(out: str, name: str, s: dict, info: dict) -> dict:
    runs = {}
    for fw in ("jax", "torch"):
        p = os.path.join(out, f"{name}_{fw}", "metrics.json")
        if os.path.exists(p):
            with open(p) as f:
                runs[fw] = json.load(f)
    if len(runs) < 2:
        raise SystemExit(f"report: need both runs' metrics.json under {out}/{name}_{{jax,torch}}/")
    j, t = runs["jax"], runs["torch"]
    rel_bpc = (j["val_bpc"] - t["val_bpc"]) / t["val_bpc"]
    checks = {
        "val_bpc_relative_difference": rel_bpc,
        "val_bpc_within_2_percent": abs(rel_bpc) <= 0.02,
        "tokens_per_s_ratio_full_runs": j["tokens_per_s"] / t["tokens_per_s"],
        "jax_faster_in_full_runs": j["tokens_per_s"] > t["tokens_per_s"],
    }
    speed = info.get("speed")
    if speed:
        med = {v: statistics.median(speed[v]) for v in VARIANTS if speed.get(v)}
        checks["interleaved_median_tokens_per_s"] = med
        checks["tokens_per_s_ratio_interleaved_median"] = med["jax"] / med["torch"]
        # Each round times jax and torch one after the other: the ratio within a round
        # cancels the machine's drift between rounds.
        checks["tokens_per_s_ratio_per_round"] = [a / b for a, b in zip(speed["jax"], speed["torch"])]
        checks["jax_faster_interleaved"] = med["jax"] > med["torch"]
        if "jax_1core" in med and "torch_1core" in med:
            checks["tokens_per_s_ratio_interleaved_median_1core"] = med["jax_1core"] / med["torch_1core"]
            checks["best_jax_over_best_torch"] = max(med["jax"], med["jax_1core"]) / max(med["torch"],
                                                                                          med["torch_1core"])
        busy = speed.get("cores_busy") or {}
        checks["interleaved_median_cores_busy"] = {v: statistics.median(busy[v]) for v in VARIANTS if busy.get(v)}
    summary = {"machine": info.get("machine") or machine_info(), "settings": s, "runs": {
        fw: {k: m.get(k) for k in ("val_loss", "val_bpc", "val_perplexity", "test_loss", "test_bpc", "test_perplexity",
                                   "steps", "tokens", "tokens_per_s", "tokens_per_s_after_first_step", "train_seconds",
                                   "first_step_seconds", "eval_seconds", "wall_seconds", "parameters", "versions")}
        for fw, m in runs.items()}, "torch_threads": t["versions"].get("torch_threads"), "process": info.get("process", {}), "speed": speed, "checks": checks}
    with open(os.path.join(out, f"{name}.json"), "w") as f:
        json.dump(summary, f, indent=2, sort_keys=True)
    title = (f"char LSTM {s['hidden']} (embed {s['embed']}), batch {s['batch_size']} x {s['seq_len']}, Adam {s['lr']}, "
             f"clip {s['clip']}, {s['steps']} steps: {os.path.basename(s['corpus'])}")
    plot(os.path.join(out, f"{name}_curves.png"), runs, title)

    mach = summary["machine"]
    v = mach["versions"]
    lines = [
        f"# jaxrnn vs PyTorch: character-level LSTM language model ({name})",
        "",
        f"- Machine: {mach['cpu']}, {mach['cores']} cores ({mach['platform']}); shared with other jobs "
        "(1-minute load average at the start and end of each run below).",
        f"- Versions: Python {v['python']}, jax {v['jax']}, jaxlib {v['jaxlib']}, optax {v['optax']}, "
        f"torch {v['torch']}, numpy {v['numpy']}. The full PyTorch run used {t['versions'].get('torch_threads')} "
        f"thread(s){' (set with --torch-threads)' if t['config'].get('threads') else ' (its default)'}; "
        "jaxrnn ran with XLA's default threading.",
        f"- Date: {mach['date']}.",
        f"- Corpus: `{os.path.relpath(s['corpus'], ROOT)}`, character level, split 80/10/10 by position.",
        f"- Settings (both): {s['cell'].upper()} hidden {s['hidden']}, embed {s['embed']}, {s['layers']} layer(s), "
        f"batch {s['batch_size']}, seq-len {s['seq_len']}, Adam lr {s['lr']}, global-norm clip {s['clip']}, "
        f"{s['steps']} steps, seed {s['seed']}, validation every {s['eval_every']} steps "
        f"(validation/test rows = batch size, state carried).",
        "- Same model, data order (offset batching), initialisation scheme (embedding N(0,1), W_ih N(0,1/in), "
        "orthogonal W_hh blocks, forget bias 1, output N(0,1/H)), TBPTT with detached state. "
        "Different random draws (JAX vs PyTorch generators).",
        "- Commands: `jaxrnn train " + " ".join(settings_args(s)) + "` and "
        "`python benchmarks/torch_lm_reference.py` with the same arguments; `python benchmarks/lm_compare.py` runs both.",
        "",
        "| | jaxrnn | PyTorch reference |",
        "|---|---|---|",
        f"| validation bits/char | {j['val_bpc']:.4f} | {t['val_bpc']:.4f} |",
        f"| validation perplexity | {j['val_perplexity']:.3f} | {t['val_perplexity']:.3f} |",
        f"| test bits/char | {j['test_bpc']:.4f} | {t['test_bpc']:.4f} |",
        f"| test perplexity | {j['test_perplexity']:.3f} | {t['test_perplexity']:.3f} |",
        f"| training tokens/s (all steps, incl. JAX compilation) | {j['tokens_per_s']:,.0f} | {t['tokens_per_s']:,.0f} |",
        f"| training tokens/s after the first step | {j['tokens_per_s_after_first_step']:,.0f} | "
        f"{t['tokens_per_s_after_first_step']:,.0f} |",
        f"| first step (s) | {j['first_step_seconds']:.2f} | {t['first_step_seconds']:.2f} |",
        f"| time in training steps (s) | {j['train_seconds']:.1f} | {t['train_seconds']:.1f} |",
        f"| time in validation/test (s) | {j['eval_seconds']:.1f} | {t['eval_seconds']:.1f} |",
        f"| wall time (s) | {j['wall_seconds']:.1f} | {t['wall_seconds']:.1f} |",
    ]
    proc = info.get("process", {})
    if proc:
        lines.append("| load average at start / end | " + " | ".join(
            f"{proc[fw]['load_average_1min_at_start']:.1f} / {proc[fw]['load_average_1min_at_end']:.1f}"
            if fw in proc else "n/a" for fw in ("jax", "torch")) + " |")
    if speed:
        med = checks["interleaved_median_tokens_per_s"]
        lines.append(f"| interleaved throughput, default threads: median of {len(speed['jax'])} rounds x "
                     f"{speed['steps']} steps{', run ' + speed['date'] if speed.get('date') else ''} "
                     f"(tokens/s) | {med['jax']:,.0f} | {med['torch']:,.0f} |")
        if "jax_1core" in med:
            lines.append(f"| interleaved throughput, each pinned to one core (tokens/s) | {med['jax_1core']:,.0f} | "
                         f"{med['torch_1core']:,.0f} |")
        busy = checks["interleaved_median_cores_busy"]
        if busy:
            lines.append("| cores kept busy (CPU s / wall s), default threads / pinned | " + " | ".join(
                f"{busy.get(fw, float('nan')):.2f} / {busy.get(fw + '_1core', float('nan')):.2f}"
                for fw in ("jax", "torch")) + " |")
    lines += [
        "",
        "Checks:",
        "",
        f"- Validation bits/char: jaxrnn {j['val_bpc']:.4f} vs PyTorch {t['val_bpc']:.4f}, a relative difference of "
        f"{100 * rel_bpc:+.2f}% ({'within' if checks['val_bpc_within_2_percent'] else 'NOT within'} 2%).",
        f"- Training throughput (full runs): jaxrnn / PyTorch = {checks['tokens_per_s_ratio_full_runs']:.2f} "
        f"({'faster' if checks['jax_faster_in_full_runs'] else 'NOT faster'}).",
    ]
    if speed:
        per_round = checks["tokens_per_s_ratio_per_round"]
        lines.append(f"- Interleaved throughput, default threads: jaxrnn / PyTorch = "
                     f"{checks['tokens_per_s_ratio_interleaved_median']:.2f} (ratio of the medians; per round "
                     f"{', '.join(f'{r:.2f}' for r in per_round)}, median {statistics.median(per_round):.2f}).")
        if "tokens_per_s_ratio_interleaved_median_1core" in checks:
            lines.append(f"- Interleaved throughput, each pinned to one core: jaxrnn / PyTorch = "
                         f"{checks['tokens_per_s_ratio_interleaved_median_1core']:.2f}; the best jaxrnn variant over "
                         f"the best PyTorch variant: {checks['best_jax_over_best_torch']:.2f}.")
        for v in VARIANTS:
            if speed.get(v):
                lines.append(f"  - {v}: " + ", ".join(f"{x:,.0f}" for x in speed[v]) + " tokens/s")
    lines += ["", f"Curves: `{name}_curves.png` (both runs), `{name}_jax/curves.png` (the jaxrnn command's own).",
              f"Sample generated by the jaxrnn run (temperature 0.8): `{name}_jax/sample.txt`.", ""]
    with open(os.path.join(out, f"{name}.md"), "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))
    return summary


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--corpus", default=None,
                   help="plain-text file (default: ../shared/corpora/shakespeare.txt, else the Python standard library's source)")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--embed", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--clip", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--only", choices=["jax", "torch", "speed", "report"], default=None,
                   help="run one part (default: jax, torch, speed if --speed-rounds, then the report)")
    p.add_argument("--torch-threads", type=int, default=None,
                   help="torch.set_num_threads for the full PyTorch run (default: PyTorch's own choice)")
    p.add_argument("--speed-rounds", type=int, default=0, help="interleaved throughput rounds (0: none)")
    p.add_argument("--speed-steps", type=int, default=40)
    p.add_argument("--out", default=None, help="output folder (default: benchmarks/results; a new temporary folder with --quick)")
    p.add_argument("--name", default="lm_shakespeare_char")
    p.add_argument("--work", default=os.path.join("/tmp", "jaxrnn_lm_compare"), help="scratch space (checkpoints)")
    p.add_argument("--quick", action="store_true", help="300k characters, hidden 64, 20 steps (speed rounds of 5 steps, if --speed-rounds)")
    p.add_argument("--speed-probe", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    p.add_argument("--settings", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.out = output_dir(args.out, args.quick, "lm_compare")

    if args.speed_probe:  # internal: one timing in a fresh process
        s = json.loads(args.settings)
        print(json.dumps(speed_probe(args.speed_probe, s, args.speed_steps)))
        return 0

    name = args.name + ("_quick" if args.quick else "")
    os.makedirs(args.out, exist_ok=True)
    os.makedirs(args.work, exist_ok=True)
    corpus = corpus_file(args.corpus)
    s = {"corpus": corpus, "cell": "lstm", "layers": 1, "hidden": args.hidden, "embed": args.embed,
         "batch_size": args.batch_size, "seq_len": args.seq_len, "steps": args.steps, "lr": args.lr,
         "clip": args.clip, "seed": args.seed, "eval_every": args.eval_every}
    if args.quick:
        prefix = os.path.join(args.work, "quick_corpus.txt")
        with open(corpus, encoding="utf-8") as f:
            text = f.read(300_000)
        with open(prefix, "w", encoding="utf-8") as f:
            f.write(text)
        s.update(corpus=prefix, hidden=64, steps=20, eval_every=10)
        args.speed_steps = min(args.speed_steps, 5)  # no speed round unless --speed-rounds asks for one

    info_path = os.path.join(args.out, f"{name}_process.json")
    info = {}
    if os.path.exists(info_path):
        with open(info_path) as f:
            info = json.load(f)
    info.setdefault("process", {})
    if args.only not in ("report", "speed") or "machine" not in info:
        info["machine"] = machine_info()  # the header describes the full runs

    parts = [args.only] if args.only else ["jax", "torch"] + (["speed"] if args.speed_rounds else []) + ["report"]
    for part in parts:
        if part in ("jax", "torch"):
            dest = os.path.join(args.out, f"{name}_{part}")
            os.makedirs(dest, exist_ok=True)
            run_dir = os.path.join(args.work, f"{name}_{part}")
            shutil.rmtree(run_dir, ignore_errors=True)
            if part == "jax":
                cmd = [sys.executable, "-m", "jaxrnn.cli", "train", *settings_args(s), "--out", run_dir, "--no-progress"]
            else:
                cmd = [sys.executable, os.path.join(HERE, "torch_lm_reference.py"), *settings_args(s), "--out", run_dir]
                if args.torch_threads:
                    cmd += ["--threads", str(args.torch_threads)]
            info["process"][part] = run_logged(cmd, os.path.join(dest, "log.txt"))
            for fname in ("metrics.json", "curves.png", "sample.txt"):
                if os.path.exists(os.path.join(run_dir, fname)):
                    shutil.copy(os.path.join(run_dir, fname), os.path.join(dest, fname))
        elif part == "speed":
            rounds = {**{v: [] for v in VARIANTS}, "steps": args.speed_steps, "load_average_1min": [],
                      "cores_busy": {v: [] for v in VARIANTS}, "date": machine_info()["date"]}
            for r in range(args.speed_rounds):
                for v, (_, extra) in VARIANTS.items():
                    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--speed-probe", v,
                                          "--settings", json.dumps(s), "--speed-steps", str(args.speed_steps)],
                                         capture_output=True, text=True, env={**env(), **extra}, cwd=ROOT)
                    if out.returncode != 0:
                        raise SystemExit(f"speed probe {v} failed:\n{out.stderr[-3000:]}")
                    probe = json.loads(out.stdout.strip().splitlines()[-1])
                    tps = probe["tokens_per_s"]
                    rounds[v].append(tps)
                    rounds["cores_busy"][v].append(probe["cores_busy"])
                    rounds["load_average_1min"].append(load())
                    print(f"speed round {r + 1}/{args.speed_rounds}: {v} {tps:,.0f} tokens/s, "
                          f"{probe['cores_busy']:.2f} cores busy (load {load():.1f})",
                          flush=True)
            info["speed"] = rounds
        with open(info_path, "w") as f:
            json.dump(info, f, indent=2, sort_keys=True)
        if part == "report":
            report(args.out, name, s, info)
    return 0


if __name__ == "__main__":
    sys.exit(main())

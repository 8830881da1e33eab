"""Shared helpers of the speed and memory benchmarks (bptt_memory, throughput, compile_time).

* :func:`machine_info` / :func:`header_markdown`: the machine and version header every
  results file starts with (CPU model from /proc/cpuinfo, cores, load average, python,
  jax, jaxlib, optax, torch and flax versions, XLA flags, date).
* :func:`interleaved`: timing of several competitors in one process, in interleaved
  rounds, with the median of per-round ratios (robust to a shared, noisy machine).
* :func:`write_results`: ``<name>.md`` and ``<name>.json`` under the output folder.
* :func:`output_dir`: where a run writes (``--quick`` runs never write into the
  recorded ``benchmarks/results``).
* :func:`corpus_file`: the text corpus of the language-model benchmarks (the shared
  Shakespeare file where this checkout has one, else the Python standard library's
  source, which every clone has).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from typing import Callable

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

RESULTS = os.path.join(ROOT, "benchmarks", "results")
#: The corpus of the recorded language-model runs; it lives beside the project's
#: development checkout (``../shared/corpora``), not in a clone of the repository.
SHARED_CORPUS = os.path.normpath(os.path.join(ROOT, "..", "shared", "corpora", "shakespeare.txt"))


def output_dir(out: str | None, quick: bool, script: str) -> str:
    """The folder a run writes to: ``out`` when given; else ``benchmarks/results`` for a
    full run and a fresh temporary folder for ``--quick`` (a smoke run must never
    overwrite the recorded results)."""
    if out is not None:
        return out
    if not quick:
        return RESULTS
    path = tempfile.mkdtemp(prefix=f"jaxrnn_{script}_quick_")
    print(f"--quick: writing to {path} (pass --out DIR to choose)", flush=True)
    return path


def corpus_file(path: str | None = None, max_chars: int = 2_000_000) -> str:
    """A plain-text corpus file for the language-model benchmarks.

    ``path`` when given; else :data:`SHARED_CORPUS` when it exists; else the Python
    standard library's source (``jaxrnn.corpus.default_corpus_files``, at most
    ``max_chars`` bytes) written once to a file in the temporary folder, so that the
    scripts also run in a clean clone. The recorded results name the corpus they used.
    """
    if path is not None:
        return os.path.abspath(path)
    if os.path.exists(SHARED_CORPUS):
        return SHARED_CORPUS
    import jaxrnn as jr

    root, files = jr.corpus.default_corpus_files(max_chars)
    dest = os.path.join(tempfile.gettempdir(), f"jaxrnn_stdlib_corpus_{platform.python_version()}_{max_chars}.txt")
    if not os.path.exists(dest):
        parts = []
        for rel in files:
            try:
                parts.append(jr.corpus.read_text(root / rel))
            except ValueError:  # not UTF-8 or empty: load_default skips it too
                continue
        tmp = dest + f".{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("".join(parts))
        os.replace(tmp, dest)
    print(f"{SHARED_CORPUS} not found: using the standard library's source ({dest})", flush=True)
    return dest


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _version(module: str) -> str | None:
    try:
        mod = __import__(module)
    except ImportError:
        return None
    return getattr(mod, "__version__", "unknown")


def machine_info() -> dict:
    """Machine and software versions, for the header of every results file."""
    import jax

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count()
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(),
        "cores": cores,
        "load_average_1_5_15": [round(v, 2) for v in os.getloadavg()],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": _version("jaxlib"),
        "optax": _version("optax"),
        "torch": _version("torch"),
        "flax": _version("flax"),
        "jax_backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
        # The C allocator's settings change how often a step's buffers are mapped and
        # faulted in afresh (see docs/performance.md, "Page faults"); record them.
        "allocator_env": " ".join(f"{k}={v}" for k, v in sorted(os.environ.items())
                                  if k.startswith("MALLOC_") or k in ("GLIBC_TUNABLES", "LD_PRELOAD")),
    }
    # The same versions, as the nested dict the LM, scaling and horizon reports read.
    info["versions"] = {"python": info["python"],
                        **{m: info[m] or "not installed" for m in ("jax", "jaxlib", "optax", "torch")},
                        "numpy": _version("numpy") or "not installed"}
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["torch_mkldnn"] = bool(torch.backends.mkldnn.is_available())
    except ImportError:
        pass
    return info


def header_markdown(title: str, info: dict, command: str) -> str:
    """A markdown header: title, command line, and the machine/version table."""
    lines = [f"# {title}", "", f"Command: `{command}`", "", "| | |", "|---|---|"]
    for key in ("date", "cpu", "cores", "load_average_1_5_15", "platform", "python", "jax", "jaxlib", "optax",
                "torch", "torch_threads", "torch_mkldnn", "flax", "jax_backend", "XLA_FLAGS", "allocator_env"):
        if key in info and info[key] not in (None, ""):
            lines.append(f"| {key} | {info[key]} |")
    return "\n".join(lines) + "\n"


def write_results(name: str, markdown: str, payload: dict, out_dir: str = RESULTS) -> tuple[str, str]:
    """Write ``<name>.md`` and ``<name>.json``; return their paths."""
    os.makedirs(out_dir, exist_ok=True)
    md_path = os.path.join(out_dir, f"{name}.md")
    json_path = os.path.join(out_dir, f"{name}.json")
    with open(md_path, "w") as f:
        f.write(markdown)
    with open(json_path, "w") as f:
        json.dump(payload, f, indent=1, sort_keys=False)
        f.write("\n")
    return md_path, json_path


def command_line() -> str:
    return "python " + " ".join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:])


def interleaved(runners: dict[str, Callable[[int], float]], rounds: int, reps: int,
                reference: str, log: Callable[[str], None] | None = print) -> dict:
    """Time several competitors in interleaved rounds.

    Args:
      runners: name -> ``run(n)`` that performs ``n`` iterations (blocking until done)
        and returns the seconds per iteration. Each is warmed up (compiled) beforehand.
      rounds: number of rounds; in each, every runner runs ``reps`` iterations, one
        runner after the other, so all of them see the same machine load.
      reps: iterations per runner per round.
      reference: the runner the ratios are taken against.

    Returns:
      ``{name: {"seconds": [per round], "median_s": ..., "ratio_median": median over
      rounds of seconds / reference seconds, "ratio_min", "ratio_max", "cpu": per-step
      process counters (see :func:`cpu_counters`), medians over rounds, "cores_busy":
      their CPU seconds / ``median_s``}}``; the last two None without ``resource``.
    """
    times = {k: [] for k in runners}
    counters = {k: [] for k in runners}
    order = list(runners)
    for r in range(rounds):
        # Alternate the order so no runner always follows the same one.
        seq = order if r % 2 == 0 else order[::-1]
        for name in seq:
            before = cpu_counters()
            times[name].append(runners[name](reps))
            after = cpu_counters()
            if before is not None:
                counters[name].append({k: (after[k] - before[k]) / reps for k in before})
        if log is not None:
            log(f"  round {r + 1}/{rounds}: " + "  ".join(f"{k} {1e3 * times[k][-1]:.1f} ms" for k in order))
    out = {}
    for name in order:
        ratios = [a / b for a, b in zip(times[name], times[reference])]
        median_s = statistics.median(times[name])
        cpu = ({k: statistics.median(c[k] for c in counters[name]) for k in counters[name][0]}
               if counters[name] else None)
        out[name] = {
            "seconds": times[name],
            "median_s": median_s,
            "ratio_median": statistics.median(ratios),
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
            "cpu": cpu,
            "cores_busy": (cpu["user_s"] + cpu["kernel_s"]) / median_s if cpu else None,
        }
    return out


def cpu_counters() -> dict | None:
    """This process's CPU counters (all threads): ``user_s`` and ``kernel_s`` (CPU
    seconds in user and kernel mode) and ``minor_faults`` (pages the kernel mapped and
    zero-filled on first touch); None where ``resource`` is missing (Windows).

    The kernel time is mostly those page faults: a block that glibc's ``malloc`` serves
    with its own ``mmap`` (above its threshold, at most 32 MiB) is returned to the kernel
    when freed, so a program that allocates such blocks on every step touches fresh
    pages on every step.
    """
    try:
        import resource
    except ImportError:  # pragma: no cover - not Unix
        return None
    u = resource.getrusage(resource.RUSAGE_SELF)
    return {"user_s": u.ru_utime, "kernel_s": u.ru_stime, "minor_faults": float(u.ru_minflt)}


def pin_to_one_cpu() -> int:
    """Restrict this process to one CPU; returns its number. Call it before any
    framework starts its threads: they then all share that core.

    This is the reliable way to compare frameworks "on one core":
    ``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false`` leaves XLA:CPU 0.10.2's YNNPACK
    products on two threads, and PyTorch's thread count does not cover every pool.
    """
    if not hasattr(os, "sched_setaffinity"):
        raise SystemExit("pinning to one core needs os.sched_setaffinity (Linux)")
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    return cpu


def timer(fn: Callable[[], object], block: Callable[[object], object]) -> Callable[[int], float]:
    """``run(n)``: call ``fn`` ``n`` times, ``block`` on the last result, seconds per call."""

    def run(n: int) -> float:
        t0 = time.perf_counter()
        out = None
        for _ in range(n):
            out = fn()
        block(out)
        return (time.perf_counter() - t0) / n

    return run

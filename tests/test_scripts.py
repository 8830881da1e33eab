"""Every benchmark script runs as a user runs it: ``python benchmarks/NAME.py --quick``.

Each script is started in a fresh interpreter from the repository root, with ``--quick``
and ``--out`` pointing at a temporary folder, and must exit with status 0 and write its
results there. ``test_every_script_is_covered`` fails when a script is added to
``benchmarks/`` or ``examples/`` without being run here (the examples are run by
``tests/test_examples.py``). A script that needs an optional package (PyTorch, Flax) is
skipped without it.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"

# script -> (optional packages it needs, files its quick run must write under --out)
SCRIPTS = {
    "bptt_memory": ((), ("bptt_memory_quick.md", "bptt_memory_quick.json", "bptt_memory_quick.png",
                         "bptt_memory_lm_quick.md", "bptt_memory_lm_quick.json", "bptt_memory_lm_quick.png")),
    "cells_compare": ((), ("cells_compare_quick.md", "cells_compare_quick.json", "cells_compare_quick.png")),
    "compile_time": ((), ("compile_time_quick.md", "compile_time_quick.json")),
    "gradient_flow": ((), ("gradient_flow_quick.md", "gradient_flow_quick.json", "gradient_flow_quick.png",
                           "gradient_flow_clipping_quick.png")),
    "lm_compare": (("torch",), ("lm_shakespeare_char_quick.md", "lm_shakespeare_char_quick.json",
                                "lm_shakespeare_char_quick_curves.png")),
    "lm_default": ((), ("lm_default_quick.md", "lm_default_quick.json", "lm_default_quick/metrics.json")),
    "lm_word": ((), ("lm_word_shakespeare_quick.md", "lm_word_shakespeare_quick.json",
                     "lm_word_shakespeare_quick/metrics.json")),
    "long_stream": ((), ("long_stream_quick.md", "long_stream_quick.json")),
    "parallel_scan": ((), ("parallel_scan_quick.md", "parallel_scan_quick.json")),
    "lstm_passes": (("torch",), ("lstm_passes_quick.md", "lstm_passes_quick.json")),
    "scaling": ((), ("scaling_quick.md", "scaling_quick.json")),
    "tbptt_horizon": ((), ("tbptt_horizon_quick.md", "tbptt_horizon_quick.json", "tbptt_horizon_quick.png")),
    "throughput": (("torch", "flax"), ("throughput_quick.md", "throughput_quick.json")),
    "torch_lm_reference": (("torch",), ("metrics.json",)),
}


def _env() -> dict:
    env = dict(os.environ)
    # The checkout under test, whatever jaxrnn the environment has installed.
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["MPLBACKEND"] = "Agg"
    return env


def run_script(path: pathlib.Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python path args...`` from the repository root; fails the test on a non-zero exit."""
    proc = subprocess.run([sys.executable, str(path), *args], cwd=ROOT, env=_env(), capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"{path.relative_to(ROOT)} {' '.join(args)} exited with status {proc.returncode}\n"
                    f"--- stdout (end) ---\n{proc.stdout[-3000:]}\n--- stderr (end) ---\n{proc.stderr[-5000:]}")
    return proc


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_benchmark_quick_run(name, tmp_path):
    needs, outputs = SCRIPTS[name]
    for module in needs:
        pytest.importorskip(module)
    out = tmp_path / "out"
    args = ["--quick", "--out", str(out)]
    if name in ("lm_compare", "lm_default", "lm_word"):
        args += ["--work", str(tmp_path / "work")]  # their scratch space (checkpoints)
    run_script(BENCHMARKS / f"{name}.py", *args)
    missing = [f for f in outputs if not (out / f).is_file()]
    assert not missing, f"{name}.py --quick did not write {missing} under --out"


def _common_module():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import _common
    finally:
        sys.path.remove(str(BENCHMARKS))
    return _common


def test_quick_default_output_is_not_the_recorded_results():
    """Without --out a quick run writes to a fresh temporary folder (never benchmarks/results)."""
    _common = _common_module()
    quick = _common.output_dir(None, True, "x")
    assert os.path.isdir(quick) and not os.listdir(quick)
    assert os.path.realpath(quick) != os.path.realpath(_common.RESULTS)
    assert os.path.realpath(_common.output_dir(None, False, "x")) == os.path.realpath(_common.RESULTS)
    assert _common.output_dir("somewhere", True, "x") == "somewhere"
    os.rmdir(quick)


def test_corpus_falls_back_to_the_standard_library(monkeypatch, tmp_path):
    """A clone without ../shared/corpora still has a corpus for the language-model scripts."""
    import jaxrnn as jr

    _common = _common_module()
    monkeypatch.setattr(_common, "SHARED_CORPUS", str(tmp_path / "missing.txt"))
    monkeypatch.setattr(_common.tempfile, "tempdir", str(tmp_path))
    path = _common.corpus_file(None, max_chars=50_000)
    assert os.path.dirname(path) == str(tmp_path)
    root, files = jr.corpus.default_corpus_files(50_000)
    text = pathlib.Path(path).read_text(encoding="utf-8")
    assert text.startswith(jr.corpus.read_text(root / files[0])) and 0 < len(text) <= 50_000
    assert _common.corpus_file(None, max_chars=50_000) == path  # written once, then reused
    assert _common.corpus_file("given.txt") == os.path.abspath("given.txt")


def test_every_script_is_covered():
    # gpu.py has its own test module (tests/test_gpu_benchmark.py), which reads what it writes.
    benchmarks = {p.stem for p in BENCHMARKS.glob("*.py")} - {"_common", "gpu"}
    assert benchmarks == set(SCRIPTS), (
        f"benchmarks/ scripts not run by this test: {sorted(benchmarks - set(SCRIPTS))}; "
        f"listed but missing: {sorted(set(SCRIPTS) - benchmarks)}")
    for name in benchmarks:
        assert '"--quick"' in (BENCHMARKS / f"{name}.py").read_text(), f"benchmarks/{name}.py has no --quick mode"

"""benchmarks/gpu.py --quick: the GPU benchmark's code runs on a CPU, isolates its cases and
writes its files; its correctness rows (XLA path, generic path, cuDNN path with lstm_ref)
pass against the float64 reference."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu")
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    return proc, out


def test_quick_mode_writes_both_files_and_exits_cleanly(quick_run):
    proc, out = quick_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(os.listdir(out)) == ["gpu_quick.json", "gpu_quick.md"]
    md = (out / "gpu_quick.md").read_text()
    for heading in ("## (a) Correctness", "## (b) Training-step time", "## (c) BPTT memory"):
        assert heading in md


def test_quick_mode_correctness_rows_pass(quick_run):
    _, out = quick_run
    payload = json.loads((out / "gpu_quick.json").read_text())
    assert payload["quick"] is True and payload["machine"]["jax"]
    rows = [r for r in payload["correctness"] if r.get("precision")]
    assert {r["path"] for r in rows} == {"xla", "generic", "cudnn (lstm_ref)"}
    for r in rows:
        assert r["status"] == "ok", r
        assert r["rel_err_outputs"] <= r["tolerance"] and r["rel_err_grads"] <= r["tolerance"]
    generic = [r for r in rows if r["path"] == "generic"]
    assert all(r["fast_path_taken"] is False for r in generic)  # it really is the generic path


def test_quick_mode_speed_and_memory_cases_are_reported(quick_run):
    _, out = quick_run
    payload = json.loads((out / "gpu_quick.json").read_text())
    lstm = payload["speed"][0]
    assert lstm["kind"] == "lstm" and lstm["status"] == "ok"
    assert lstm["runners"]["jaxrnn xla"]["median_ms"] > 0
    assert lstm["runners"]["jaxrnn cudnn"]["status"].startswith("skipped")  # no CUDA device (or the budget)
    first = payload["memory"][0]
    assert first["status"] == "ok" and first["process"] == "fresh subprocess" and first["temp_bytes"] > 0
    assert any(r["mode"] == "cudnn" and r["status"].startswith("skipped") for r in payload["memory"])


def test_a_failing_case_is_recorded_and_the_next_one_runs():
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import gpu
    finally:
        sys.path.pop(0)
    rows = []

    def broken():
        raise ZeroDivisionError("boom")

    gpu.isolated(rows, "speed", "broken", broken)
    gpu.isolated(rows, "speed", "fine", lambda: {"value": 1})
    def skipped():
        raise gpu.Skip("no CUDA device")

    gpu.isolated(rows, "speed", "skipped", skipped)
    assert [r["status"] for r in rows] == ["error", "ok", "skipped: no CUDA device"]
    assert rows[0]["error"] == "ZeroDivisionError: boom" and "broken" in rows[0]["traceback"]
    assert rows[1]["value"] == 1

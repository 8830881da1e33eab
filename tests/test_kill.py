"""Kill anywhere, lose nothing: `jaxrnn train` killed with SIGKILL at random moments (and
once in the middle of a checkpoint write) and resumed each time ends with the parameters
of an uninterrupted run, bit for bit."""

import glob
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("safetensors")
pytest.importorskip("matplotlib")

from jaxrnn import checkpoint  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 120
ARGS = ["--hidden", "8", "--embed", "4", "--batch-size", "4", "--seq-len", "8", "--dropout", "0.2",
        "--steps", str(STEPS), "--checkpoint-every", "1", "--eval-every", "1000", "--sample-length", "5",
        "--no-progress"]

# Runs `jaxrnn train` after making the process SIGKILL itself at its n-th fsync: checkpoint
# writes fsync the temporary file (odd counts) before renaming it over the checkpoint, so an
# odd n kills it between writing the new checkpoint and putting it in place.
KILL_AT_FSYNC = """
import os, signal, sys
n, count, real = int(os.environ["KILL_AT_FSYNC"]), [0], os.fsync
def fsync(fd):
    count[0] += 1
    if count[0] == n:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(fd)
os.fsync = fsync
from jaxrnn import cli
sys.exit(cli.main(sys.argv[1:]))
"""


def _text(n_lines=150, seed=0):
    rs = np.random.RandomState(seed)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "big", "red", "hat"]
    return "".join(" ".join(rs.choice(words, rs.randint(3, 8))) + ".\n" for _ in range(n_lines))


def _env(tmp_path, **extra):
    cache = str(tmp_path / "jax-cache")  # compiled once, loaded by every later process
    return dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), JAX_PLATFORMS="cpu",
                JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0", **extra)


def _start(run, corpus, env, wrapper=None):
    resume = os.path.exists(os.path.join(run, "checkpoint.safetensors"))
    argv = ["train", "--out", run, *(["--resume", "--no-progress"] if resume else ["--corpus", corpus, *ARGS])]
    cmd = [sys.executable, "-c", wrapper, *argv] if wrapper else [sys.executable, "-m", "jaxrnn.cli", *argv]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _step(run):
    path = os.path.join(run, "checkpoint.safetensors")
    return int(checkpoint.load(path)[0][".step"]) if os.path.exists(path) else 0


def test_sigkill_at_random_moments_then_resume_equals_an_uninterrupted_run(tmp_path):
    corpus = tmp_path / "tiny.txt"
    corpus.write_text(_text(), encoding="utf-8")
    corpus = str(corpus)
    ref = str(tmp_path / "ref")
    done = subprocess.run([sys.executable, "-m", "jaxrnn.cli", "train", "--corpus", corpus, *ARGS, "--out", ref],
                          env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr

    run, rng = str(tmp_path / "run"), random.Random(0)
    targets = sorted(rng.sample(range(5, 90), 5))  # the saved steps the five random kills follow
    kills, in_write, steps_at_kill = 0, 0, []
    while kills < 6:
        before = _step(run)
        if kills == 2:  # deterministic: in the middle of the 4th checkpoint write of this session
            proc = _start(run, corpus, _env(tmp_path, KILL_AT_FSYNC="7"), wrapper=KILL_AT_FSYNC)
            assert proc.wait(timeout=300) == -signal.SIGKILL, proc.stderr.read().decode()
            assert _step(run) == before + 3  # the 4th write never landed; the 3rd is intact
            assert glob.glob(os.path.join(run, ".checkpoint.safetensors.*.tmp"))  # its temporary file is there
            in_write += 1
        else:
            # Wait until this session has saved a random step (at least one past the last
            # kill), then kill at a random moment a few steps later: in a step, in a write, or
            # between. Counting steps, not seconds, keeps the kills inside the run however
            # fast or slow the machine is.
            target = max(targets.pop(0), before + 1)
            proc = _start(run, corpus, _env(tmp_path))
            deadline = time.monotonic() + 120
            while _step(run) < target:
                assert proc.poll() is None, proc.stderr.read().decode()
                assert time.monotonic() < deadline
                time.sleep(0.002)
            time.sleep(rng.uniform(0.0, 0.01))
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
            assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
        kills += 1
        steps_at_kill.append(_step(run))
    print("checkpointed step at each kill:", steps_at_kill)
    assert in_write == 1 and steps_at_kill[-1] < STEPS, steps_at_kill
    assert steps_at_kill == sorted(steps_at_kill)  # never lost a saved step

    proc = _start(run, corpus, _env(tmp_path))
    assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()
    a, meta_a = checkpoint.load(os.path.join(ref, "checkpoint.safetensors"))
    b, meta_b = checkpoint.load(os.path.join(run, "checkpoint.safetensors"))
    assert sorted(a) == sorted(b) and int(b[".step"]) == STEPS
    for k in a:  # parameters, Adam moments, carry with the dropout key, step: bit for bit
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)
    assert meta_a["position"] == meta_b["position"]
    with open(os.path.join(ref, "metrics.json")) as f, open(os.path.join(run, "metrics.json")) as g:
        ma, mb = json.load(f), json.load(g)
    assert ma["history"] == mb["history"] and ma["val_loss"] == mb["val_loss"] and ma["test_loss"] == mb["test_loss"]
    assert mb["config"] == ma["config"]

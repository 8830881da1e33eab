"""jr.train.fit: exact resume, Ctrl-C, evaluation schedule, metrics file, skipped steps."""

import importlib.util
import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxrnn as jr

H, B, T = 6, 3, 5
CELL = jr.rnn(H)


def loss_fn(params, carry, x, y):
    carry, hs = jr.unroll(CELL, params["rnn"], x, carry)
    return jnp.mean((hs @ params["w"] - y) ** 2), carry


def series(n=400, seed=0):
    t = np.arange(n + 1)
    rng = np.random.default_rng(seed)
    s = (np.sin(t / 7.0) + 0.5 * np.sin(t / 3.0) + 0.1 * rng.normal(size=n + 1)).astype(np.float32)[:, None]
    return s[:-1], s[1:]


def params0():
    return {"rnn": CELL.init(jax.random.key(0), 1), "w": 0.1 * jnp.ones((H, 1), jnp.float32)}


TX = jr.clipped(optax.adam(1e-2), 1.0, skip_nonfinite=True)
STEP = jr.tbptt.make_step(loss_fn, TX)  # one compilation for the whole file


def tbptt_setup(x=None):
    xs, ys = series() if x is None else x
    batches = jr.data.offset_batches(xs, B, T, targets=ys)
    return jr.tbptt.init_state(params0(), TX, CELL.initial_carry(B, jnp.float32)), batches


def evaluate(state):
    xs, ys = series(60, seed=1)
    loss, _ = loss_fn(state.params, CELL.initial_carry(1, jnp.float32), jnp.asarray(xs)[None], jnp.asarray(ys)[None])
    return {"loss": loss, "twice": 2 * loss}


def fit(state, batches, **kw):
    kw.setdefault("progress", False)
    kw.setdefault("log", None)
    return jr.train.fit(STEP, state, batches, **kw)


def assert_same_tree(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb)
    for u, v in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))  # bit for bit


@pytest.fixture(scope="module")
def reference():
    """12 uninterrupted steps, evaluated every 4."""
    state, batches = tbptt_setup()
    return fit(state, batches, num_steps=12, evaluate=evaluate, eval_every=4)


def test_resume_equals_uninterrupted(reference, tmp_path):
    path = tmp_path / "ckpt.safetensors"
    state, batches = tbptt_setup()
    first = fit(state, batches, num_steps=6, evaluate=evaluate, eval_every=4, checkpoint=path)
    assert first.stopped == "done" and first.step == 6
    state, batches = tbptt_setup()  # a fresh process would build these again
    second = fit(state, batches, num_steps=12, evaluate=evaluate, eval_every=4, checkpoint=path, resume=True)
    assert second.stopped == "done" and int(second.state.step) == 12
    assert_same_tree(second.state, reference.state)  # params, Adam moments, carry, step
    h, ref = second.history, reference.history
    assert h["val_steps"] == [4, 6, 8, 12]  # the first run also evaluated after its last step
    for k in ("val_loss", "val_twice"):
        assert h[k][:1] + h[k][2:] == ref[k]
    assert {k: v for k, v in h.items() if not k.startswith("val_")} == {
        k: v for k, v in ref.items() if not k.startswith("val_")}
    assert batches.position == reference.step * T
    restored = jr.train.restore(path, like=second.state)
    assert restored.position["position"] == 12 * T and restored.history == h


@pytest.fixture
def python_ctrl_c():
    """Python's own SIGINT handler for the test, whatever the process inherited (a run
    started in the background from a shell without job control inherits SIG_IGN)."""
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, inherited)


def test_ctrl_c_saves_and_resume_continues_exactly(reference, tmp_path, python_ctrl_c):
    path = tmp_path / "ckpt.safetensors"
    state, batches = tbptt_setup()

    class CtrlC:  # presses Ctrl-C while the 7th batch is read
        def __init__(self, inner):
            self.inner, self.read = inner, 0

        def __iter__(self):
            return self

        def __next__(self):
            self.read += 1
            if self.read == 7:
                os.kill(os.getpid(), signal.SIGINT)
            return next(self.inner)

        def state_dict(self):
            return self.inner.state_dict()

    out = fit(state, CtrlC(batches), num_steps=12, evaluate=evaluate, eval_every=4, checkpoint=path)
    assert out.stopped == "interrupted" and out.step == 7
    assert out.message == f"interrupted at step 7: checkpoint saved to {path}"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    saved = jr.train.restore(path, like=out.state)
    assert int(saved.state.step) == 7 and saved.position["position"] == 7 * T
    assert saved.history["train_steps"] == list(range(1, 8)) and saved.history["val_steps"] == [4]
    state, batches = tbptt_setup()
    done = fit(state, batches, num_steps=12, evaluate=evaluate, eval_every=4, checkpoint=path, resume=True)
    assert_same_tree(done.state, reference.state)
    assert done.history == reference.history


def test_evaluate_is_called_at_the_right_steps(tmp_path):
    seen = []

    def spy(state):
        seen.append(int(state.step))
        return 0.5

    state, batches = tbptt_setup()
    out = fit(state, batches, num_steps=10, evaluate=spy, eval_every=4)
    assert seen == [4, 8, 10] and out.history["val_steps"] == [4, 8, 10] and out.history["val_loss"] == [0.5] * 3
    seen.clear()
    state, batches = tbptt_setup()
    fit(state, batches, num_steps=3, evaluate=spy)  # eval_every=None: after the last step only
    assert seen == [3]
    # a finite stream that ends early is evaluated where it ended
    seen.clear()
    xs, ys = series(60)
    batches = jr.data.offset_batches(xs, B, T, targets=ys, epochs=1)  # 20 steps per stream: 4 segments
    state = jr.tbptt.init_state(params0(), TX, CELL.initial_carry(B, jnp.float32))
    out = fit(state, batches, num_steps=100, evaluate=spy, eval_every=3)
    assert out.stopped == "end_of_data" and out.step == 4 and seen == [3, 4]
    assert out.message == "the batches ran out after step 4 (num_steps=100)"


def test_metrics_json_and_curves(reference, tmp_path):
    state, batches = tbptt_setup()
    metrics, curves = tmp_path / "metrics.json", tmp_path / "curves.png"
    out = fit(state, batches, num_steps=12, evaluate=evaluate, eval_every=4, metrics=metrics, curves=curves)
    with open(metrics) as f:
        m = json.load(f, parse_constant=lambda c: pytest.fail(f"invalid JSON constant {c}"))
    assert m["steps"] == 12 and m["stopped"] == "done" and m["skipped_steps"] == 0
    h = m["history"]
    assert h["train_steps"] == list(range(1, 13)) and h["val_steps"] == [4, 8, 12]
    assert h["train_loss"] == reference.history["train_loss"] and len(h["train_grad_norm"]) == 12
    assert h["val_twice"] == pytest.approx([2 * v for v in h["val_loss"]], rel=1e-6)
    # the recorded losses are the step's own: recompute the first one from the initial state
    state, batches = tbptt_setup()
    x, y = next(batches)
    l0, _ = loss_fn(state.params, state.carry, jnp.asarray(x), jnp.asarray(y))
    assert h["train_loss"][0] == pytest.approx(float(l0), rel=1e-6)
    assert set(m["elapsed"]) >= {"train_seconds", "eval_seconds", "wall_seconds", "sessions"}
    if out.history and os.path.exists(curves):  # matplotlib installed
        assert curves.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bptt_state_with_sequence_batches_resumes_exactly(tmp_path):
    rng = np.random.default_rng(0)
    data = (rng.normal(size=(20, 7, 1)).astype(np.float32), rng.normal(size=(20, 7, 1)).astype(np.float32))
    tx = optax.sgd(0.1)
    step = jr.bptt.make_step(loss_fn, tx)

    def run(num_steps, path=None, resume=False):
        batches = jr.data.sequence_batches(data, 4, epochs=None, drop_remainder=True, seed=3)
        state = jr.bptt.init_state(params0(), tx, CELL.initial_carry(4, jnp.float32))
        return jr.train.fit(step, state, batches, num_steps=num_steps, checkpoint=path, resume=resume,
                            progress=False, log=None)

    ref = run(9)
    path = tmp_path / "b.safetensors"
    assert run(4, path).step == 4
    out = run(9, path, resume=True)
    assert_same_tree(out.state, ref.state)
    assert out.history == ref.history and out.history["train_steps"] == list(range(1, 10))


def test_plain_iterator_resumes_by_reading_again(reference, tmp_path):
    """Batches without state_dict(): the position is the number read, skipped on resume."""
    def plain():
        _, batches = tbptt_setup()
        return (b for b in batches)  # a generator: no state_dict

    path = tmp_path / "p.safetensors"
    state, _ = tbptt_setup()
    fit(state, plain(), num_steps=6, checkpoint=path)
    assert jr.checkpoint.load(path)[1]["position"] == {"batches_read": 6}
    state, _ = tbptt_setup()
    out = fit(state, plain(), num_steps=12, checkpoint=path, resume=True)
    assert_same_tree(out.state.params, reference.state.params)


def _nan_series(bad_steps):
    """The series with NaN inputs in the segments of the given (1-based) steps."""
    xs, ys = series()
    xs = xs.copy()
    for s in bad_steps:  # step s reads positions (s-1)·T .. s·T - 1 of stream 0
        xs[(s - 1) * T] = np.nan
    return xs, ys


def test_nonfinite_steps_are_skipped_counted_and_stop_the_loop(tmp_path, capsys):
    state, batches = tbptt_setup(_nan_series([3, 4]))
    metrics = tmp_path / "m.json"
    out = fit(state, batches, num_steps=8, max_skips=3, metrics=metrics, progress=True)
    assert out.stopped == "done" and out.history["skipped_steps"] == [3, 4]
    if importlib.util.find_spec("tqdm") is not None:
        assert "skipped=2" in capsys.readouterr().err  # on the progress bar
    assert all(np.isfinite(np.asarray(a)).all() for a in jax.tree_util.tree_leaves(out.state.params))
    assert out.history["train_loss"][2] is None and out.history["train_loss"][1] is not None
    assert json.loads(metrics.read_text())["skipped_steps"] == 2
    # three in a row reach max_skips=3: the loop stops, saves, and says why
    path = tmp_path / "c.safetensors"
    state, batches = tbptt_setup(_nan_series([2, 3, 4, 5, 6]))
    out = fit(state, batches, num_steps=20, max_skips=3, checkpoint=path, fetch_every=1)
    assert out.stopped == "nonfinite" and out.step == 4
    assert out.message == ("stopped at step 4: the last 3 steps had a non-finite gradient and were skipped "
                           "(max_skips=3); 3 skipped in all")
    assert int(jr.train.restore(path, like=out.state).state.step) == 4


def test_nonfinite_gradient_applied_stops_without_saving(tmp_path):
    tx = optax.sgd(0.1)  # does not skip
    step = jr.tbptt.make_step(loss_fn, tx)
    xs, ys = _nan_series([3])
    state = jr.tbptt.init_state(params0(), tx, CELL.initial_carry(B, jnp.float32))
    path = tmp_path / "n.safetensors"
    out = jr.train.fit(step, state, jr.data.offset_batches(xs, B, T, targets=ys), num_steps=10, checkpoint=path,
                       checkpoint_every=1, fetch_every=1, progress=False, log=None)
    assert out.stopped == "nonfinite" and out.step == 3
    assert out.message.startswith("step 3 had a non-finite gradient and the optimizer applied it")
    assert int(jr.checkpoint.load(path)[0][".step"]) == 2  # the NaN state was not written
    with pytest.raises(ValueError, match="max_skips needs an optimizer that skips non-finite steps"):
        jr.train.fit(step, out.state, [], num_steps=1, max_skips=2)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"num_steps": 0}, "num_steps must be a positive int, got 0"),
        ({"num_steps": 5, "eval_every": float("nan")}, "eval_every must be a positive int, got nan"),
        ({"num_steps": 5, "checkpoint_every": 2}, "checkpoint_every needs checkpoint="),
        ({"num_steps": 5, "resume": True}, "resume=True needs checkpoint="),
        ({"num_steps": 5, "metadata": {"history": 1}}, r"must not use the keys \['history'\]"),
    ],
)
def test_bad_arguments_are_named(kw, match):
    state, batches = tbptt_setup()
    with pytest.raises(ValueError, match=match):
        jr.train.fit(STEP, state, batches, progress=False, log=None, **kw)


def test_restore_names_a_file_fit_did_not_write(tmp_path):
    path = tmp_path / "plain.safetensors"
    state, _ = tbptt_setup()
    jr.checkpoint.save_state(path, state)
    with pytest.raises(ValueError, match="plain.safetensors was not written by jr.train.fit"):
        jr.train.restore(path, like=state)


def test_forecast_example_beats_the_naive_forecast(capsys):
    """examples/forecast.py (jr.train.fit on a non-language model) reaches its stated target."""
    import pathlib
    import re

    path = pathlib.Path(__file__).resolve().parent.parent / "examples" / "forecast.py"
    spec = importlib.util.spec_from_file_location("jaxrnn_example_forecast", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    threshold, steps = re.findall(r">= ([0-9.]+) after ``--steps (\d+)``", module.__doc__)[0]
    skill = module.main(["--steps", steps, "--seed", "0", "--no-progress"])
    out = capsys.readouterr().out
    mse, naive = map(float, re.findall(r"test MSE ([0-9.]+) vs naive \(persistence\) ([0-9.]+)", out)[0])
    assert skill == pytest.approx(1 - mse / naive, abs=2e-3) and f"skill: {skill:.4f}" in out
    assert skill >= float(threshold)


def test_k1k2_state_resumes_exactly(tmp_path):
    """TBPTT(k1, k2): the history in the state fills while training, so the fresh state
    given as a template takes the saved history's shapes from the file."""
    tx = optax.sgd(0.1)
    step = jr.tbptt.make_k1k2_step(loss_fn, tx, T, 2 * T)

    def run(num_steps, path=None, resume=False):
        xs, ys = series()
        state = jr.tbptt.init_k1k2_state(params0(), tx, CELL.initial_carry(B, jnp.float32))
        return jr.train.fit(step, state, jr.data.offset_batches(xs, B, T, targets=ys), num_steps=num_steps,
                            checkpoint=path, resume=resume, progress=False, log=None)

    ref = run(7)
    path = tmp_path / "k.safetensors"
    assert run(3, path).state.history_x.shape == (B, T, 1)
    out = run(7, path, resume=True)
    assert_same_tree(out.state, ref.state)
    assert out.history == ref.history

"""End-to-end tests of the `jaxrnn` command (train, --resume, Ctrl-C, eval, generate)."""

import json
import math
import os
import signal

import numpy as np
import pytest

pytest.importorskip("safetensors")
pytest.importorskip("tqdm")
pytest.importorskip("matplotlib")

import jaxrnn as jr  # noqa: E402
from jaxrnn import checkpoint, cli  # noqa: E402
from jaxrnn.data import OffsetBatches  # noqa: E402

TINY = ["--hidden", "16", "--embed", "8", "--batch-size", "4", "--seq-len", "8", "--no-progress",
        "--sample-length", "20"]


def _text(n_lines=150, seed=0):
    rs = np.random.RandomState(seed)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "big", "red", "hat"]
    return "".join(" ".join(rs.choice(words, rs.randint(3, 8))) + ".\n" for _ in range(n_lines))


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("corpus") / "tiny.txt"
    p.write_text(_text(), encoding="utf-8")
    return str(p)


def _train(*args):
    return cli.main(["train", *TINY, *args])


def _ckpt(run):
    arrays, meta = checkpoint.load(os.path.join(run, cli.CHECKPOINT))
    return arrays, meta


def _metrics(run):
    with open(os.path.join(run, cli.METRICS)) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def reference_run(corpus_file, tmp_path_factory):
    """8 uninterrupted steps of an LSTM with dropout (the dropout key threads through the carry)."""
    run = str(tmp_path_factory.mktemp("ref") / "run")
    assert _train("--corpus", corpus_file, "--dropout", "0.3", "--steps", "8",
                  "--eval-every", "4", "--out", run) == 0
    return run


def test_train_writes_metrics_curves_checkpoint_and_sample(reference_run, capsys):
    m = _metrics(reference_run)
    for k in ("val_loss", "val_perplexity", "val_bpc", "test_perplexity", "steps", "tokens_per_s", "wall_seconds"):
        assert k in m
    assert m["steps"] == 8 and m["tokens"] == 8 * 4 * 8 and m["tokens_per_s"] > 0
    assert m["val_perplexity"] == pytest.approx(math.exp(m["val_loss"]))
    assert m["val_bpc"] == pytest.approx(m["val_loss"] / math.log(2))
    assert m["history"]["val_steps"] == [4, 8] and m["history"]["train_steps"] == list(range(1, 9))
    # a fresh model predicts about uniformly; 8 steps improve on log V
    assert m["history"]["train_loss"][-1] < m["history"]["train_loss"][0]
    with open(os.path.join(reference_run, cli.CURVES), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(os.path.join(reference_run, cli.SAMPLE), encoding="utf-8") as f:
        assert len(f.read()) == 1 + 20 + 1  # the "\n" prompt, 20 characters, a newline
    arrays, meta = _ckpt(reference_run)
    assert int(arrays[".step"]) == 8 and meta["position"]["position"] == 64
    assert meta["metadata"]["vocab"]["level"] == "char"
    # eval recomputes the saved validation / test numbers from the checkpoint
    capsys.readouterr()
    assert cli.main(["eval", "--run", reference_run, "--split", "test"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["split"] == "test" and out["loss"] == pytest.approx(m["test_loss"], rel=1e-6)
    assert cli.main(["eval", "--run", reference_run]) == 0
    assert json.loads(capsys.readouterr().out)["bpc"] == pytest.approx(m["val_bpc"], rel=1e-6)


def _assert_same_checkpoint(run_a, run_b):
    a, meta_a = _ckpt(run_a)
    b, meta_b = _ckpt(run_b)
    assert sorted(a) == sorted(b)
    for k in a:  # params, Adam moments, carry (incl. the dropout key), step: bit for bit
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)
    assert meta_a["position"] == meta_b["position"]
    ma, mb = _metrics(run_a), _metrics(run_b)
    for k in ("val_loss", "test_loss", "steps"):
        assert ma[k] == mb[k], k
    assert ma["history"] == mb["history"]


def test_resume_continues_exactly(reference_run, corpus_file, tmp_path):
    run = str(tmp_path / "run")
    common = ["--corpus", corpus_file, "--dropout", "0.3", "--eval-every", "4", "--out", run]
    assert _train(*common, "--steps", "4") == 0
    assert _metrics(run)["steps"] == 4
    assert _train("--out", run, "--resume", "--steps", "8", "--no-progress") == 0
    _assert_same_checkpoint(reference_run, run)


def test_ctrl_c_saves_a_checkpoint_that_resume_continues(reference_run, corpus_file, tmp_path, monkeypatch, capsys):
    run = str(tmp_path / "run")
    real_next = OffsetBatches.__next__

    def next_with_ctrl_c(self):
        if self.position == 2 * 8:  # about to read step 3's segment: press Ctrl-C
            os.kill(os.getpid(), signal.SIGINT)
        return real_next(self)

    monkeypatch.setattr(OffsetBatches, "__next__", next_with_ctrl_c)
    common = ["--corpus", corpus_file, "--dropout", "0.3", "--eval-every", "4", "--out", run]
    assert _train(*common, "--steps", "8") == 130
    assert "interrupted at step 3" in capsys.readouterr().out
    assert int(_ckpt(run)[0][".step"]) == 3
    assert not os.path.exists(os.path.join(run, cli.METRICS))
    monkeypatch.setattr(OffsetBatches, "__next__", real_next)
    assert _train("--out", run, "--resume") == 0
    _assert_same_checkpoint(reference_run, run)


def test_resume_errors(reference_run, corpus_file, tmp_path, capsys):
    capsys.readouterr()
    assert _train("--out", reference_run) == 2
    assert "already holds a run; pass --resume" in capsys.readouterr().err
    assert _train("--out", reference_run, "--resume", "--hidden", "32") == 2
    assert "--hidden 32 (saved 16)" in capsys.readouterr().err
    assert _train("--out", str(tmp_path / "none"), "--resume") == 2
    assert "no checkpoint to resume" in capsys.readouterr().err
    # another corpus with a different alphabet
    other = tmp_path / "other.txt"
    other.write_text(_text().upper(), encoding="utf-8")
    assert _train("--out", reference_run, "--resume", "--corpus", str(other), "--steps", "9") == 2
    err = capsys.readouterr().err
    assert "vocabulary mismatch" in err and "new token(s)" in err
    assert cli.main(["eval", "--run", reference_run, "--corpus", str(other)]) == 2
    assert "vocabulary mismatch" in capsys.readouterr().err
    assert int(_ckpt(reference_run)[0][".step"]) == 8  # untouched


def test_generate(reference_run, capsys):
    capsys.readouterr()
    assert cli.main(["generate", "--run", reference_run, "--prompt", "the ca", "--length", "15",
                     "--temperature", "0"]) == 0
    greedy = capsys.readouterr().out
    assert greedy.startswith("the ca") and len(greedy) == len("the ca") + 15 + 1
    assert cli.main(["generate", "--run", reference_run, "--prompt", "the ca", "--length", "15", "--top-k", "1"]) == 0
    assert capsys.readouterr().out == greedy  # top-1 sampling is greedy
    outs = []
    for _ in range(2):
        assert cli.main(["generate", "--run", reference_run, "--prompt", "the ca", "--length", "15", "--seed", "3",
                         "--temperature", "1.5"]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1] and outs[0] != greedy and len(outs[0]) == len(greedy)
    assert cli.main(["generate", "--run", reference_run, "--prompt", "Zebra"]) == 2
    assert "missing from the vocabulary" in capsys.readouterr().err
    assert cli.main(["generate", "--run", reference_run, "--top-k", "0"]) == 2
    assert "--top-k must be in [1," in capsys.readouterr().err


def test_ptb_format_word_level(tmp_path, capsys):
    d = tmp_path / "ptb"
    d.mkdir()
    text = _text(300, seed=1).replace(".", "")
    lines = text.splitlines()
    (d / "ptb.train.txt").write_text("\n".join(" " + l for l in lines[:240]) + "\n", encoding="utf-8")
    (d / "ptb.valid.txt").write_text("\n".join(lines[240:270]) + "\n", encoding="utf-8")
    (d / "ptb.test.txt").write_text("\n".join(lines[270:]) + " <unk>\n", encoding="utf-8")
    run = str(tmp_path / "run")
    assert _train("--corpus", str(d), "--format", "ptb", "--level", "word", "--steps", "3", "--out", run,
                  "--hidden", "8", "--tie") == 0
    out = capsys.readouterr().out
    assert "Penn-Treebank format" in out and "vocabulary 15" in out  # 13 words + <eos> + <unk>
    m = _metrics(run)
    assert "val_bpc" not in m and m["val_perplexity"] == pytest.approx(math.exp(m["val_loss"]))
    assert m["vocab_size"] == 15
    assert cli.main(["generate", "--run", run, "--prompt", "the cat", "--length", "12"]) == 0
    words = capsys.readouterr().out.split()
    assert words[:2] == ["the", "cat"] and len(words) >= 3


def test_epochs_and_default_corpus(tmp_path, capsys, corpus_file):
    run = str(tmp_path / "epochs")
    # tiny.txt: 80% for training; 4 streams of n // 4 steps hold (n // 4) // 8 segments each
    assert _train("--corpus", corpus_file, "--dropout", "0.3", "--epochs", "1", "--out", run,
                  "--eval-every", "1000") == 0
    n = len(_text()) * 8 // 10
    assert _metrics(run)["steps"] == (n // 4) // 8
    capsys.readouterr()
    run = str(tmp_path / "default")
    assert cli.main(["train", "--hidden", "8", "--embed", "4", "--batch-size", "2", "--seq-len", "16", "--steps", "1",
                     "--eval-batch-size", "4096", "--out", run, "--no-progress", "--sample-length", "5"]) == 0
    out = capsys.readouterr().out
    assert "default corpus: Python" in out and "standard library" in out and ".py .." in out


@pytest.mark.parametrize(
    "content, match",
    [
        (b"", "is empty"),
        (b"\x7fELF\x02\x01\x01\x00\x00binary", "looks binary (NUL byte at offset 7)"),
        ("café\n".encode("latin-1") * 40, "not valid UTF-8"),
        ("hello\n".encode("utf-16") * 40, "UTF-16 encoded"),
    ],
)
def test_bad_corpus_files_give_clear_errors(tmp_path, capsys, content, match):
    p = tmp_path / "bad.txt"
    p.write_bytes(content)
    assert _train("--corpus", str(p), "--out", str(tmp_path / "run")) == 2
    err = capsys.readouterr().err
    assert match in err and "bad.txt" in err and "Traceback" not in err
    assert not os.path.exists(tmp_path / "run" / cli.CHECKPOINT)


def test_bad_settings(tmp_path, corpus_file, capsys):
    capsys.readouterr()
    assert _train("--corpus", corpus_file, "--tie", "--out", str(tmp_path / "r")) == 2
    assert "hidden must equal embed; got hidden=16, embed=8" in capsys.readouterr().err
    assert _train("--corpus", corpus_file, "--batch-size", "4000", "--out", str(tmp_path / "r")) == 2
    assert "--batch-size 4000 x --seq-len 8 = 32000 tokens do not fit in the training split" in capsys.readouterr().err
    assert _train("--corpus", corpus_file, "--lr", "-1", "--out", str(tmp_path / "r")) == 2
    assert "--lr must be a positive number" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["train", "--steps", "3", "--epochs", "2"])  # argparse: mutually exclusive
    assert cli.main(["eval", "--run", str(tmp_path / "nothing")]) == 2
    assert "is not a finished or interrupted jaxrnn run" in capsys.readouterr().err


def test_huge_perplexities_print_in_a_few_digits():
    assert cli._ppl(3.14159) == "3.14" and cli._ppl(999999.0) == "999999.00"
    assert cli._ppl(math.exp(700)) == "1.01e+304"  # a diverged run: not 300 digits


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--lr", "nan"], "--lr must be a finite number, got nan (expected a positive number)"),
        (["--lr", "inf"], "--lr must be a finite number, got inf (expected a positive number)"),
        (["--clip", "nan"], "--clip must be a finite number, got nan (expected a number >= 0 (0 turns clipping off))"),
        (["--clip", "-1"], "--clip must be a number >= 0 (0 turns clipping off), got -1.0"),
        (["--dropout", "nan"], "--dropout must be a finite number, got nan (expected a number in [0, 1))"),
        (["--dropout", "1"], "--dropout must be a number in [0, 1), got 1.0"),
        (["--temperature", "inf"], "--temperature must be a finite number, got inf"),
        (["--seq-len", "0"], "--seq-len must be a positive int, got 0"),
        (["--max-skips", "0"], "--max-skips must be a positive int, got 0"),
        (["--seed", "-3"], "--seed must be an int >= 0, got -3"),
        (["--remat", "half"], "--remat must be none, step, sqrt or a positive int block length, got 'half'"),
        (["--remat", "0"], "--remat must be none, step, sqrt or a positive int block length, got '0'"),
        (["--cell", "lstmp", "--proj-size", "16"], "--proj-size must be in [1, --hidden) = [1, 16) (the projection "
                                                   "makes the state smaller), got 16"),
        (["--cell", "lstmp", "--proj-size", "0"], "--proj-size must be a positive int, got 0"),
        (["--cell", "mgu", "--proj-size", "4"], "--proj-size is for --cell lstmp only, got --proj-size 4 with --cell mgu"),
        (["--backend", "cuda"], "--backend must be one of xla, cudnn, auto, got 'cuda'"),
        (["--cell", "gru", "--backend", "cudnn"], "--backend cudnn runs --cell lstm only (cuDNN's LSTM), got --cell gru"),
        (["--seq-len", "1000"], "--batch-size 4 x --seq-len 1000 = 4000 tokens do not fit in the training split of "
                                "2298 tokens"),
    ],
)
def test_numeric_flags_must_be_finite_and_in_range(flags, message, corpus_file, tmp_path, capsys):
    capsys.readouterr()
    assert _train("--corpus", corpus_file, "--steps", "2", *flags, "--out", str(tmp_path / "r")) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not os.path.exists(tmp_path / "r" / cli.CONFIG)  # nothing written, no NaN in a config.json


def test_remat_is_recorded_and_trains(corpus_file, tmp_path):
    run = str(tmp_path / "run")
    assert _train("--corpus", corpus_file, "--steps", "2", "--remat", "SQRT", "--out", run) == 0
    with open(os.path.join(run, cli.CONFIG)) as f:
        assert json.load(f)["remat"] == "sqrt"
    assert math.isfinite(_metrics(run)["val_loss"])
    assert "remat" not in cli._FIXED_ON_RESUME  # a resumed run may change it (memory only)
    assert [cli._remat(v) for v in ("none", "step", "12", None, 12)] == [None, "step", 12, None, 12]


def test_backend_is_recorded_and_may_change_on_resume(corpus_file, tmp_path, capsys):
    """--backend auto trains (on the CPU it is the XLA path), is kept in config.json and
    may change on --resume; --backend cudnn without a CUDA GPU is refused before anything
    is written, naming the flag."""
    run = str(tmp_path / "run")
    assert _train("--corpus", corpus_file, "--steps", "2", "--backend", "AUTO", "--out", run) == 0
    with open(os.path.join(run, cli.CONFIG)) as f:
        assert json.load(f)["backend"] == "auto"
    assert "backend" not in cli._FIXED_ON_RESUME
    assert _train("--out", run, "--resume", "--steps", "3", "--backend", "xla") == 0
    with open(os.path.join(run, cli.CONFIG)) as f:
        assert json.load(f)["backend"] == "xla"
    assert tuple(cli.BACKENDS) == jr.cudnn.BACKENDS
    if not jr.cudnn.available():
        capsys.readouterr()
        assert _train("--corpus", corpus_file, "--steps", "2", "--backend", "cudnn", "--out", str(tmp_path / "r")) == 2
        err = capsys.readouterr().err
        assert "--backend cudnn needs a CUDA GPU" in err and "Traceback" not in err
        assert not os.path.exists(tmp_path / "r" / cli.CONFIG)
        # A run trained with --backend cudnn elsewhere is read here on the XLA path.
        saved = {**cli.TRAIN_DEFAULTS, "backend": "cudnn"}
        assert cli._resolve(saved, for_training=False)["backend"] == "auto"


def test_corrupt_config_json_is_named(reference_run, tmp_path, capsys):
    import shutil

    run = str(tmp_path / "run")
    shutil.copytree(reference_run, run)
    with open(os.path.join(run, cli.CONFIG), "w") as f:
        f.write('{"hidden": 16, "lr": NaN')  # cut short
    capsys.readouterr()
    for argv in (["train", "--out", run, "--resume", "--no-progress"], ["eval", "--run", run]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert f"{os.path.join(run, cli.CONFIG)} is not valid JSON (Expecting ',' delimiter at line 1, column 25)" in err
        assert "the file is damaged" in err and "Traceback" not in err


def _poison_loss(monkeypatch, poisoned):
    """Make the LM loss NaN (so the gradient is NaN) on every segment where
    ``poisoned(model, x)``; the step built with it lives in a throwaway cache."""
    import jax.numpy as jnp

    from jaxrnn import lm

    real = lm.loss

    def loss(model, params, carry, x, y, key=None):
        value, carry = real(model, params, carry, x, y, key)
        return value * jnp.where(poisoned(model, x), jnp.nan, 1.0), carry

    monkeypatch.setattr(lm, "loss", loss)
    monkeypatch.setattr(cli, "_CACHE", {})


def test_nonfinite_steps_are_skipped_counted_and_stop_the_run(tmp_path, monkeypatch, capsys):
    import jax.numpy as jnp

    text = list(_text())
    for pos in (20, 44, 52, 60):  # read by stream 0 in steps 3, 6, 7 and 8 (segments of 8)
        text[pos] = "~"  # sorts last: id V - 1
    p = tmp_path / "c.txt"
    p.write_text("".join(text), encoding="utf-8")
    _poison_loss(monkeypatch, lambda model, x: jnp.any(x == model.vocab_size - 1))
    run = str(tmp_path / "run")
    capsys.readouterr()
    assert _train("--corpus", str(p), "--steps", "12", "--out", run, "--max-skips", "3") == 1
    err = capsys.readouterr().err
    assert ("jaxrnn train: error: training diverged: stopped at step 8: the last 3 steps had a non-finite gradient "
            "and were skipped (max_skips=3); 4 skipped in all. Lower --lr or --clip, or continue with `jaxrnn train "
            f"--out {run} --resume --max-skips N` to allow more") in err
    arrays, meta = _ckpt(run)  # saved at the stop, with finite parameters
    assert int(arrays[".step"]) == 8 and meta["metadata"]["history"]["skipped_steps"] == [3, 6, 7, 8]
    assert all(np.isfinite(a).all() for k, a in arrays.items() if k.startswith(".params"))
    assert not os.path.exists(os.path.join(run, cli.METRICS))
    # continue: step 9 is finite again; skipped steps are counted in metrics.json and the summary
    assert _train("--out", run, "--resume", "--max-skips", "5") == 0
    assert "4 step(s) skipped for a non-finite gradient" in capsys.readouterr().out
    m = _metrics(run)
    assert m["skipped_steps"] == 4 and m["history"]["skipped_steps"] == [3, 6, 7, 8] and m["steps"] == 12
    assert m["history"]["train_loss"][2] is None and m["history"]["train_loss"][3] is not None  # NaN as JSON null


def test_runs_saved_before_skipping_still_evaluate_and_resume(reference_run, corpus_file, tmp_path, capsys):
    """A checkpoint whose optimizer state lacks the non-finite-skipping wrapper (written
    before the command skipped such steps) is read into today's state, counts at zero."""
    import shutil

    import jax

    run = str(tmp_path / "old")
    shutil.copytree(reference_run, run)
    path = os.path.join(run, cli.CHECKPOINT)
    cfg = cli._resolve(cli._saved_config(os.path.join(run, cli.CONFIG)))
    _, meta = checkpoint.load(path)
    model = cli._model(cfg, len(meta["metadata"]["vocab"]["tokens"]))
    now = checkpoint.restore_state(path, like=cli._template_state(cfg, model, cli._optimizer(cfg), shapes_only=True))
    old = now.state._replace(opt_state=now.state.opt_state.inner_state)
    checkpoint.save_state(path, old, position=now.position, metadata=now.metadata)
    assert not any("notfinite" in k for k in checkpoint.load(path)[0])
    capsys.readouterr()
    assert cli.main(["eval", "--run", run]) == 0
    assert json.loads(capsys.readouterr().out)["loss"] == pytest.approx(_metrics(reference_run)["val_loss"], rel=1e-6)
    assert _train("--out", run, "--resume", "--steps", "9") == 0
    arrays, _ = _ckpt(run)
    assert int(arrays[".step"]) == 9 and int(arrays[".opt_state.total_notfinite"]) == 0
    assert jax.tree_util.tree_structure(old.opt_state) != jax.tree_util.tree_structure(now.state.opt_state)


def test_cell_choices_are_the_builtin_cells():
    """``--cell`` offers exactly the built-in cells (jr.cells.BUILTIN, jr.lm.CELLS)."""
    assert tuple(cli.CELLS) == tuple(jr.cells.BUILTIN) == jr.lm.CELLS
    action = next(a for a in cli.build_parser()._subparsers._group_actions[0].choices["train"]._actions
                  if "--cell" in a.option_strings)
    assert tuple(action.choices) == cli.CELLS


def test_every_cell_name_parses():
    parser = cli.build_parser()
    for name in cli.CELLS:
        assert parser.parse_args(["train", "--cell", name]).cell == name
    assert parser.parse_args(["train", "--cell", "lstmp", "--proj-size", "3"]).proj_size == 3


def test_projected_lstm_trains_saves_its_proj_size_and_resumes(corpus_file, tmp_path, capsys):
    run = str(tmp_path / "run")
    assert _train("--corpus", corpus_file, "--cell", "lstmp", "--proj-size", "4", "--steps", "2", "--out", run) == 0
    with open(os.path.join(run, cli.CONFIG)) as f:
        saved = json.load(f)
    assert saved["cell"] == "lstmp" and saved["proj_size"] == 4
    assert "1 x LSTMP 16 -> 4" in capsys.readouterr().out
    arrays, _ = _ckpt(run)
    assert arrays[".params['out']['w']"].shape[0] == 4 and arrays[".params['rnn'][0]['w_hr']"].shape == (16, 4)
    assert _train("--out", run, "--resume", "--proj-size", "5") == 2
    assert "--proj-size 5 (saved 4)" in capsys.readouterr().err
    assert _train("--out", run, "--resume", "--steps", "3") == 0
    assert int(_ckpt(run)[0][".step"]) == 3
    assert cli.main(["eval", "--run", run]) == 0

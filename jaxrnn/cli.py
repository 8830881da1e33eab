"""The ``jaxrnn`` command: train, evaluate and sample RNN language models.

::

    jaxrnn train [--corpus PATH] [--level char|word] [--format text|ptb]
                 [--cell lstm|gru|rnn|rnn_relu|lstmp|lnlstm|lngru|mgu|indrnn|mingru|minlstm] [--proj-size P]
                 [--layers N] [--hidden H] [--embed E] [--dropout P] [--tie] [--remat none|step|sqrt|K]
                 [--backend xla|cudnn|auto] [--batch-size B] [--seq-len T] [--steps N | --epochs N]
                 [--optimizer adam|sgd] [--lr LR] [--clip C] [--seed S] [--eval-every N]
                 [--checkpoint-every N] [--max-skips N] [--out DIR] [--resume] [--devices N]
    jaxrnn eval --run DIR [--split valid|test]
    jaxrnn generate --run DIR [--prompt TEXT] [--length N] [--temperature T] [--top-k K]

``jaxrnn train`` with no arguments trains a character-level LSTM on the default corpus
(the Python standard library's source, see :func:`jaxrnn.corpus.load_default`).

Training is truncated BPTT over offset batches (:func:`jaxrnn.data.offset_batches`,
:func:`jaxrnn.tbptt.make_step`) with global-norm clipping (:func:`jaxrnn.clipped`), run by
:func:`jaxrnn.train.fit`: this module only reads the command line, the corpus and the
model, and writes the files. A step whose gradient is not finite is skipped (the
parameters keep their values) and counted; after ``--max-skips`` consecutive skipped
steps training stops with an error. The run directory ``DIR`` receives:

* ``config.json``: the corpus, model and training settings;
* ``checkpoint.safetensors``: parameters, optimizer state, carry (with the dropout
  key), step, stream position, vocabulary and history (written at the end, on Ctrl-C,
  after every validation and every ``--checkpoint-every`` steps; atomically, so a run
  killed at any moment resumes from the last one);
* ``metrics.json``: final validation and test loss / perplexity (/ bits per character),
  steps, skipped steps, tokens per second, wall time, and the curves' data;
* ``curves.png``: training and validation curves;
* ``sample.txt``: text generated at the end.

Ctrl-C stops after the current step, saves the checkpoint and exits with status 130;
``jaxrnn train --out DIR --resume`` continues exactly where it stopped (the same
parameters as an uninterrupted run). ``--steps`` / ``--epochs`` count from the start
of the run, so resuming with a larger value trains further.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Any, Sequence

import numpy as np

from jaxrnn import _validate

__all__ = ["main", "build_parser"]

CONFIG = "config.json"
CHECKPOINT = "checkpoint.safetensors"
METRICS = "metrics.json"
CURVES = "curves.png"
SAMPLE = "sample.txt"

#: Defaults of ``jaxrnn train``; a value given on the command line overrides them.
TRAIN_DEFAULTS: dict[str, Any] = {
    "corpus": None, "level": "char", "format": "text", "max_vocab": None,
    "cell": "lstm", "proj_size": None, "layers": 1, "hidden": 256, "embed": 64, "dropout": 0.0, "tie": False,
    "batch_size": 32, "seq_len": 64, "steps": None, "epochs": None,
    "optimizer": "adam", "lr": None, "clip": 5.0, "seed": 0, "eval_every": None,
    "eval_batch_size": None, "sample_length": None, "temperature": 0.8,
    "checkpoint_every": None, "max_skips": 10, "remat": None, "backend": "xla",
}
DEFAULT_STEPS = 800
DEFAULT_LR = {"adam": 2e-3, "sgd": 1.0}
# Settings that define the model, the data order and the optimizer: a resumed run must
# keep them (steps, epochs, eval_every and the sample settings may change). --corpus may
# point elsewhere (a moved file) if its vocabulary and length match the checkpoint's.
# --remat may change too: it changes the memory of a step, not the model (the values
# agree to float tolerance; with --dropout the masks drawn after the resume differ). So
# may --backend: it changes how the recurrence runs, not the model or its parameters.
_FIXED_ON_RESUME = ("level", "format", "max_vocab", "cell", "proj_size", "layers", "hidden", "embed", "dropout",
                    "tie", "batch_size", "seq_len", "optimizer", "lr", "clip", "seed")


#: The names ``--cell`` takes: those of ``jaxrnn.cells.BUILTIN`` (written out here so that
#: ``jaxrnn --help`` does not have to import JAX; a test keeps the two equal).
CELLS = ("lstm", "gru", "rnn", "rnn_relu", "lstmp", "lnlstm", "lngru", "mgu", "indrnn", "mingru", "minlstm")
#: The ``--cell`` names that take ``--proj-size`` (``jaxrnn.cells.PROJECTED``).
PROJECTED = ("lstmp",)
#: The ``--backend`` names (``jaxrnn.cudnn.BACKENDS``; a test keeps the two equal).
BACKENDS = ("xla", "cudnn", "auto")


class CLIError(Exception):
    """A bad command line or input: printed without a traceback, exit status 2."""


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jaxrnn", description="Train, evaluate and sample RNN language models with JAX.")
    sub = p.add_subparsers(dest="command", metavar="{train,eval,generate}")
    sub.required = True

    t = sub.add_parser("train", help="train a language model (TBPTT over offset batches)",
                       description="Train an RNN language model with truncated BPTT. Without --corpus it reads "
                                   "the Python standard library's source at character level.")
    S = argparse.SUPPRESS  # unset options stay absent, so --resume can tell them from defaults
    d = TRAIN_DEFAULTS
    t.add_argument("--corpus", default=S, metavar="PATH",
                   help="text file, or Penn-Treebank directory/file with --format ptb (default: Python stdlib source)")
    t.add_argument("--level", choices=["char", "word"], default=S, help=f"token level (default {d['level']})")
    t.add_argument("--format", choices=["text", "ptb"], default=S, help="plain text (80/10/10 split) or "
                   "ptb.{train,valid,test}.txt (default text)")
    t.add_argument("--max-vocab", type=int, default=S, metavar="N", help="word-level text: keep the N most frequent "
                   "tokens, the rest become <unk>")
    t.add_argument("--cell", choices=list(CELLS), default=S,
                   help="recurrent cell: rnn is the tanh Elman cell, lstmp the LSTM with projections (see --proj-size), "
                        "lnlstm / lngru layer-normalised, mgu the minimal gated unit, indrnn the independently "
                        f"recurrent ReLU cell (default {d['cell']})")
    t.add_argument("--proj-size", type=int, default=S, metavar="P", help="--cell lstmp only: size of the projected "
                   "state and of each layer's outputs, in [1, H) (default H // 2)")
    t.add_argument("--layers", type=int, default=S, metavar="N", help=f"stacked layers (default {d['layers']})")
    t.add_argument("--hidden", type=int, default=S, metavar="H", help=f"hidden size (default {d['hidden']})")
    t.add_argument("--embed", type=int, default=S, metavar="E", help=f"embedding size (default {d['embed']})")
    t.add_argument("--dropout", type=float, default=S, metavar="P", help="dropout on embeddings, between layers and "
                   "before the output (default 0)")
    t.add_argument("--tie", action="store_true", default=S, help="tie output weights to the embedding (hidden == embed)")
    t.add_argument("--remat", default=S, metavar="MODE", help="what the backward pass keeps: none (everything, the "
                   "default), step (each step's carry), sqrt (a carry every ~sqrt(T) steps) or an int K (every K "
                   "steps); with a mode set no (batch, T, vocab) logits are kept (see jaxrnn.lm)")
    t.add_argument("--backend", default=S, metavar="NAME", help="how the recurrence runs: xla (the default), cudnn "
                   "(--cell lstm on a CUDA GPU, through cuDNN's LSTM) or auto (cuDNN where it can run, else xla); "
                   "see jaxrnn.cudnn")
    t.add_argument("--batch-size", type=int, default=S, metavar="B", help=f"streams per batch (default {d['batch_size']})")
    t.add_argument("--seq-len", type=int, default=S, metavar="T", help=f"TBPTT segment length (default {d['seq_len']})")
    g = t.add_mutually_exclusive_group()
    g.add_argument("--steps", type=int, default=S, metavar="N", help=f"total training steps (default {DEFAULT_STEPS})")
    g.add_argument("--epochs", type=int, default=S, metavar="N", help="total passes over the training split")
    t.add_argument("--optimizer", choices=["adam", "sgd"], default=S, help="optimizer (default adam)")
    t.add_argument("--lr", type=float, default=S, metavar="LR", help="learning rate (default 2e-3 for adam, 1.0 for sgd)")
    t.add_argument("--clip", type=float, default=S, metavar="C", help="global gradient-norm clip, 0 for none (default 5)")
    t.add_argument("--seed", type=int, default=S, metavar="S", help="seed of initialisation, dropout, sampling (default 0)")
    t.add_argument("--eval-every", type=int, default=S, metavar="N", help="validate every N steps (default: 5 times per run)")
    t.add_argument("--eval-batch-size", type=int, default=S, metavar="B", help="rows for validation (default: --batch-size)")
    t.add_argument("--sample-length", type=int, default=S, metavar="N", help="tokens sampled at the end (default 500 "
                   "characters / 100 words)")
    t.add_argument("--temperature", type=float, default=S, metavar="T", help="temperature of the final sample (default 0.8)")
    t.add_argument("--checkpoint-every", type=int, default=S, metavar="N", help="also save a checkpoint every N steps "
                   "(default: after every validation only)")
    t.add_argument("--max-skips", type=int, default=S, metavar="N", help="stop after N consecutive steps skipped for a "
                   f"non-finite gradient (default {d['max_skips']})")
    t.add_argument("--out", default="jaxrnn-run", metavar="DIR", help="run directory (default ./jaxrnn-run)")
    t.add_argument("--resume", action="store_true", help="continue the run in DIR from its checkpoint")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--devices", type=int, default=1, metavar="N", help="data-parallel training over the first N local "
                   "devices: each takes B / N streams, so --batch-size must be a multiple of N (default 1)")

    e = sub.add_parser("eval", help="evaluate a trained run on its validation or test split")
    e.add_argument("--run", required=True, metavar="DIR", help="run directory written by jaxrnn train")
    e.add_argument("--split", choices=["valid", "test"], default="valid")
    e.add_argument("--corpus", default=None, metavar="PATH", help="read the corpus from here instead of the saved path")
    e.add_argument("--batch-size", type=int, default=None, metavar="B", help="rows (default: the run's eval batch size)")

    s = sub.add_parser("generate", help="generate text from a trained run")
    s.add_argument("--run", required=True, metavar="DIR", help="run directory written by jaxrnn train")
    s.add_argument("--prompt", default=None, metavar="TEXT", help="text to start from (default: a line break)")
    s.add_argument("--length", type=int, default=None, metavar="N", help="tokens to generate (default 500 characters / "
                   "100 words)")
    s.add_argument("--temperature", type=float, default=1.0, metavar="T", help="sampling temperature; 0 = greedy")
    s.add_argument("--top-k", type=int, default=None, metavar="K", help="sample among the K most likely tokens")
    s.add_argument("--seed", type=int, default=0, metavar="S")
    return p


# --------------------------------------------------------------------------- shared pieces


def _say(msg: str) -> None:
    print(msg, flush=True)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _checked(check, *args, **kwargs):
    """Run a :mod:`jaxrnn._validate` check, turning its ValueError into a CLIError."""
    try:
        return check(*args, **kwargs)
    except ValueError as e:
        raise CLIError(str(e)) from None


def _positive(name: str, v, allow_none: bool = False):
    """``v`` if it is a positive int (or, with ``allow_none``, ``None``); named as the flag ``--name``."""
    if v is None and allow_none:
        return None
    return _checked(_validate.positive_int, _flag(name), v)


def _resolve(cfg: dict, for_training: bool = True) -> dict:
    """Fill derived defaults and check values (finite, in range, named as flags); returns a new dict.

    ``for_training=False`` (``eval`` and ``generate`` of a saved run): a run trained with
    ``--backend cudnn`` is read on a machine without a CUDA GPU with ``auto`` instead (the
    same model and values, on the XLA path).
    """
    cfg = dict(cfg)
    if cfg["optimizer"] not in DEFAULT_LR:
        raise CLIError(f"--optimizer must be one of {sorted(DEFAULT_LR)}, got {cfg['optimizer']!r}")
    if cfg["lr"] is None:
        cfg["lr"] = DEFAULT_LR[cfg["optimizer"]]
    if cfg["steps"] is None and cfg["epochs"] is None:
        cfg["steps"] = DEFAULT_STEPS
    for k in ("layers", "hidden", "embed", "batch_size", "seq_len", "max_skips"):
        cfg[k] = _positive(k, cfg[k])
    for k in ("steps", "epochs", "eval_every", "eval_batch_size", "sample_length", "max_vocab", "checkpoint_every"):
        cfg[k] = _positive(k, cfg[k], allow_none=True)
    cfg["lr"] = _checked(_validate.positive, "--lr", cfg["lr"])
    cfg["clip"] = _checked(_validate.number, "--clip", cfg["clip"], low=0, note="(0 turns clipping off)")
    cfg["dropout"] = _checked(_validate.number, "--dropout", cfg["dropout"], low=0, high=1, high_open=True)
    cfg["temperature"] = _checked(_validate.number, "--temperature", cfg["temperature"], low=0,
                                  note="(0 = greedy)")
    cfg["seed"] = _checked(_validate.non_negative_int, "--seed", cfg["seed"])
    cfg["remat"] = _remat(cfg["remat"])
    cfg["proj_size"] = _proj_size(cfg["cell"], cfg["proj_size"], cfg["hidden"])
    cfg["backend"] = _backend(cfg.get("backend"), cfg["cell"], for_training)
    if cfg["corpus"] is not None:
        cfg["corpus"] = os.path.abspath(cfg["corpus"])
    return cfg


def _remat(v):
    """``--remat``: ``None``, ``"step"``, ``"sqrt"`` or a positive int, from the command
    line's text (``none``, ``step``, ``sqrt``, ``K``) or a saved config's value."""
    text = v.strip().lower() if isinstance(v, str) else v
    if text is None or text == "none":
        return None
    if text in ("step", "sqrt"):
        return text
    if isinstance(text, str) and text.isdigit():
        text = int(text)
    if isinstance(text, int) and not isinstance(text, bool) and text >= 1:
        return text
    raise CLIError(f"--remat must be none, step, sqrt or a positive int block length, got {v!r}")


def _backend(v, cell: str, for_training: bool = True) -> str:
    """``--backend``, checked against ``--cell`` and this machine (a saved config from
    before the flag existed has none: ``xla``)."""
    backend = "xla" if v is None else (v.strip().lower() if isinstance(v, str) else v)
    if backend not in BACKENDS:
        raise CLIError(f"--backend must be one of {', '.join(BACKENDS)}, got {v!r}")
    if backend == "cudnn":
        if cell != "lstm":
            raise CLIError(f"--backend cudnn runs --cell lstm only (cuDNN's LSTM), got --cell {cell}; "
                           "--backend auto takes cuDNN where it can and xla elsewhere")
        from jaxrnn import cudnn

        if not cudnn.available():
            if not for_training:
                return "auto"
            import jax

            raise CLIError(f"--backend cudnn needs a CUDA GPU, but JAX's default backend here is "
                           f"{jax.default_backend()!r}; use --backend xla or auto")
    return backend


def _proj_size(cell: str, proj_size, hidden: int):
    """``--proj-size`` checked against ``--cell`` and ``--hidden``; ``hidden // 2`` by default
    for ``--cell lstmp`` (the resolved value is what config.json keeps); ``None`` otherwise."""
    if cell not in PROJECTED:
        if proj_size is not None:
            raise CLIError(f"--proj-size is for --cell {' / '.join(PROJECTED)} only, got --proj-size {proj_size} "
                           f"with --cell {cell}")
        return None
    if proj_size is None:
        if hidden < 2:
            raise CLIError(f"--cell {cell} projects to --proj-size = --hidden // 2 by default, so --hidden must be "
                           f"at least 2, got {hidden}")
        return hidden // 2
    proj_size = _positive("proj_size", proj_size)
    if proj_size >= hidden:
        raise CLIError(f"--proj-size must be in [1, --hidden) = [1, {hidden}) (the projection makes the state "
                       f"smaller), got {proj_size}")
    return proj_size


def _load_corpus(cfg: dict, path_override: str | None = None):
    from jaxrnn import corpus as jc

    path = path_override if path_override is not None else cfg["corpus"]
    return jc.load_corpus(path, level=cfg["level"], format=cfg["format"], max_vocab=cfg.get("max_vocab"))


# The model, optimizer and jitted step of a configuration are built once per process, so
# that repeated calls of main() (tests, notebooks, eval after train) reuse the compiled
# functions: jax.jit caches by function identity.
_CACHE: dict = {}


def _cached(key, build):
    if key not in _CACHE:
        _CACHE[key] = build()
    return _CACHE[key]


def _model(cfg: dict, vocab_size: int):
    from jaxrnn import lm

    args = (vocab_size, cfg["cell"], cfg["hidden"], cfg["embed"], cfg["layers"], float(cfg["dropout"]),
            bool(cfg["tie"]), cfg.get("remat"), cfg.get("proj_size"), cfg.get("backend") or "xla")
    return _cached(("model",) + args, lambda: lm.language_model(*args))


def _optimizer(cfg: dict, skip: bool = True):
    import optax

    from jaxrnn.optim import clipped, skip_nonfinite

    def build():  # a step with a non-finite gradient changes nothing and is counted
        opt = optax.adam(cfg["lr"]) if cfg["optimizer"] == "adam" else optax.sgd(cfg["lr"])
        tx = clipped(opt, cfg["clip"]) if cfg["clip"] > 0 else opt
        return skip_nonfinite(tx) if skip else tx

    return _cached(("tx", cfg["optimizer"], float(cfg["lr"]), float(cfg["clip"]), skip), build)


def _step_fn(model, tx, mesh=None):
    from jaxrnn import lm, tbptt

    return _cached(("step", model, tx, mesh), lambda: tbptt.make_step(lm.loss_fn(model), tx, mesh=mesh))


def _mesh(devices: int, batch_size: int):
    """The data-parallel mesh of ``--devices N`` (``None`` for one device)."""
    devices = _positive("devices", devices)
    if batch_size % devices:
        raise CLIError(f"--batch-size {batch_size} must be a multiple of --devices {devices} (each device takes "
                       f"batch-size / devices streams)")
    if devices == 1:
        return None
    from jaxrnn import parallel

    try:
        return parallel.data_mesh(devices)
    except ValueError as e:
        raise CLIError(f"--devices {devices}: {e}") from None


def _template_state(cfg: dict, model, tx, shapes_only: bool = False):
    """A fresh training state: params from the seed, optimizer state, carry with dropout key.

    Built by one jitted function (one compilation rather than many small ones);
    ``shapes_only`` gives its ``jax.ShapeDtypeStruct`` tree (a template for restoring).
    """
    import jax

    from jaxrnn import lm, tbptt

    batch = cfg["batch_size"]

    def build():
        def fresh(seed):
            k_init, k_drop = jax.random.split(jax.random.key(seed))
            return tbptt.init_state(model.init(k_init), tx, lm.train_carry(model, batch, k_drop))

        return jax.jit(fresh)

    fresh = _cached(("state", model, tx, batch), build)
    if shapes_only:
        return jax.eval_shape(fresh, cfg["seed"])
    return fresh(cfg["seed"])


def _eval_rows(cfg: dict, n_tokens: int, override: int | None = None) -> int:
    rows = override or cfg.get("eval_batch_size") or cfg["batch_size"]
    if n_tokens < 2:
        raise CLIError(f"a split of {n_tokens} token(s) cannot be evaluated (need 2)")
    return max(1, min(rows, n_tokens - 1))


def _ppl(p: float) -> str:
    """A perplexity for messages: two decimals, or three significant digits once it is
    huge (a diverged run), rather than hundreds of digits."""
    return f"{p:.2f}" if p < 1e6 else f"{p:.3g}"


def _scores(nll: float, level: str) -> dict:
    out = {"loss": nll, "perplexity": math.exp(min(nll, 700.0))}
    if level == "char":
        out["bpc"] = nll / math.log(2.0)
    return out


def _read_json(path: str) -> dict:
    """A run's JSON file as a dict; a damaged file is a CLIError naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except json.JSONDecodeError as e:
        raise CLIError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); the file is "
                       "damaged: restore it or start a new run with another --out") from None
    except UnicodeDecodeError as e:
        raise CLIError(f"{path} is not valid JSON (not UTF-8: {e.reason} at byte {e.start}); the file is damaged") from None
    if not isinstance(obj, dict):
        raise CLIError(f"{path} must hold a JSON object, got a {type(obj).__name__}; the file is damaged")
    return obj


def _write_json(path: str, obj: Any) -> None:
    from jaxrnn.train import write_json

    write_json(path, obj)


def _saved_config(path: str) -> dict:
    """The config.json of a run, with the defaults of settings added since it was written."""
    saved = _read_json(path)
    unknown = sorted(set(saved) - set(TRAIN_DEFAULTS))
    if unknown:
        raise CLIError(f"{path} holds unknown settings {unknown}; it was not written by this jaxrnn train")
    return {**TRAIN_DEFAULTS, **saved}


def _load_run(run: str):
    """(config, model, vocab, state) of a run directory."""
    from jaxrnn import checkpoint
    from jaxrnn.corpus import Vocabulary

    cfg_path, ckpt_path = os.path.join(run, CONFIG), os.path.join(run, CHECKPOINT)
    for p in (cfg_path, ckpt_path):
        if not os.path.exists(p):
            raise CLIError(f"{run!r} is not a finished or interrupted jaxrnn run: {os.path.basename(p)} is missing")
    cfg = _resolve(_saved_config(cfg_path), for_training=False)
    _, meta = checkpoint.load(ckpt_path)
    info = meta.get("metadata", {})
    vocab = Vocabulary.from_dict(info["vocab"])
    model = _model(cfg, vocab.size)
    restored = _restore_run(ckpt_path, cfg, model, _optimizer(cfg))
    return cfg, model, vocab, restored


def _restore_run(path: str, cfg: dict, model, tx, batches=None):
    """:func:`jaxrnn.train.restore` of a run's checkpoint, also from runs written before
    the optimizer skipped non-finite steps: their optimizer state is the inner state of
    today's (``optax.apply_if_finite`` around it), which is wrapped with zero counts."""
    import jax.numpy as jnp
    import optax

    from jaxrnn import train

    try:
        return train.restore(path, like=_template_state(cfg, model, tx, shapes_only=True), batches=batches)
    except ValueError as error:
        if not isinstance(tx, optax.GradientTransformation) or "has no entries" not in str(error):
            raise
        legacy = _optimizer(cfg, skip=False)
        try:
            old = train.restore(path, like=_template_state(cfg, model, legacy, shapes_only=True), batches=batches)
        except ValueError:
            raise error from None
    wrapped = optax.ApplyIfFiniteState(notfinite_count=jnp.zeros([], jnp.int32), last_finite=jnp.array(True),
                                       total_notfinite=jnp.zeros([], jnp.int32), inner_state=old.state.opt_state)
    return old._replace(state=old.state._replace(opt_state=wrapped))


# --------------------------------------------------------------------------- train


def _cell_title(cfg: dict) -> str:
    """``LSTM 256``, or ``LSTMP 256 -> 128`` for a projected LSTM."""
    proj = f" -> {cfg['proj_size']}" if cfg.get("proj_size") else ""
    return f"{cfg['cell'].upper()} {cfg['hidden']}{proj}"


def _plot_curves(path: str, history: dict, level: str, title: str) -> None:
    """``jr.train.plot_history`` in bits per character, or in nats with perplexity on a
    second axis for word-level runs."""

    def perplexity_axis(ax):  # perplexity on the right, at round values within the loss range
        sec = ax.secondary_yaxis("right", functions=(lambda v: np.exp(np.clip(v, -50, 50)),
                                                     lambda p: np.log(np.maximum(p, 1e-12))))
        lo, hi = ax.get_ylim()
        ticks = [m * 10.0 ** k for k in range(0, 7) for m in (1, 2, 5) if lo <= math.log(m * 10.0 ** k) <= hi]
        sec.set_yticks(ticks)
        sec.set_yticklabels([f"{t:g}" for t in ticks])
        sec.set_ylabel("perplexity")

    from jaxrnn import train as _train

    char = level == "char"
    _train.plot_history(path, history, title=title, ylabel="bits per character" if char else "loss (nats per token)",
                        scale=(1.0 / math.log(2.0)) if char else 1.0, decorate=None if char else perplexity_axis)


def _sample_text(model, params, vocab, prompt: str | None, length: int, temperature: float, top_k, seed: int) -> tuple[str, str]:
    import jax

    from jaxrnn import corpus as jc
    from jaxrnn import lm

    if prompt is None or prompt == "":
        if vocab.level == "char":
            prompt = "\n" if "\n" in vocab else vocab.tokens[0]
        else:
            prompt = ""
    if vocab.level == "word":
        ids = vocab.encode(prompt, where="the prompt")
        ids = np.concatenate([[vocab.id(jc.EOS)], ids]).astype(np.int32)  # start of a sentence
    else:
        ids = vocab.encode(prompt, where="the prompt")
    if temperature == 0:
        out = lm.greedy(model, params, ids, length)
    else:
        out = lm.sample(model, params, jax.random.key(seed), ids, length, temperature=temperature, top_k=top_k)
    shown = prompt if vocab.level == "char" else vocab.decode(ids[1:])
    sep = "" if vocab.level == "char" or not shown else " "
    return shown, shown + sep + vocab.decode(np.asarray(out))


def _train(args: argparse.Namespace) -> int:
    import jax

    from jaxrnn import lm, train
    from jaxrnn import corpus as jc
    from jaxrnn.data import offset_batches

    given = {k: v for k, v in vars(args).items() if k in TRAIN_DEFAULTS}
    out = args.out
    cfg_path, ckpt_path = os.path.join(out, CONFIG), os.path.join(out, CHECKPOINT)
    if args.resume:
        if not os.path.exists(ckpt_path) or not os.path.exists(cfg_path):
            raise CLIError(f"--resume: no checkpoint to resume in {out!r} ({CHECKPOINT} and {CONFIG} are needed)")
        saved = _saved_config(cfg_path)
        check = _resolve({**saved, **given})
        changed = [k for k in _FIXED_ON_RESUME if k in given and check[k] != saved[k]]
        if changed:
            raise CLIError(
                "--resume keeps the run's settings; these differ from the saved ones: "
                + ", ".join(f"{_flag(k)} {check[k]!r} (saved {saved[k]!r})" for k in changed)
            )
        if "steps" in given:
            saved["epochs"] = None
        if "epochs" in given:
            saved["steps"] = None
        cfg = _resolve({**saved, **{k: v for k, v in given.items() if k not in _FIXED_ON_RESUME}})
    else:
        if os.path.exists(ckpt_path):
            raise CLIError(f"{out!r} already holds a run; pass --resume to continue it or choose another --out")
        cfg = _resolve({**TRAIN_DEFAULTS, **given})

    mesh = _mesh(args.devices, cfg["batch_size"])
    corpus = _load_corpus(cfg)
    _say(f"corpus: {corpus.description}")
    _say(f"splits: train {len(corpus.train):,} / valid {len(corpus.valid):,} / test {len(corpus.test):,} tokens")
    vocab = corpus.vocab
    model = _model(cfg, vocab.size)
    tx = _optimizer(cfg)
    B, T = cfg["batch_size"], cfg["seq_len"]
    if B * T > len(corpus.train):
        raise CLIError(f"--batch-size {B} x --seq-len {T} = {B * T} tokens do not fit in the training split of "
                       f"{len(corpus.train)} tokens (each of the --batch-size streams needs one segment of --seq-len "
                       "tokens): lower --batch-size or --seq-len, or use a longer corpus")
    batches = offset_batches(corpus.train, B, T, epochs=cfg["epochs"])
    total = cfg["steps"] if cfg["steps"] is not None else cfg["epochs"] * (batches.steps_per_epoch // T)
    if total < 1:
        raise CLIError(f"--epochs {cfg['epochs']} gives no full segment of --seq-len {T} tokens per stream")
    eval_every = cfg["eval_every"] or max(1, math.ceil(total / 5))

    restored = False
    if args.resume:
        try:
            restored = _restore_run(ckpt_path, cfg, model, tx, batches=batches)
        except ValueError as e:
            raise CLIError(f"cannot resume from {ckpt_path}: {e}") from None
        try:
            jc.check_same_vocabulary(jc.Vocabulary.from_dict(restored.metadata["vocab"]), vocab, "the corpus now")
        except ValueError as e:
            raise CLIError(str(e)) from None
        state = restored.state
        _say(f"resuming {out} at step {int(state.step)} of {total}")
    else:
        state = _template_state(cfg, model, tx)
    host = lambda p: p  # noqa: E731
    if mesh is not None:  # parameters and optimizer state on every device, the streams split
        from jaxrnn import parallel

        state = parallel.shard_state(state, mesh)
        host = parallel.gather  # evaluate and sample on one device
        if restored:
            restored = restored._replace(state=state)
    os.makedirs(out, exist_ok=True)
    _write_json(cfg_path, {k: cfg[k] for k in TRAIN_DEFAULTS})
    n_params = sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(state.params))
    _say(f"model: {cfg['layers']} x {_cell_title(cfg)}, embed {cfg['embed']}, vocabulary "
         f"{vocab.size}, dropout {cfg['dropout']}, tie {cfg['tie']}"
         + (f", remat {cfg['remat']}" if cfg["remat"] is not None else "")
         + (f", backend {cfg['backend']}" if cfg["backend"] != "xla" else "") + f": {n_params:,} parameters")
    _say(f"training: {total} steps of {B} x {T} tokens, {cfg['optimizer']} lr {cfg['lr']}, clip {cfg['clip']}, "
         f"validation every {eval_every} steps -> {out}"
         + (f", data-parallel over {args.devices} devices" if mesh is not None else ""))

    eval_rows = _eval_rows(cfg, len(corpus.valid))

    def validate(st) -> float:
        return lm.evaluate(model, host(st.params), corpus.valid, eval_rows, T)

    def eval_message(step: int, values: dict) -> str:
        nll = values["loss"]
        msg = f"step {step}: validation loss {nll:.4f}, perplexity {_ppl(math.exp(min(nll, 700)))}"
        if vocab.level == "char":
            msg += f", {nll / math.log(2):.4f} bits/char"
        return msg

    result = train.fit(
        _step_fn(model, tx, mesh), state, batches, num_steps=total, evaluate=validate, eval_every=eval_every,
        checkpoint=ckpt_path, checkpoint_every=cfg["checkpoint_every"], resume=restored,
        metadata={"vocab": vocab.to_dict(), "config": cfg, "corpus": corpus.description},
        max_skips=cfg["max_skips"], progress=not args.no_progress, tokens_per_step=B * T,
        postfix=lambda loss: {"ppl": _ppl(math.exp(min(loss, 700)))}, format_eval=eval_message, log=_say,
    )
    state, history, elapsed = result.state, result.history, result.elapsed
    wall0 = time.perf_counter() - elapsed["wall_seconds"]
    if result.stopped == "interrupted":
        _say(f"continue with `jaxrnn train --out {out} --resume`")
        return 130
    if result.stopped == "nonfinite":
        print(f"jaxrnn train: error: training diverged: {result.message}. Lower --lr or --clip, or continue with "
              f"`jaxrnn train --out {out} --resume --max-skips N` to allow more", file=sys.stderr)
        return 1

    steps_done = result.step
    if history["val_steps"] and history["val_steps"][-1] == steps_done:
        val_nll = history["val_loss"][-1]
    else:
        val_nll = validate(state)
    test_nll = lm.evaluate(model, host(state.params), corpus.test, _eval_rows(cfg, len(corpus.test)), T)
    train_tokens = steps_done * B * T
    later = elapsed["train_seconds"] - elapsed["first_step_seconds"]
    later_steps = steps_done - elapsed["sessions"]
    recent = [v for v in history["train_loss"][-50:] if v is not None]
    metrics_out = {
        **{f"val_{k}": v for k, v in _scores(val_nll, vocab.level).items()},
        **{f"test_{k}": v for k, v in _scores(test_nll, vocab.level).items()},
        "steps": steps_done,
        "skipped_steps": len(history["skipped_steps"]),
        "tokens": train_tokens,
        "tokens_per_s": train_tokens / max(elapsed["train_seconds"], 1e-9),
        "tokens_per_s_after_first_step": (later_steps * B * T / later) if later_steps > 0 and later > 0 else None,
        "train_seconds": elapsed["train_seconds"],
        "first_step_seconds": elapsed["first_step_seconds"],
        "eval_seconds": elapsed["eval_seconds"],
        "wall_seconds": time.perf_counter() - wall0,
        "train_loss_last": sum(recent) / len(recent) if recent else None,
        "parameters": n_params,
        "devices": args.devices,
        "vocab_size": vocab.size,
        "corpus": corpus.description,
        "config": {k: cfg[k] for k in TRAIN_DEFAULTS},
        "history": history,
        "versions": _versions(),
    }
    _write_json(os.path.join(out, METRICS), metrics_out)
    title = (f"{cfg['layers']}x{_cell_title(cfg)}, {vocab.level} level, "
             f"{steps_done} steps: val {'bpc %.3f' % metrics_out['val_bpc'] if vocab.level == 'char' else 'ppl %.1f' % metrics_out['val_perplexity']}")
    _plot_curves(os.path.join(out, CURVES), history, vocab.level, title)
    length = cfg["sample_length"] or (500 if vocab.level == "char" else 100)
    _, text = _sample_text(model, host(state.params), vocab, None, length, cfg["temperature"], None, cfg["seed"])
    with open(os.path.join(out, SAMPLE), "w", encoding="utf-8") as f:
        f.write(text + "\n")
    summary = f"done: {steps_done} steps, validation loss {val_nll:.4f} (perplexity {_ppl(metrics_out['val_perplexity'])}"
    if vocab.level == "char":
        summary += f", {metrics_out['val_bpc']:.4f} bits/char"
    summary += (f"), test perplexity {_ppl(metrics_out['test_perplexity'])}; {metrics_out['tokens_per_s']:,.0f} "
                f"training tokens/s, {metrics_out['wall_seconds']:.1f} s in all")
    if history["skipped_steps"]:
        summary += f"; {len(history['skipped_steps'])} step(s) skipped for a non-finite gradient"
    _say(summary)
    _say(f"wrote {os.path.join(out, METRICS)}, {os.path.join(out, CURVES)}, {ckpt_path}")
    _say(f"--- sample (temperature {cfg['temperature']}) ---\n{text}\n---")
    return 0


def _versions() -> dict:
    import platform

    import jax
    import jaxlib

    return {"python": platform.python_version(), "jax": jax.__version__, "jaxlib": jaxlib.__version__,
            "platform": platform.platform(), "devices": str(jax.devices())}


# --------------------------------------------------------------------------- eval, generate


def _eval(args: argparse.Namespace) -> int:
    from jaxrnn import corpus as jc
    from jaxrnn import lm

    cfg, model, vocab, restored = _load_run(args.run)
    corpus = _load_corpus(cfg, args.corpus)
    try:
        jc.check_same_vocabulary(vocab, corpus.vocab, "the corpus now")
    except ValueError as e:
        raise CLIError(str(e)) from None
    tokens = corpus.split(args.split)
    if args.batch_size is not None:
        _positive("batch_size", args.batch_size)
    rows = _eval_rows(cfg, len(tokens), args.batch_size)
    nll = lm.evaluate(model, restored.state.params, tokens, rows, cfg["seq_len"])
    result = {"split": args.split, "step": int(restored.state.step), "tokens": int(len(tokens)), **_scores(nll, vocab.level)}
    print(json.dumps(result))
    return 0


def _generate(args: argparse.Namespace) -> int:
    cfg, model, vocab, restored = _load_run(args.run)
    length = args.length if args.length is not None else (500 if vocab.level == "char" else 100)
    _positive("length", length)
    _checked(_validate.number, "--temperature", args.temperature, low=0, note="(0 = greedy)")
    _checked(_validate.non_negative_int, "--seed", args.seed)
    if args.top_k is not None and not 1 <= args.top_k <= vocab.size:
        raise CLIError(f"--top-k must be in [1, {vocab.size}] (the vocabulary size), got {args.top_k}")
    _, text = _sample_text(model, restored.state.params, vocab, args.prompt, length, args.temperature, args.top_k,
                           args.seed)
    print(text)
    return 0


# --------------------------------------------------------------------------- entry point


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 training diverged, 2 bad input, 130 interrupted)."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            return _train(args)
        if args.command == "eval":
            return _eval(args)
        return _generate(args)
    except (CLIError, ValueError) as e:
        print(f"jaxrnn {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

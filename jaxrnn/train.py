"""The training loop any ``loss_fn`` can use: progress, evaluation, checkpoints, exact resume.

:func:`fit` runs a step from :func:`jaxrnn.tbptt.make_step` or :func:`jaxrnn.bptt.make_step`
(or any callable ``step(state, *batch) -> (state, metrics)`` over a state with a
``.step`` counter) over an iterator of batches::

    for s in step_0 + 1 .. num_steps:
        state, metrics = step(state, *next(batches))
        every eval_every steps and after the last:  evaluate(state) -> history["val_*"]
        every checkpoint_every steps, after every evaluation, at the end, on Ctrl-C:
            one atomic file: state + batches position + history

and adds what a run needs around that loop:

* **Exact resume.** A checkpoint holds the state (parameters, optimizer state, carry,
  step), the position of the batches (``batches.state_dict()``: an
  :class:`~jaxrnn.data.OffsetBatches` stream or :class:`~jaxrnn.data.SequenceBatches`
  epoch order; for a plain iterator, the number of batches read, which are read again
  and dropped on resume) and the history. ``fit(..., resume=True)`` continues from it and
  ends with the parameters of an uninterrupted run, bit for bit: the same compiled step
  sees the same states and the same batches. Files are written atomically
  (:mod:`jaxrnn.checkpoint`), so a process killed at any moment leaves the last
  complete checkpoint.
* **Ctrl-C** (SIGINT) stops after the current step and saves; a second Ctrl-C stops at
  once.
* **Non-finite steps.** With an optimizer that skips non-finite gradients
  (``jr.clipped(..., skip_nonfinite=True)``) the skipped steps are counted (history
  ``"skipped_steps"``, the progress bar) and the loop stops after ``max_skips``
  consecutive ones. With an optimizer that does not skip, a non-finite gradient norm stops
  the loop without overwriting the last checkpoint.
* **Metrics and curves.** The history (per-step training metrics, evaluation results)
  goes to a JSON file (non-finite values as ``null``) and to a PNG plot (matplotlib,
  optional); a progress bar (tqdm, optional) shows the loss, speed and skipped steps.

Metrics are fetched from the device every ``fetch_every`` steps (and before evaluating,
saving or stopping), so the loop does not wait for each step.

Example::

  >>> import jax, jax.numpy as jnp, numpy as np, optax, jaxrnn as jr
  >>> cell = jr.rnn(8)
  >>> params = {"rnn": cell.init(jax.random.key(0), 1), "w": jnp.zeros((8, 1))}
  >>> def loss_fn(params, carry, x, y):
  ...     carry, hs = jr.unroll(cell, params["rnn"], x, carry)
  ...     return jnp.mean((hs @ params["w"] - y) ** 2), carry
  >>> series = np.sin(np.arange(2000) / 10.0).astype(np.float32)[:, None]
  >>> batches = jr.data.offset_batches(series[:-1], 4, 25, targets=series[1:])
  >>> tx = jr.clipped(optax.adam(1e-2), 1.0, skip_nonfinite=True)
  >>> state = jr.tbptt.init_state(params, tx, cell.initial_carry(4))
  >>> result = jr.train.fit(jr.tbptt.make_step(loss_fn, tx), state, batches, num_steps=30,
  ...                       progress=False, log=None)
  >>> result.stopped, int(result.state.step), len(result.history["train_loss"])
  ('done', 30, 30)
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from typing import Any, Callable, Iterable, NamedTuple

import jax
import numpy as np

from jaxrnn import checkpoint as _checkpoint
from jaxrnn import optim
from jaxrnn._validate import optional, positive_int

__all__ = ["fit", "FitResult", "restore", "Restored", "StopFlag", "write_json", "plot_history"]

# Keys of the checkpoint metadata that fit owns; the user's metadata may not use them.
_RESERVED = ("history", "elapsed", "loop")


class FitResult(NamedTuple):
    """What :func:`fit` returns.

    Attributes:
      state: the state after the last step taken (pass it on; the state given to
        :func:`fit` was donated to the first step).
      history: ``{"train_steps": [...], "train_loss": [...], "train_<metric>": [...],
        "val_steps": [...], "val_<name>": [...], "skipped_steps": [...]}``; a non-finite
        value is ``None``.
      stopped: ``"done"`` (``num_steps`` reached), ``"end_of_data"`` (the batches ran
        out), ``"interrupted"`` (Ctrl-C), ``"nonfinite"`` (``max_skips`` consecutive
        skipped steps, or a non-finite gradient the optimizer applied).
      step: the step counter at the end.
      elapsed: seconds spent (``train_seconds``, ``eval_seconds``, ``wall_seconds``,
        ``first_step_seconds``), summed over resumed sessions (``sessions``).
      message: a sentence saying why the loop stopped when it was not ``"done"``.
    """

    state: Any
    history: dict
    stopped: str
    step: int
    elapsed: dict
    message: str = ""


class Restored(NamedTuple):
    """What :func:`restore` returns: the state, the history and timings, the user's
    metadata and the batches position stored in a checkpoint written by :func:`fit`."""

    state: Any
    history: dict
    elapsed: dict
    metadata: dict
    position: Any
    loop: dict


def _new_history() -> dict:
    return {"train_steps": [], "train_loss": [], "val_steps": [], "val_loss": [], "skipped_steps": []}


def _new_elapsed() -> dict:
    return {"train_seconds": 0.0, "eval_seconds": 0.0, "wall_seconds": 0.0, "first_step_seconds": 0.0, "sessions": 0}


# --------------------------------------------------------------------------- files


def _jsonable(obj: Any) -> Any:
    """``obj`` with NumPy scalars as Python numbers and NaN / infinities as ``None``."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, np.ndarray) and obj.ndim == 0:
        return _jsonable(obj.item())
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically (a temporary file renamed over ``path``).

    NaN and infinities become ``null`` (JSON has no such numbers), so the file is always
    valid JSON.
    """
    path = os.fspath(path)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(_jsonable(obj), f, indent=2, sort_keys=True, allow_nan=False)
        f.write("\n")
    os.replace(tmp, path)


def plot_history(path: str | os.PathLike, history: dict, *, title: str | None = None, ylabel: str = "loss",
                 scale: float = 1.0, decorate: Callable[[Any], None] | None = None) -> bool:
    """Plot the training loss (per step and smoothed) and the validation loss to a PNG.

    ``scale`` multiplies every loss (e.g. ``1 / ln 2`` for bits); ``decorate(ax)`` may add
    to the matplotlib axes before the file is written (e.g. a second axis).
    Returns ``False`` (writing nothing) when matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.2))
    steps = np.asarray(history.get("train_steps", []))
    loss = np.asarray([np.nan if v is None else v for v in history.get("train_loss", [])], dtype=float) * scale
    if len(loss):
        ax.plot(steps, loss, color="0.75", lw=0.6, label="training (per step)")
        w = max(1, min(50, len(loss) // 10))
        if w > 1:
            smooth = np.convolve(loss, np.ones(w) / w, mode="valid")
            ax.plot(steps[w - 1:], smooth, color="tab:blue", lw=1.2, label=f"training ({w}-step mean)")
    if history.get("val_steps") and "val_loss" in history:
        val = np.asarray([np.nan if v is None else v for v in history["val_loss"]], dtype=float) * scale
        ax.plot(history["val_steps"], val, "o-", color="tab:red", label="validation")
    skipped = history.get("skipped_steps") or []
    if skipped:
        ax.plot(skipped, np.full(len(skipped), np.nanmin(loss) if np.isfinite(loss).any() else 0.0), "x",
                color="tab:orange", label=f"skipped (non-finite gradient): {len(skipped)}")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    if decorate is not None:
        decorate(ax)
    if title:
        ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.fspath(path), dpi=110)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------- checkpoints


def _position(batches: Any, read: int) -> Any:
    state_dict = getattr(batches, "state_dict", None)
    if callable(state_dict):
        return state_dict()
    return {"batches_read": read}


def _load_position(batches: Any, position: Any, path: str) -> None:
    load = getattr(batches, "load_state_dict", None)
    if callable(load):
        try:
            load(position)
        except (TypeError, ValueError) as e:
            raise ValueError(f"cannot restore the batches position saved in {path}: {e}") from None
        return
    if not (isinstance(position, dict) and "batches_read" in position):
        raise ValueError(
            f"{path} saved the position of batches with state_dict() ({position!r}); these batches have no "
            "load_state_dict() to restore it"
        )
    for i in range(int(position["batches_read"])):  # a plain iterator: read the consumed batches again
        try:
            next(batches)
        except StopIteration:
            raise ValueError(
                f"{path} was saved after {position['batches_read']} batches, but these batches end after {i}"
            ) from None


def _k1k2_template(path: str, like: Any) -> Any:
    """A TBPTT(k1, k2) state's history fills during training, so a fresh state (history
    ``None``) is not a template of a saved one: take the history's shapes from the file."""
    from jaxrnn.tbptt import K1K2State

    if not isinstance(like, K1K2State) or like.history_x is not None or not os.path.isfile(path):
        return like
    arrays, _ = _checkpoint.load(path)
    hist = {k: v for k, v in arrays.items() if k.startswith((".history_x", ".history_y"))}
    if not hist:
        return like
    if set(hist) != {".history_x", ".history_y"}:
        raise ValueError(
            f"{path} holds a TBPTT(k1, k2) history of pytrees ({', '.join(sorted(hist)[:4])}); pass a template "
            "state whose history_x / history_y have that structure"
        )
    return like._replace(**{k[1:]: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in hist.items()})


def restore(path: str | os.PathLike, like: Any, batches: Any = None) -> Restored:
    """Read a checkpoint written by :func:`fit` and move ``batches`` to its position.

    Args:
      path: the checkpoint file.
      like: a state with the saved structure (e.g. a freshly initialised
        ``jr.tbptt.init_state(...)``) or its ``jax.eval_shape``.
      batches: the iterator to restore the position of (``None``: leave it).

    Returns:
      A :class:`Restored`.

    Raises:
      ValueError: a file that is not a checkpoint of ``fit`` (the message names it), or a
        state, position or layout that does not match.
    """
    path = os.fspath(path)
    r = _checkpoint.restore_state(path, _k1k2_template(path, like))
    meta = r.metadata if isinstance(r.metadata, dict) else {}
    if "history" not in meta:
        raise ValueError(f"{path} was not written by jr.train.fit (its metadata holds no training history)")
    if batches is not None:
        _load_position(batches, r.position, path)
    user = {k: v for k, v in meta.items() if k not in _RESERVED}
    return Restored(r.state, meta["history"], {**_new_elapsed(), **meta.get("elapsed", {})}, user, r.position,
                    meta.get("loop", {}))


# --------------------------------------------------------------------------- Ctrl-C


class StopFlag:
    """A SIGINT handler for a ``with`` block: the first Ctrl-C sets ``stop`` (the loop
    finishes its step and saves), a second raises ``KeyboardInterrupt``. Outside the
    main thread no handler is installed (Ctrl-C raises as usual)."""

    def __init__(self, install: bool = True):
        self.stop = False
        self._install = install
        self._old = None

    def __enter__(self) -> "StopFlag":
        if self._install:
            try:
                self._old = signal.signal(signal.SIGINT, self._handle)
            except ValueError:  # not the main thread
                self._old = None
        return self

    def _handle(self, signum, frame):
        if self.stop:
            raise KeyboardInterrupt
        self.stop = True

    def __exit__(self, *exc) -> bool:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        return False


# --------------------------------------------------------------------------- the loop


def _progress_bar(progress: Any, total: int, initial: int):
    if progress is False or progress is None:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=min(initial, total), unit="step", dynamic_ncols=True, file=sys.stderr)


def _as_float(v: Any) -> float | None:
    f = float(v)
    return f if math.isfinite(f) else None


def _eval_values(out: Any) -> dict:
    if isinstance(out, dict):
        items = out.items()
    else:
        items = [("loss", out)]
    values = {}
    for k, v in items:
        try:
            values[str(k)] = float(np.asarray(v))
        except (TypeError, ValueError):
            raise TypeError(f"evaluate(state) must return a number or a dict of numbers; {k!r} is {v!r}") from None
    return values


def _default_eval_message(step: int, values: dict) -> str:
    return f"step {step}: validation " + ", ".join(f"{k} {v:.4f}" for k, v in values.items())


def fit(
    step: Callable,
    state: Any,
    batches: Iterable,
    *,
    num_steps: int,
    evaluate: Callable[[Any], Any] | None = None,
    eval_every: int | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: bool | Restored = False,
    metadata: dict | None = None,
    metrics: str | os.PathLike | None = None,
    curves: str | os.PathLike | None = None,
    max_skips: int | None = None,
    progress: bool = True,
    tokens_per_step: int | None = None,
    postfix: Callable[[float], dict] | None = None,
    format_eval: Callable[[int, dict], str] | None = None,
    log: Callable[[str], Any] | None = print,
    fetch_every: int = 10,
    handle_sigint: bool = True,
) -> FitResult:
    """Train ``state`` with ``step`` over ``batches`` up to step ``num_steps``.

    Args:
      step: ``step(state, *batch) -> (state, metrics)``, e.g. from
        :func:`jaxrnn.tbptt.make_step` / :func:`jaxrnn.bptt.make_step`; ``metrics`` a
        dict of scalars (``"loss"`` is plotted; ``"skipped"``, the running count of
        skipped steps, is read to find them). A batch that is a tuple is spread over the
        arguments, ``step(state, x, y)``; anything else is passed as one argument.
      state: the initial state, with an int ``.step`` counter (a
        :class:`~jaxrnn.bptt.TrainState`, :class:`~jaxrnn.tbptt.K1K2State`); with
        ``resume=True``, also the template the checkpoint is restored into. It is donated
        to the first step: use ``result.state`` afterwards.
      batches: an iterator (or iterable) of batches. For exact resume it either has
        ``state_dict()`` / ``load_state_dict()`` (the ``jr.data`` batches) or yields the
        same batches again when created again (its first batches are then skipped).
      num_steps: train until ``state.step == num_steps`` (counted from the start of the
        run, so resuming with a larger value trains further).
      evaluate: ``evaluate(state) -> number | dict`` called after every ``eval_every``-th
        step and after the last one; results go to ``history["val_<name>"]`` (a number
        is ``"loss"``).
      eval_every: steps between evaluations (``None``: only after the last step).
      checkpoint: the checkpoint file to write (``None``: none). It is written after
        every evaluation, every ``checkpoint_every`` steps, at the end and on Ctrl-C.
      checkpoint_every: steps between checkpoints, besides those above.
      resume: ``True``: continue from ``checkpoint`` if that file exists (else start from
        ``state``); or a :class:`Restored` from :func:`restore` to continue from (``state``
        is then not used and may be ``None``).
      metadata: JSON-able dict stored in every checkpoint (a configuration, a vocabulary);
        :func:`restore` returns it.
      metrics: a JSON file for the history, steps, skipped steps and timings, written at
        the end (also on Ctrl-C or a stop).
      curves: a PNG file for the training and validation curves (needs matplotlib;
        skipped without it).
      max_skips: stop after this many consecutive steps skipped for a non-finite
        gradient; needs an optimizer that skips them (``jr.clipped(...,
        skip_nonfinite=True)``). ``None``: never stop.
      progress: show a tqdm progress bar on stderr (none when tqdm is missing).
      tokens_per_step: show tokens per second on the bar.
      postfix: ``postfix(mean_recent_loss) -> dict`` of more fields for the bar.
      format_eval: ``format_eval(step, values) -> str``, the line printed after an
        evaluation.
      log: where messages go (``print``; ``None``: nowhere). With a bar they are
        written above it.
      fetch_every: read the metrics from the device every this many steps.
      handle_sigint: catch Ctrl-C to stop after the current step and save.

    Returns:
      A :class:`FitResult` ``(state, history, stopped, step, elapsed, message)``.

    Raises:
      ValueError: a bad number (named as in this signature), a checkpoint that does not
        fit ``state``, or ``max_skips`` with an optimizer that does not skip.
    """
    if not callable(step):
        raise TypeError(f"step must be callable as step(state, *batch), got {type(step).__name__}")
    num_steps = positive_int("num_steps", num_steps)
    eval_every = optional(positive_int, "eval_every", eval_every)
    checkpoint_every = optional(positive_int, "checkpoint_every", checkpoint_every)
    max_skips = optional(positive_int, "max_skips", max_skips)
    fetch_every = positive_int("fetch_every", fetch_every)
    tokens_per_step = optional(positive_int, "tokens_per_step", tokens_per_step)
    if evaluate is not None and not callable(evaluate):
        raise TypeError(f"evaluate must be callable as evaluate(state), got {type(evaluate).__name__}")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise TypeError(f"metadata must be a dict or None, got {type(metadata).__name__}")
        clash = [k for k in _RESERVED if k in metadata]
        if clash:
            raise ValueError(f"metadata must not use the keys {clash}: fit stores its own history there")
    if checkpoint_every is not None and checkpoint is None:
        raise ValueError("checkpoint_every needs checkpoint= (the file to write)")
    checkpoint = None if checkpoint is None else os.fspath(checkpoint)
    if checkpoint is not None and os.path.isdir(checkpoint):
        raise ValueError(f"checkpoint must be a file path, got the directory {checkpoint!r}")
    batches = iter(batches)
    say = (lambda msg: None) if log is None else log

    history, elapsed, loop = _new_history(), _new_elapsed(), {"batches_read": 0, "consecutive_skips": 0}
    if isinstance(resume, Restored):
        restored = resume
    elif resume is True:
        if checkpoint is None:
            raise ValueError("resume=True needs checkpoint= (the file to continue from)")
        restored = None
        if os.path.exists(checkpoint):
            restored = restore(checkpoint, like=state, batches=batches)
            say(f"resuming from {checkpoint} at step {int(restored.state.step)}")
    elif resume is False:
        restored = None
    else:
        raise TypeError(f"resume must be True, False or a jr.train.Restored, got {type(resume).__name__}")
    if restored is not None:
        state, history, elapsed = restored.state, dict(restored.history), dict(restored.elapsed)
        history = {**_new_history(), **history}
        loop.update(restored.loop)
    if not hasattr(state, "step"):
        raise TypeError(f"state must have a .step counter (a jr.tbptt / jr.bptt TrainState), got {type(state).__name__}")
    opt_state = getattr(state, "opt_state", None)
    skipping = opt_state is not None and optim.has_skipping(opt_state)
    if max_skips is not None and not skipping:
        raise ValueError(
            "max_skips needs an optimizer that skips non-finite steps: build it with "
            "jr.clipped(..., skip_nonfinite=True) or jr.optim.skip_nonfinite(tx)"
        )

    start = int(np.asarray(state.step))
    wall0 = time.perf_counter() - elapsed["wall_seconds"]
    bar = _progress_bar(progress, num_steps, start)
    write = (lambda msg: bar.write(msg)) if (bar is not None and log is not None) else say
    pending: list = []  # (step number, metrics on the device) not yet read
    # the running count of skipped steps (metrics["skipped"]) at the last step read
    last_skipped = [int(np.asarray(optim.skipped_steps(opt_state))) if skipping else 0]
    nonfinite_applied: list = []

    def flush():
        if not pending:
            return
        fetched = jax.device_get([m for _, m in pending])
        for (s, _), m in zip(pending, fetched):
            history["train_steps"].append(s)
            for k, v in m.items():
                if k == "skipped" or np.ndim(v) != 0:
                    continue
                history.setdefault(f"train_{k}", []).append(_as_float(v))
            if "skipped" in m:
                total = int(m["skipped"])
                if total > last_skipped[0]:
                    history["skipped_steps"].append(s)
                    loop["consecutive_skips"] += 1
                else:
                    loop["consecutive_skips"] = 0
                last_skipped[0] = total
            elif "grad_norm" in m and not math.isfinite(float(m["grad_norm"])):
                nonfinite_applied.append(s)
        pending.clear()

    def save(st):
        if checkpoint is None:
            return
        elapsed["wall_seconds"] = time.perf_counter() - wall0
        meta = {**(metadata or {}), "history": _jsonable(history), "elapsed": elapsed, "loop": dict(loop)}
        _checkpoint.save_state(checkpoint, st, position=_position(batches, loop["batches_read"]), metadata=meta)

    def run_eval(st, s):
        t0 = time.perf_counter()
        values = _eval_values(evaluate(st))
        elapsed["eval_seconds"] += time.perf_counter() - t0
        history["val_steps"].append(s)
        for k, v in values.items():
            history.setdefault(f"val_{k}", []).append(_as_float(v))
        write((format_eval or _default_eval_message)(s, values))

    def update_bar(s):
        recent = [v for v in history["train_loss"][-10:] if v is not None]
        fields = {}
        if recent:
            mean = sum(recent) / len(recent)
            fields["loss"] = f"{mean:.3f}"
            if postfix is not None:
                fields.update(postfix(mean))
        if tokens_per_step is not None and s > start:
            fields["tok_s"] = f"{(s - start) * tokens_per_step / max(elapsed['train_seconds'], 1e-9):,.0f}"
        if history["skipped_steps"]:
            fields["skipped"] = str(len(history["skipped_steps"]))
        bar.set_postfix(fields, refresh=False)

    stopped, message = "done", ""
    s = start
    with StopFlag(handle_sigint) as flag:
        while s < num_steps:
            try:
                batch = next(batches)
            except StopIteration:
                stopped = "end_of_data"
                message = f"the batches ran out after step {s} (num_steps={num_steps})"
                break
            loop["batches_read"] += 1
            t0 = time.perf_counter()
            state, step_metrics = step(state, *batch) if isinstance(batch, tuple) else step(state, batch)
            s += 1
            pending.append((s, step_metrics))
            due_eval = evaluate is not None and (s == num_steps or (eval_every is not None and s % eval_every == 0))
            due_save = checkpoint_every is not None and s % checkpoint_every == 0
            if (s % fetch_every == 0 or due_eval or due_save or s == num_steps or flag.stop or s == start + 1
                    or loop["consecutive_skips"] > 0):  # after a skip, read every step until one is not
                flush()  # inside the timed region: asynchronous dispatch does not hide training time
            dt = time.perf_counter() - t0
            if s == start + 1:  # includes compilation, once per session
                elapsed["first_step_seconds"] += dt
                elapsed["sessions"] += 1
            elapsed["train_seconds"] += dt
            if nonfinite_applied:
                stopped = "nonfinite"
                message = (
                    f"step {nonfinite_applied[0]} had a non-finite gradient and the optimizer applied it, so the "
                    "parameters may hold NaN; stopped without saving (the last checkpoint is unchanged). Build the "
                    "optimizer with jr.clipped(..., skip_nonfinite=True) to skip such steps"
                )
                break
            if max_skips is not None and loop["consecutive_skips"] >= max_skips:
                stopped = "nonfinite"
                message = (
                    f"stopped at step {s}: the last {loop['consecutive_skips']} steps had a non-finite gradient and "
                    f"were skipped (max_skips={max_skips}); {len(history['skipped_steps'])} skipped in all"
                )
                break
            if due_eval:
                run_eval(state, s)
            if due_eval or due_save:
                save(state)
            if bar is not None:
                bar.update(1)
                if s % fetch_every == 0 or s == num_steps:
                    update_bar(s)
            if flag.stop:
                stopped = "interrupted"
                break
    flush()
    if bar is not None:
        bar.close()
    if stopped == "end_of_data" and evaluate is not None and s > start and (
            not history["val_steps"] or history["val_steps"][-1] != s):
        run_eval(state, s)
    if stopped != "nonfinite" or not nonfinite_applied:
        save(state)
    elapsed["wall_seconds"] = time.perf_counter() - wall0
    if stopped == "interrupted":
        message = f"interrupted at step {s}" + (f": checkpoint saved to {checkpoint}" if checkpoint else "")
    if message:
        write(message)
    if metrics is not None:
        write_json(metrics, {"steps": s, "stopped": stopped, "message": message,
                             "skipped_steps": len(history["skipped_steps"]), "history": history, "elapsed": elapsed})
    if curves is not None and not plot_history(curves, history):
        say(f"curves: matplotlib is not installed, {os.fspath(curves)} not written")
    return FitResult(state, history, stopped, s, elapsed, message)

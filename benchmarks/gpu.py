"""One command for a GPU machine: correctness, training-step speed and BPTT memory.

Usage (from a copy of the repository)::

    PYTHONPATH=. python benchmarks/gpu.py --out DIR           # on one GPU: under 5 minutes
    PYTHONPATH=. python benchmarks/gpu.py --quick --out DIR   # on a CPU (CI): under a minute

Writes ``DIR/gpu.md`` and ``DIR/gpu.json`` (``gpu_quick.*`` with ``--quick``); ``--out``
defaults to a new temporary folder, never ``benchmarks/results``. Needs jax, optax and
jaxrnn; PyTorch and Flax are imported when their cases run, so a missing one is reported
in the results and the other cases still run. Every case is isolated: an exception is
recorded in its row and the next case runs. Each section has a time budget (checked
between cases; ``--time-scale`` multiplies them), and a full run stops at a 285 s
deadline, writing what it measured. Exit status 1 when a correctness row fails, 2 when
the deadline cut the run short, else 0.

Sections:

(a) **Correctness on the device.** Every path of ``jr.unroll`` against a float64
    reference on the CPU (``jr.unroll``'s XLA path under ``jax.enable_x64``): outputs,
    final carries and gradients (every param and the inputs) of a loss reading all of
    them, as the max over leaves of ``max|a - b| / max|b|``; for an LSTM, an LSTM with
    ``lengths`` (one row of length 0), a bidirectional LSTM and a 2-layer stack, at the
    default matmul precision (cuDNN may then use TF32; the tolerance allows it) and at
    ``"highest"``. Paths:

    * ``xla``: default ``jr.unroll`` of ``jr.lstm`` (the fast path, ``jaxrnn/fused.py``);
    * ``generic``: a cell no fast path knows, so ``jr.unroll`` runs its generic
      ``lax.scan``. Built with ``jr.Cell(init=, initial_carry=, apply=, hidden_size=)`` where
      that constructor exists (user-written cells), else as ``jr.lstm(H)`` with its
      ``apply``/``step`` replaced by wrapping lambdas (the fast path checks that ``step``
      comes from ``jaxrnn.cells``); the rows record which, and that
      ``jr.fused.applies`` was False;
    * ``cudnn``: ``backend="cudnn"`` (``jaxrnn/cudnn.py``) on a CUDA device; elsewhere
      ``cudnn (lstm_ref)``, the same path with ``jax.experimental.rnn.lstm_ref`` in place
      of the kernel.

(b) **Training-step time**: forward + backward + an SGD update, jitted, timed to
    ``block_until_ready`` (PyTorch: ``torch.cuda.synchronize``), in interleaved rounds
    (``benchmarks/_common.interleaved``) with the median of per-round ratios to PyTorch's
    ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` (cuDNN on a GPU). Loss: mean squared error of
    every output against a fixed target. Shapes (B, L, I, H) = (64, 128, 512, 512) and
    (16, 1024, 1024, 1024); float32 and bfloat16 (jaxrnn's cuDNN path is float32 only).
    Competitors: jaxrnn's paths, PyTorch, Flax ``nn.RNN`` (``OptimizedLSTMCell``,
    ``GRUCell``, ``SimpleCell``). Each group has a time budget that caps its rounds, and
    the groups run in order of importance (LSTM float32 first); what the section's budget
    does not reach is reported as skipped.

(d) **Fast-path sweep** (after (b)): the float32 LSTM training step of (b) at its first
    shape through ``jr.unroll``'s fast path, for a few ``chunk`` / ``tangent_unroll``
    values of ``jaxrnn.fused.PLATFORM_CONFIG`` (the table's row for this platform is set
    while each variant is traced, then put back), in interleaved rounds with the ratio
    to the table's current row. This is the measurement that fills the table's ``"gpu"``
    row (not measured yet: it equals the CPU row); the rows name the platform, and
    each variant is an isolated case.

(c) **BPTT memory**: one ``jr.bptt.make_step`` training step (SGD) of an LSTM (B=32,
    I=H=512) over L = 512 and 2048 steps, ``remat`` None / "step" / "sqrt", the cuDNN
    path, and TBPTT (segments of T = 64 steps, ``jr.tbptt.make_step``) over the same L.
    Each case runs in a fresh subprocess so that
    ``jax.devices()[0].memory_stats()['peak_bytes_in_use']`` is its own; XLA's compiled
    memory analysis (temp bytes of the step) is recorded too, and is all the CPU backend
    reports (it has no ``memory_stats``). With ``--quick`` only the first case goes
    through a subprocess (to test that machinery) and the rest run in this process.

JAX is told not to preallocate GPU memory (``XLA_PYTHON_CLIENT_PREALLOCATE=false``
unless set), so that PyTorch has room in the same process and peaks are meaningful.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import ROOT, command_line, header_markdown, interleaved, machine_info, timer, write_results  # noqa: E402

if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

FULL = {
    "correct": dict(B=8, L=64, I=64, H=64),
    "correct_configs": ["lstm", "lstm, lengths", "bidirectional, lengths", "stack of 2, lengths"],
    "precisions": ("default", "highest"),
    "speed_shapes": [dict(B=64, L=128, I=512, H=512), dict(B=16, L=1024, I=1024, H=1024)],
    "memory": dict(B=32, I=512, H=512, lengths=(512, 2048), T=64),
    # (chunk, tangent_unroll) variants of the sweep; the table's current row is added.
    "sweep": [(8, 1), (8, 2), (16, 2), (16, 4), (32, 4), (32, 8)],
    "budget": {"correctness": 50.0, "speed": 90.0, "sweep": 35.0, "memory": 70.0},  # + start-up: under 5 min
    "group_s": 6.0,
    "rounds": (3, 7),
    "deadline_s": 285.0,
}
QUICK = {
    "correct": dict(B=4, L=6, I=4, H=5),
    "correct_configs": ["bidirectional, lengths"],
    "precisions": ("default",),  # the same computation on a CPU
    "speed_shapes": [dict(B=4, L=8, I=8, H=8)],
    "memory": dict(B=4, I=8, H=8, lengths=(16, 64), T=8),
    "sweep": [(4, 2)],
    "budget": {"correctness": None, "speed": 8.0, "sweep": 8.0, "memory": 12.0},  # every correctness row runs
    "group_s": 0.3,
    "rounds": (2, 2),
}
# Max relative error of float32 against the float64 reference. "default" allows TF32
# products on a GPU; on other devices the default precision is full float32.
TOLERANCE = {"highest": 1e-4, "default": 3e-2}
LOG = print


# --------------------------------------------------------------------------- helpers


def on_cuda() -> bool:
    from jaxrnn import cudnn

    return cudnn.available()


def isolated(rows: list, section: str, name: str, fn, **fields):
    """Run one case; append its row (``status`` ok / error / skipped, ``seconds``)."""
    t0 = time.perf_counter()
    row = {"section": section, "case": name, **fields}
    try:
        out = fn()
        row.update(out if isinstance(out, dict) else {})
        row.setdefault("status", "ok")
    except Skip as e:
        row["status"] = f"skipped: {e}"
    except Exception as e:  # noqa: BLE001 - every failure is reported, the next case runs
        row["status"] = "error"
        row["error"] = f"{type(e).__name__}: {e}"[:600]
        row["traceback"] = traceback.format_exc()[-2000:]
    row["seconds"] = round(time.perf_counter() - t0, 2)
    rows.append(row)
    LOG(f"[{section}] {name}: {row['status']}" + (f" ({row['error'][:200]})" if "error" in row else ""))
    return row


class Skip(Exception):
    pass


class Deadline(BaseException):
    """The global deadline passed (a BaseException, so that no case's handler takes it)."""


@contextlib.contextmanager
def x64():
    import jax

    ctx = getattr(jax, "enable_x64", None)
    if ctx is not None:
        with ctx(True):
            yield
        return
    import jax.numpy as jnp  # pragma: no cover - a jax without the context manager

    old = jnp.asarray(1.0).dtype == jnp.float64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", old)


def generic_cell(base):
    """A cell with ``base``'s maths that no fast path knows; returns ``(cell, how)``."""
    import jaxrnn as jr

    apply = lambda p, c, x: base.apply(p, c, x)  # noqa: E731 - a user's own function
    try:
        cell = jr.Cell(init=base.init, initial_carry=base.initial_carry, apply=apply, hidden_size=base.hidden_size)
        return cell, "jr.Cell(init=, initial_carry=, apply=, hidden_size=)"
    except TypeError:  # today's Cell needs project/step/kind: wrap step, so fused.applies is False
        step = lambda p, c, xp: base.step(p, c, xp)  # noqa: E731
        return base._replace(apply=apply, step=step), "jr.lstm(H)._replace(apply=lambda, step=lambda)"


def fast_path_taken(cell, params, xs, carry) -> bool | None:
    import jax.numpy as jnp

    from jaxrnn import fused

    try:
        return bool(fused.applies(cell, params, jnp.swapaxes(xs, 0, 1), carry))
    except Exception:  # noqa: BLE001 - the helper may change; then we do not know
        return None


def rel_err(a, b) -> float:
    """max over leaves of max|a - b| / max|b| (float64 on the host)."""
    import jax
    import numpy as np

    worst = 0.0
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        u = np.asarray(u, np.float64)
        v = np.asarray(v, np.float64)
        scale = max(float(np.max(np.abs(v))) if v.size else 0.0, 1e-30)
        worst = max(worst, float(np.max(np.abs(u - v))) / scale if v.size else 0.0)
    return worst


# --------------------------------------------------------------------------- (a) correctness


def correctness(cfg, configs, precisions, budget_s: float | None, rows: list) -> list:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jaxrnn as jr
    from jaxrnn import cudnn

    t_end = math.inf if budget_s is None else time.perf_counter() + budget_s
    B, L, I, H = cfg["B"], cfg["L"], cfg["I"], cfg["H"]
    cpu = jax.devices("cpu")[0]
    dev = jax.devices()[0]
    cuda = on_cuda()
    lengths = np.array([L, max(1, L // 2), 1, 0] + [L] * (B - 4))[:B]  # a row of length 0: jax#17966

    def net_for(config, path):
        def lstm():
            if path == "generic":
                return generic_cell(jr.lstm(H))[0]
            return jr.lstm(H)

        return {"lstm": lstm, "lstm, lengths": lstm,
                "bidirectional, lengths": lambda: jr.bidirectional(lstm()),
                "stack of 2, lengths": lambda: jr.stack([lstm(), lstm()]),
                "stack: bidirectional + lstm, lengths": lambda: jr.stack([jr.bidirectional(lstm()), lstm()])}[config]()

    paths = ["xla", "generic", "cudnn" if cuda else "cudnn (lstm_ref)"]
    rng = np.random.default_rng(0)
    xs64 = rng.normal(size=(B, L, I))

    for config in configs:
        ref_net = net_for(config, "xla")
        p64 = jax.tree.map(lambda a: np.asarray(a) + 0.1 * rng.normal(size=a.shape), ref_net.init(jax.random.key(1), I))
        kw = {"lengths": lengths} if "lengths" in config else {}
        out_shapes = jax.eval_shape(lambda: jr.unroll(ref_net, jax.tree.map(jnp.asarray, p64), jnp.asarray(xs64, jnp.float32),
                                                      **{k: jnp.asarray(v) for k, v in kw.items()}))
        w = jax.tree.map(lambda s: rng.normal(size=s.shape), out_shapes)

        def make_run(net, run_path, device, dtype):
            def unroll(p, x, n):
                extra = {"lengths": n} if n is not None else {}
                if run_path == "cudnn":
                    return jr.unroll(net, p, x, backend="cudnn", **extra)
                if run_path == "cudnn (lstm_ref)":
                    return cudnn.unroll(net, p, x, _impl=cudnn.lstm_reference, **extra)
                return jr.unroll(net, p, x, **extra)

            def loss(p, x, n, wt):
                out = unroll(p, x, n)
                return sum(jnp.sum(a * b) for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(wt)))

            @jax.jit
            def run(p, x, n, wt):
                return unroll(p, x, n), jax.grad(loss, argnums=(0, 1))(p, x, n, wt)

            put = lambda t: jax.device_put(jax.tree.map(lambda a: jnp.asarray(a, dtype), t), device)  # noqa: E731
            n = None if not kw else jax.device_put(jnp.asarray(kw["lengths"], jnp.int32), device)
            return lambda: jax.device_get(run(put(p64), put(xs64), n, put(w)))

        def reference():
            with x64():
                out = make_run(ref_net, "xla", cpu, jnp.float64)()
            dtypes = {str(np.asarray(a).dtype) for a in jax.tree.leaves(out)}
            if dtypes != {"float64"}:
                raise RuntimeError(f"the reference did not compute in float64 (dtypes {sorted(dtypes)})")
            return out

        ref_row = isolated(rows, "correctness", f"{config}: float64 CPU reference", lambda: {"_ref": reference()},
                           config=config, path="float64 reference (CPU)")
        ref = ref_row.pop("_ref", None)
        for path in paths:
            for precision in precisions:
                def case(path=path, precision=precision):
                    if ref is None:
                        raise RuntimeError("no float64 reference (see its row)")
                    if time.perf_counter() > t_end:
                        raise Skip("time budget of the section spent")
                    net = net_for(config, path)
                    extra = {}
                    if path == "generic":
                        cell, extra["generic_built_as"] = generic_cell(jr.lstm(H))
                        x32 = jnp.asarray(xs64, jnp.float32)
                        extra["fast_path_taken"] = fast_path_taken(cell, cell.init(jax.random.key(0), I), x32,
                                                                   cell.initial_carry(B))
                    ctx = jax.default_matmul_precision("highest") if precision == "highest" else contextlib.nullcontext()
                    with ctx:
                        got = make_run(net, path, cpu if path == "cudnn (lstm_ref)" and not cuda else dev, jnp.float32)()
                    (out_g, grads_g), (out_r, grads_r) = got, ref
                    e_out, e_grad = rel_err(out_g, out_r), rel_err(grads_g, grads_r)
                    tol = TOLERANCE[precision if dev.platform == "gpu" else "highest"]
                    ok = e_out <= tol and e_grad <= tol and all(np.all(np.isfinite(a)) for a in jax.tree.leaves(got))
                    return {"status": "ok" if ok else "FAIL", "rel_err_outputs": e_out, "rel_err_grads": e_grad,
                            "tolerance": tol, "device": str(dev if not path.endswith("(lstm_ref)") or cuda else cpu), **extra}

                isolated(rows, "correctness", f"{config}: {path}, precision {precision}", case,
                         config=config, path=path, precision=precision)
    return rows


# --------------------------------------------------------------------------- (b) speed


def jax_runner(apply_fn, params, x, y):
    """``run(n)`` of a jitted SGD training step of ``apply_fn(params, x) -> ys``."""
    import jax
    import jax.numpy as jnp

    def loss(p, x, y):
        return jnp.mean((apply_fn(p, x).astype(jnp.float32) - y) ** 2)

    @jax.jit
    def step(p, x, y):
        value, g = jax.value_and_grad(loss)(p, x, y)
        return jax.tree.map(lambda a, b: a - (0.01 * b).astype(a.dtype), p, g), value

    state = {"p": params}

    def once():
        state["p"], value = step(state["p"], x, y)
        return value

    jax.block_until_ready(once())  # compile
    return timer(once, jax.block_until_ready)


def torch_runner(kind, shape, dtype_name, on_gpu):
    try:
        import torch
    except ImportError as e:
        raise Skip(f"torch not importable ({e})")
    B, L, I, H = shape["B"], shape["L"], shape["I"], shape["H"]
    device = "cuda" if on_gpu and torch.cuda.is_available() else "cpu"
    dt = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype_name]
    cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn_tanh": torch.nn.RNN}[kind]
    torch.manual_seed(0)
    model = cls(I, H, batch_first=True).to(device=device, dtype=dt)
    x = torch.randn(B, L, I, device=device, dtype=dt)
    y = torch.randn(B, L, H, device=device, dtype=torch.float32)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if device == "cpu":
        torch.set_num_threads(1)  # the CPU check only: keeps a loaded CI machine from thrashing

    def once():
        out, _ = model(x)
        loss = ((out.float() - y) ** 2).mean()
        loss.backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.01 * p.grad
                p.grad = None
        return loss

    once()
    sync()
    return timer(once, lambda _: sync())


def flax_apply(kind, H, dtype):
    try:
        import flax.linen as nn
    except ImportError as e:
        raise Skip(f"flax not importable ({e})")
    cell = {"lstm": nn.OptimizedLSTMCell, "gru": nn.GRUCell, "rnn_tanh": nn.SimpleCell}[kind]
    return nn.RNN(cell(features=H, dtype=dtype, param_dtype=dtype))


def speed(cfg, budget_s: float, rows: list, groups: list) -> tuple[list, list]:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jaxrnn as jr

    t_end = time.perf_counter() + budget_s
    cuda = on_cuda()
    gpu = jax.default_backend() == "gpu"
    order = []
    for dtype_name in ("float32", "bfloat16"):
        for kind in ("lstm", "gru", "rnn_tanh"):
            for shape in cfg["speed_shapes"]:
                order.append((kind, dtype_name, shape))
    order.sort(key=lambda g: (g[1] != "float32", g[0] != "lstm", g[2]["L"]))

    for kind, dtype_name, shape in order:
        B, L, I, H = shape["B"], shape["L"], shape["I"], shape["H"]
        gname = f"{kind} {dtype_name} B={B} L={L} I={I} H={H}"
        group = {"group": gname, "kind": kind, "dtype": dtype_name, **shape, "runners": {}, "notes": []}
        groups.append(group)
        if time.perf_counter() > t_end:
            group["status"] = "skipped: time budget of the section spent"
            LOG(f"[speed] {gname}: skipped (time budget)")
            continue
        dt = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[dtype_name]
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.normal(size=(B, L, I)), dt)
        y = jnp.asarray(rng.normal(size=(B, L, H)), jnp.float32)
        base = {"lstm": lambda: jr.lstm(H), "gru": lambda: jr.gru(H), "rnn_tanh": lambda: jr.rnn(H)}[kind]()
        params = base.init(jax.random.key(0), I, dt)
        runners = {}

        def add(name, make):
            if time.perf_counter() > t_end:
                group["runners"][name] = {"status": "skipped: time budget of the section spent", "compile_s": 0.0}
                return
            row = isolated(rows, "speed", f"{gname}: {name} (compile)", lambda: {"_run": make()})
            run = row.pop("_run", None)
            if run is not None:
                runners[name] = run
            group["runners"][name] = {"status": row["status"], "compile_s": row["seconds"],
                                      **({"error": row["error"]} if "error" in row else {})}

        add("torch", lambda: torch_runner(kind, shape, dtype_name, gpu))
        add("jaxrnn xla", lambda: jax_runner(lambda p, x: jr.unroll(base, p, x)[1], params, x, y))
        if kind == "lstm":
            gen, how = generic_cell(base)
            group["notes"].append(f"generic path built as {how}")
            add("jaxrnn generic", lambda: jax_runner(lambda p, x: jr.unroll(gen, p, x)[1], params, x, y))
            if dtype_name == "float32":
                def make_cudnn():
                    if not cuda:
                        raise Skip("no CUDA device")
                    return jax_runner(lambda p, x: jr.unroll(base, p, x, backend="cudnn")[1], params, x, y)

                add("jaxrnn cudnn", make_cudnn)

        def make_flax():
            model = flax_apply(kind, H, dt)
            # Initialised in float32 (the orthogonal initialiser's QR has no bfloat16
            # kernel on a CPU), then cast: the model computes in `dt` either way.
            fparams = flax_apply(kind, H, jnp.float32).init(jax.random.key(0), x.astype(jnp.float32))
            fparams = jax.tree.map(lambda a: a.astype(dt), fparams)
            return jax_runner(lambda p, x: model.apply(p, x), fparams, x, y)

        add("flax nn.RNN", make_flax)
        if not runners:
            group["status"] = "error: no runner compiled"
            continue
        reference = "torch" if "torch" in runners else next(iter(runners))
        group["reference"] = reference
        try:
            per = {k: r(1) for k, r in runners.items()}
            slowest = max(per.values())
            reps = max(1, min(50, int(0.25 / max(slowest, 1e-6))))
            lo, hi = cfg["rounds"]
            round_s = sum(per.values()) * reps
            rounds = int(min(hi, max(lo, cfg["group_s"] // max(round_s, 1e-6))))
            res = interleaved(runners, rounds=rounds, reps=reps, reference=reference, log=LOG)
            group.update(status="ok", rounds=rounds, reps=reps)
            for k, v in res.items():
                group["runners"][k].update(median_ms=1e3 * v["median_s"], ratio_median=v["ratio_median"],
                                           ratio_min=v["ratio_min"], ratio_max=v["ratio_max"])
        except Exception as e:  # noqa: BLE001
            group["status"] = f"error: {type(e).__name__}: {e}"[:600]
        LOG(f"[speed] {gname}: {group['status']}")
    return rows, groups


# --------------------------------------------------------------------------- (d) fast-path sweep


def sweep(cfg, budget_s: float, rows: list, out: dict) -> dict:
    """Time the LSTM training step of (b)'s first shape for each (chunk, tangent_unroll)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jaxrnn as jr
    from jaxrnn import fused

    t_end = time.perf_counter() + budget_s
    platform = fused.current_platform()
    table_row = dict(fused.platform_config(platform))
    shape = cfg["speed_shapes"][0]
    B, L, I, H = shape["B"], shape["L"], shape["I"], shape["H"]
    out.update(platform=platform, table_row=table_row, has_row=platform in fused.PLATFORM_CONFIG, **shape,
               variants=[])
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(B, L, I)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(B, L, H)), jnp.float32)
    cell = jr.lstm(H)
    params = cell.init(jax.random.key(0), I, jnp.float32)
    values = [(table_row["chunk"], table_row["tangent_unroll"])]
    values += [v for v in cfg["sweep"] if v not in values]
    runners = {}
    for i, (chunk, t_unroll) in enumerate(values):
        name = f"chunk {chunk}, tangent_unroll {t_unroll}" + (" (table)" if i == 0 else "")
        variant = {"name": name, "chunk": chunk, "tangent_unroll": t_unroll}
        out["variants"].append(variant)
        if time.perf_counter() > t_end:
            variant["status"] = "skipped: time budget of the section spent"
            LOG(f"[sweep] {name}: skipped (time budget)")
            continue

        def make(chunk=chunk, t_unroll=t_unroll):
            # The row is read when the step is traced (in jax_runner's first call), so it
            # is set for the compilation only; the compiled step keeps it.
            saved = fused.PLATFORM_CONFIG.get(platform)
            fused.PLATFORM_CONFIG[platform] = {"chunk": chunk, "tangent_unroll": t_unroll}
            try:
                return {"_run": jax_runner(lambda p, x: jr.unroll(cell, p, x)[1], params, x, y)}
            finally:
                if saved is None:
                    del fused.PLATFORM_CONFIG[platform]
                else:
                    fused.PLATFORM_CONFIG[platform] = saved

        row = isolated(rows, "sweep", f"{name} (compile)", make, chunk=chunk, tangent_unroll=t_unroll)
        run = row.pop("_run", None)
        variant.update(status=row["status"], compile_s=row["seconds"], **({"error": row["error"]} if "error" in row else {}))
        if run is not None:
            runners[name] = run
    if not runners:
        out["status"] = "error: no variant compiled"
        return out
    reference = next(iter(runners))
    out["reference"] = reference
    try:
        per = {k: r(1) for k, r in runners.items()}
        reps = max(1, min(50, int(0.25 / max(max(per.values()), 1e-6))))
        lo, hi = cfg["rounds"]
        rounds = int(min(hi, max(lo, max(t_end - time.perf_counter(), cfg["group_s"]) // max(sum(per.values()) * reps, 1e-6))))
        res = interleaved(runners, rounds=rounds, reps=reps, reference=reference, log=LOG)
        out.update(status="ok", rounds=rounds, reps=reps)
        for v in out["variants"]:
            if v["name"] in res:
                r = res[v["name"]]
                v.update(median_ms=1e3 * r["median_s"], ratio_median=r["ratio_median"], ratio_min=r["ratio_min"],
                         ratio_max=r["ratio_max"])
    except Exception as e:  # noqa: BLE001
        out["status"] = f"error: {type(e).__name__}: {e}"[:600]
    LOG(f"[sweep] {platform}: {out['status']}")
    return out


# --------------------------------------------------------------------------- (c) memory


def memory_case(spec: dict) -> dict:
    """One memory case in this process: compiled temp bytes and, where the device reports
    it, the peak bytes in use after one training step (BPTT) or one pass over the
    segments (TBPTT)."""
    import jax
    import jax.numpy as jnp
    import optax

    import jaxrnn as jr

    B, I, H, L, mode = spec["B"], spec["I"], spec["H"], spec["L"], spec["mode"]
    if mode == "cudnn" and not on_cuda():
        raise Skip("no CUDA device")
    dev = jax.devices()[0]
    stats0 = dev.memory_stats() or {}
    cell = jr.lstm(H)
    remat = {"step": "step", "sqrt": "sqrt"}.get(mode)
    backend = "cudnn" if mode == "cudnn" else "xla"

    def loss_fn(p, carry, x, y):
        carry, hs = jr.unroll(cell, p, x, carry, remat=remat, backend=backend)
        return jnp.mean((hs - y) ** 2), carry

    tx = optax.sgd(0.01)
    params = cell.init(jax.random.key(0), I)
    module = jr.tbptt if mode.startswith("tbptt") else jr.bptt
    state = module.init_state(params, tx, cell.initial_carry(B))
    x = jnp.ones((B, L, I), jnp.float32)
    y = jnp.zeros((B, L, H), jnp.float32)
    if mode.startswith("tbptt"):
        T = spec["T"]
        step = jr.tbptt.make_step(loss_fn, tx, donate=False)
        seg = lambda a, k: jax.lax.dynamic_slice_in_dim(a, k * T, T, axis=1)  # noqa: E731
        compiled = step.jitted.lower(state, seg(x, 0), seg(y, 0)).compile()
        n_seg = L // T
        for k in range(n_seg):
            state, _ = step(state, seg(x, k), seg(y, k))
    else:
        step = jr.bptt.make_step(loss_fn, tx, donate=False)
        compiled = step.jitted.lower(state, x, y).compile()
        state, _ = step(state, x, y)
    jax.block_until_ready(state)
    try:
        m = compiled.memory_analysis()
        out = {"temp_bytes": int(m.temp_size_in_bytes) if m is not None else None}
    except Exception as e:  # noqa: BLE001 - a backend without the analysis
        out = {"temp_bytes": None, "memory_analysis_error": f"{type(e).__name__}: {e}"[:200]}
    stats = dev.memory_stats()
    if stats and "peak_bytes_in_use" in stats:
        out["peak_bytes_in_use"] = int(stats["peak_bytes_in_use"])
        out["bytes_in_use_before"] = int(stats0.get("bytes_in_use", 0))
    else:
        out["peak_bytes_in_use"] = None
    out["inputs_bytes"] = int(x.nbytes + y.nbytes)
    return out


def memory(cfg, budget_s: float, isolate_all: bool, rows: list) -> list:
    t_end = time.perf_counter() + budget_s
    m = cfg["memory"]
    modes = ["default", "step", "sqrt", f"tbptt T={m['T']}", "cudnn"]
    first = True
    for L in m["lengths"]:
        for mode in modes:
            spec = {"B": m["B"], "I": m["I"], "H": m["H"], "L": L, "mode": mode.split(" ")[0], "T": m["T"]}

            def case(spec=spec, sub=isolate_all or first):
                if time.perf_counter() > t_end:
                    raise Skip("time budget of the section spent")
                if not sub:
                    return {**memory_case(spec), "process": "this one"}
                env = dict(os.environ)
                env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
                proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--memory-case", json.dumps(spec)],
                                      capture_output=True, text=True, env=env,
                                      timeout=max(30.0, t_end - time.perf_counter() + 30))
                lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
                if proc.returncode != 0 or not lines:
                    raise RuntimeError(f"subprocess exit {proc.returncode}: {proc.stderr.strip()[-400:]}")
                res = json.loads(lines[-1][len("RESULT "):])
                if res.get("status", "").startswith("skipped"):
                    raise Skip(res["status"][len("skipped: "):])
                if res.get("status") == "error":
                    raise RuntimeError(res.get("error"))
                return {**{k: v for k, v in res.items() if k != "status"}, "process": "fresh subprocess"}

            isolated(rows, "memory", f"L={L} {mode}", case, L=L, mode=mode, B=m["B"], I=m["I"], H=m["H"])
            first = False
    return rows


# --------------------------------------------------------------------------- report


def gpu_info() -> dict:
    import jax

    info = {"device_kind": jax.devices()[0].device_kind,
            "default_matmul_precision": str(getattr(jax.config, "jax_default_matmul_precision", "unknown")),
            "XLA_PYTHON_CLIENT_PREALLOCATE": os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE"), "cudnn_path_available": on_cuda()}
    try:
        import torch

        info.update(torch_cuda=torch.version.cuda, torch_cudnn=torch.backends.cudnn.version() if torch.cuda.is_available() else None,
                    torch_cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
                    torch_matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32)
    except Exception as e:  # noqa: BLE001 - missing or broken torch is reported, not fatal
        info["torch"] = f"not importable ({type(e).__name__}: {e})"[:200]
    for mod in ("flax", "equinox", "chex"):
        try:
            info[mod] = __import__(mod).__version__
        except ImportError:
            info[mod] = "not importable"
    return info


def fmt(v, spec=".2e"):
    return "—" if v is None else format(v, spec)


def markdown(info, payload) -> str:
    lines = [header_markdown("jaxrnn on the device: correctness, speed, memory" + (" (--quick)" if payload["quick"] else ""),
                             info, payload["command"])]
    lines += ["| device and libraries | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in payload["gpu_info"].items()] + [""]
    lines.append(f"Total time {payload['elapsed_s']:.0f} s. Every row is one isolated case; errors and skips are listed.\n")
    if payload.get("interrupted"):
        lines.append(f"**Interrupted: {payload['interrupted']}**; the cases after that point did not run.\n")
    lines.append("## (a) Correctness against a float64 CPU reference\n")
    lines.append("max over leaves of max|a - b| / max|b|; outputs = ys and final carries, grads = every param and xs.\n")
    lines.append("| config | path | precision | outputs | grads | tolerance | status |")
    lines.append("|---|---|---|---:|---:|---:|---|")
    for r in payload["correctness"]:
        lines.append(f"| {r.get('config', r['case'])} | {r.get('path', 'reference')} | {r.get('precision', '')} | "
                     f"{fmt(r.get('rel_err_outputs'))} | {fmt(r.get('rel_err_grads'))} | {fmt(r.get('tolerance'), '.0e')} | "
                     f"{r['status']}{(': ' + r['error'][:120]) if 'error' in r else ''} |")
    notes = {r.get("generic_built_as") for r in payload["correctness"] if r.get("generic_built_as")}
    if notes:
        lines.append(f"\nGeneric path built as: {', '.join(sorted(notes))}; fast path taken: "
                     f"{sorted({str(r.get('fast_path_taken')) for r in payload['correctness'] if 'fast_path_taken' in r})}.\n")
    lines.append("\n## (b) Training-step time (forward + backward + SGD), interleaved rounds\n")
    lines.append("Median ms per step; ratio = median over rounds of (time / reference time), reference = PyTorch unless noted.\n")
    lines.append("| group | runner | median ms | ratio (min-max) | compile s | status |")
    lines.append("|---|---|---:|---|---:|---|")
    for g in payload["speed"]:
        if not g["runners"]:
            lines.append(f"| {g['group']} | — | | | | {g.get('status')} |")
        for name, r in g["runners"].items():
            ratio = (f"{r['ratio_median']:.2f} ({r['ratio_min']:.2f}-{r['ratio_max']:.2f})" if "ratio_median" in r else "")
            status = r["status"] + (f": {r['error'][:120]}" if "error" in r else "")
            lines.append(f"| {g['group']}{' (ref ' + g['reference'] + ')' if g.get('reference') not in (None, 'torch') else ''} | "
                         f"{name} | {fmt(r.get('median_ms'), '.2f')} | {ratio} | {r['compile_s']:.1f} | {status} |")
        if g.get("status", "ok") != "ok" and g["runners"]:
            lines.append(f"| {g['group']} | (group) | | | | {g['status']} |")
    sw = payload.get("sweep") or {}
    if sw:
        lines.append(f"\n## (d) Fast-path sweep: chunk / tangent_unroll of the LSTM training step (float32, "
                     f"B={sw.get('B')} L={sw.get('L')} I={sw.get('I')} H={sw.get('H')})\n")
        lines.append(f"Platform `{sw.get('platform')}`; its row of `jaxrnn.fused.PLATFORM_CONFIG` in this run: "
                     f"{sw.get('table_row')}{'' if sw.get('has_row') else ' (no row of its own: the cpu row)'}. "
                     f"Ratio = median over rounds of (time / the table row's time). Status: {sw.get('status')}.\n")
        lines.append("| chunk | tangent_unroll | median ms | ratio to the table row (min-max) | compile s | status |")
        lines.append("|---:|---:|---:|---|---:|---|")
        for v in sw.get("variants", []):
            ratio = (f"{v['ratio_median']:.3f} ({v['ratio_min']:.3f}-{v['ratio_max']:.3f})" if "ratio_median" in v else "")
            lines.append(f"| {v['chunk']} | {v['tangent_unroll']} | {fmt(v.get('median_ms'), '.2f')} | {ratio} | "
                         f"{v.get('compile_s', 0.0):.1f} | {v.get('status')}{(': ' + v['error'][:120]) if 'error' in v else ''} |")
    lines.append("\n## (c) BPTT memory of one LSTM training step (SGD)\n")
    lines.append("peak = `memory_stats()['peak_bytes_in_use']` (None where the backend has no memory stats); "
                 "temp = XLA's compiled memory analysis of the step (one segment's step for TBPTT).\n")
    lines.append("| L | mode | peak | temp | inputs (x, y) | process | status |")
    lines.append("|---:|---|---:|---:|---:|---|---|")
    mib = lambda v: "—" if v is None else (f"{v / 2**20:.1f} MiB" if v >= 2**20 else f"{v / 2**10:.1f} KiB")  # noqa: E731
    for r in payload["memory"]:
        lines.append(f"| {r.get('L')} | {r.get('mode')} | {mib(r.get('peak_bytes_in_use'))} | {mib(r.get('temp_bytes'))} | "
                     f"{mib(r.get('inputs_bytes'))} | {r.get('process', '')} | {r['status']}"
                     f"{(': ' + r['error'][:120]) if 'error' in r else ''} |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, help="output folder (default: a new temporary folder)")
    p.add_argument("--quick", action="store_true", help="tiny shapes, a couple of rounds: a CPU check in under a minute")
    p.add_argument("--only", default="correctness,speed,sweep,memory", help="comma-separated sections to run")
    p.add_argument("--time-scale", type=float, default=1.0,
                   help="multiply every time budget (and the 285 s deadline of a full run) by this")
    p.add_argument("--memory-case", default=None, help=argparse.SUPPRESS)  # internal: one memory case, JSON spec
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.memory_case is not None:
        try:
            res = {"status": "ok", **memory_case(json.loads(args.memory_case))}
        except Skip as e:
            res = {"status": f"skipped: {e}"}
        except Exception as e:  # noqa: BLE001
            res = {"status": "error", "error": f"{type(e).__name__}: {e}"[:600]}
        print("RESULT " + json.dumps(res), flush=True)
        return 0

    t0 = time.perf_counter()
    out_dir = args.out or tempfile.mkdtemp(prefix="jaxrnn-gpu-")
    results = os.path.realpath(os.path.join(ROOT, "benchmarks", "results"))
    if os.path.realpath(out_dir) == results or os.path.realpath(out_dir).startswith(results + os.sep):
        raise SystemExit(f"--out must not be benchmarks/results (got {out_dir}); commit chosen files by hand")
    cfg = QUICK if args.quick else FULL
    sections = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = sections - {"correctness", "speed", "sweep", "memory"}
    if unknown:
        raise SystemExit(f"--only takes correctness, speed, sweep, memory; got {sorted(unknown)}")

    import jax

    budgets = {k: (None if v is None else v * args.time_scale) for k, v in cfg["budget"].items()}
    deadline = None if args.quick else cfg["deadline_s"] * args.time_scale
    info = machine_info()
    payload = {"command": command_line(), "quick": args.quick, "machine": info, "gpu_info": gpu_info(),
               "config": {k: v for k, v in cfg.items()}, "tolerance": TOLERANCE,
               "correctness": [], "speed": [], "speed_cases": [], "sweep": {}, "sweep_cases": [], "memory": []}
    LOG(f"device {jax.devices()[0]} ({payload['gpu_info']['device_kind']}), cuDNN path: {payload['gpu_info']['cudnn_path_available']}")
    if deadline is not None and hasattr(signal, "SIGALRM"):
        # A last guard: a case that runs past the deadline is interrupted (between Python
        # bytecodes, so not inside one XLA compilation) and what was measured is written.
        def on_alarm(signum, frame):
            raise Deadline(f"global deadline of {deadline:.0f} s reached")

        signal.signal(signal.SIGALRM, on_alarm)
        signal.alarm(max(1, int(deadline - (time.perf_counter() - t0))))
    try:
        if "correctness" in sections:
            correctness(cfg["correct"], cfg["correct_configs"], cfg["precisions"], budgets["correctness"],
                        payload["correctness"])
        if "speed" in sections:
            speed(cfg, budgets["speed"], payload["speed_cases"], payload["speed"])
        if "sweep" in sections:
            sweep(cfg, budgets["sweep"], payload["sweep_cases"], payload["sweep"])
        if "memory" in sections:
            isolate_all = bool(jax.devices()[0].memory_stats()) and not args.quick
            memory(cfg, budgets["memory"], isolate_all, payload["memory"])
    except Deadline as e:
        payload["interrupted"] = str(e)
        LOG(f"interrupted: {e}; writing what was measured")
    finally:
        if deadline is not None and hasattr(signal, "SIGALRM"):
            signal.alarm(0)
    payload["elapsed_s"] = time.perf_counter() - t0
    name = "gpu_quick" if args.quick else "gpu"
    md, js = write_results(name, markdown(info, payload), payload, out_dir)
    failed = [r["case"] for r in payload["correctness"] if r["status"] not in ("ok",) and not r["status"].startswith("skipped")]
    LOG(f"wrote {md} and {js} in {payload['elapsed_s']:.0f} s; correctness failures: {failed or 'none'}")
    return 1 if failed else (2 if payload.get("interrupted") else 0)


if __name__ == "__main__":
    sys.exit(main())

"""Memory of a training step: full BPTT vs truncated BPTT vs the remat modes of jr.unroll.

Model: float32 LSTM, batch B=32, input I=64, hidden H=256 (``--batch/--input/--hidden``),
a linear head to 16 outputs, mean squared error, ``jr.clipped(optax.sgd(0.01), 5)``.
Every number is XLA's compiled memory analysis of the jitted training step
(``step.jitted.lower(...).compile().memory_analysis()``): ``temp`` (the peak of
everything the step allocates, activations included), ``argument`` and ``output`` bytes;
total = temp + arguments + outputs. Nothing is executed, so the lengths can go far
beyond the memory of this machine. Where the backend reports the device's peak bytes in
use (``device.memory_stats()``, e.g. GPUs) the step is also run and that peak recorded;
the CPU backend does not report it.

Variants (all with ``jr.bptt.make_step`` / ``jr.tbptt.make_step``):

* ``plain scan``: a hand-written ``lax.scan`` LSTM (``z = x W_x + b + h W_h`` in the
  loop body), differentiated by JAX: the baseline the targets refer to.
* ``generic``: ``jr.unroll`` with its fast path switched off (projection hoisted,
  ``lax.scan`` of ``cell.step``): what the library did before ``jaxrnn/fused.py``.
* ``remat=None`` (default), ``remat="step"``, ``remat="sqrt"``: ``jr.unroll``'s fast path.
* ``user cell``, ``user cell, "step"``, ``user cell, "sqrt"``: the plain scan's LSTM step
  written as a cell of the user's own (``jr.Cell(init=..., initial_carry=..., apply=...,
  hidden_size=...)``), which ``jr.unroll`` runs as a ``lax.scan`` of its ``apply``: with
  ``remat=None`` it should keep what the plain scan keeps, and the remat modes cut it.
* ``TBPTT T``: one TBPTT segment step (``jr.tbptt.make_step``) of ``T`` steps; it does
  not see the stream length at all. ``TBPTT epoch`` is ``jr.tbptt.make_epoch`` over a
  whole stream of ``L`` steps in segments of 128: its temp bytes stay flat in ``L``.

Two losses: ``final`` (many-to-one: the head reads the final state ``h_L``) and
``every`` (many-to-many: the head reads every ``h_t``; the outputs and their cotangents
then take ``2·B·H·4`` bytes per step on their own). Activation memory per step is the
slope of temp bytes between L=512 and L=2048, in units of the carried state
(the floor, ``2·B·H·4`` bytes per step).

Language-model panel (``--panels lm``): a word-level LM, vocabulary V = 10,000, embedding
128, one LSTM layer of 256, batch 16 (``--lm-vocab/--lm-embed/--lm-hidden/--lm-batch``),
mean next-token cross-entropy over every step. Measured: the temp bytes of
``jax.jit(jax.grad(loss))`` with respect to the parameters, for L = 128 ... 8192:

* ``naive``: embedding -> ``lax.scan`` LSTM -> dense -> softmax cross-entropy, written
  plainly here (the ``(B, L, V)`` logits and their gradient are kept);
* ``jaxrnn default``: ``jr.lm.loss`` of ``jr.lm.language_model(..., remat=None)``;
* ``remat="step"``, ``remat=64``, ``remat="sqrt"``: ``jr.lm.loss`` with that ``remat``
  (blocks under ``jax.checkpoint``, no ``(B, L, V)`` array; see ``jaxrnn.lm``).

Usage::

    python benchmarks/bptt_memory.py            # both panels, L = 128 ... 16384 (a few minutes)
    python benchmarks/bptt_memory.py --panels lm  # the language-model panel only
    python benchmarks/bptt_memory.py --quick    # L = 512, 2048; final-state loss, T = 32;
                                                # LM: V = 1000, B = 4, L = 256, 3 variants (a smoke run)

Writes ``bptt_memory.{md,json,png}`` and ``bptt_memory_lm.{md,json,png}``
(``*_quick.*`` with ``--quick``) to ``--out`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import command_line, header_markdown, machine_info, output_dir, write_results  # noqa: E402

FULL_LENGTHS = (128, 256, 512, 1024, 2048, 4096, 8192, 16384)
QUICK_LENGTHS = (512, 2048)
SQRT = 'remat="sqrt"'
USER = ("user cell", 'user cell, "step"', 'user cell, "sqrt"')
VARIANTS = ("plain scan", "generic", "remat=None", 'remat="step"', SQRT) + USER
SEGMENTS = (32, 128, 512)
EPOCH_SEGMENT = 128
OUT = 16
TARGETS = {"remat=None": 4.0, 'remat="step"': 2.0}  # activation bytes per step / floor
LM_LENGTHS = (128, 256, 512, 1024, 2048, 4096, 8192)
LM_QUICK_LENGTHS = (256,)
LM_QUICK = {"vocab": 1000, "batch": 4}  # --quick: a small LM, so the smoke run stays fast
LM_VARIANTS = ("naive", "jaxrnn default", 'remat="step"', "remat=64", 'remat="sqrt"')
LM_QUICK_VARIANTS = ("naive", "jaxrnn default", 'remat="sqrt"')
LM_REMAT = {"jaxrnn default": None, 'remat="step"': "step", "remat=64": 64, 'remat="sqrt"': "sqrt"}
LM_TARGET_SHARE = 0.03  # remat="sqrt" temp at L=2048 / naive's
LM_TARGET_GROWTH = 2.5  # remat="sqrt" temp, L=2048 / L=512


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Writes bptt_memory.{md,json,png} (bptt_memory_quick.* with --quick).")
    p.add_argument("--quick", action="store_true", help="L = 512 and 2048, loss on the final state, T = 32 only")
    p.add_argument("--lengths", type=int, nargs="+", default=None, help="sequence lengths L")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--input", type=int, default=64)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--segments", type=int, nargs="+", default=None,
                   help="TBPTT segment lengths T (default 32 128 512; 32 with --quick)")
    p.add_argument("--panels", nargs="+", choices=("lstm", "lm"), default=("lstm", "lm"),
                   help="which panels to measure (default both)")
    p.add_argument("--lm-lengths", type=int, nargs="+", default=None, help="sequence lengths L of the LM panel")
    p.add_argument("--lm-vocab", type=int, default=10_000)
    p.add_argument("--lm-embed", type=int, default=128)
    p.add_argument("--lm-hidden", type=int, default=256)
    p.add_argument("--lm-batch", type=int, default=16)
    p.add_argument("--out", default=None, help="output folder (default: benchmarks/results; a new temporary folder with --quick)")
    return p.parse_args(argv)


def build(variant, loss_kind, B, I, H):
    """``(step, state, x_spec_fn, y_spec_fn)`` for one variant; specs take L."""
    import jax
    import jax.numpy as jnp
    import optax

    import jaxrnn as jr

    cell = jr.lstm(H)
    k1, k2 = jax.random.split(jax.random.key(0))
    params = {"rnn": cell.init(k1, I), "head": {"w": jax.random.normal(k2, (H, OUT)) / H**0.5, "b": jnp.zeros(OUT)}}
    tx = jr.clipped(optax.sgd(0.01), max_norm=5.0)

    def lstm_step(p, c, x_t):
        h, cc = c
        z = x_t @ p["w_x"] + p["b"] + h @ p["w_h"]
        i, f, g, o = jnp.split(z, 4, axis=-1)
        cc = jax.nn.sigmoid(f) * cc + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(cc)
        return (h, cc), h

    def plain_scan(p, carry, x):
        carry, hs = jax.lax.scan(lambda c, x_t: lstm_step(p, c, x_t), carry, jnp.swapaxes(x, 0, 1))
        return carry, jnp.swapaxes(hs, 0, 1)

    # The same LSTM written as a user's cell: jr.unroll runs it as a lax.scan of its apply.
    user_cell = jr.Cell(init=cell.init, initial_carry=cell.initial_carry, apply=lstm_step, hidden_size=H)
    remat = {"remat=None": None, 'remat="step"': "step", 'remat="sqrt"': "sqrt",
             'user cell, "step"': "step", 'user cell, "sqrt"': "sqrt"}.get(variant)

    def loss_fn(p, carry, x, y):
        if variant == "plain scan":
            carry, hs = plain_scan(p["rnn"], carry, x)
        elif variant in USER:
            carry, hs = jr.unroll(user_cell, p["rnn"], x, carry, remat=remat)
        else:
            carry, hs = jr.unroll(cell, p["rnn"], x, carry, remat=remat)
        feats = carry[0] if loss_kind == "final" else hs
        pred = feats @ p["head"]["w"] + p["head"]["b"]
        return jnp.mean((pred - y) ** 2), carry

    state = jr.bptt.init_state(params, tx, cell.initial_carry(B))
    y_shape = (lambda L: (B, OUT)) if loss_kind == "final" else (lambda L: (B, L, OUT))
    return loss_fn, tx, state, y_shape


def memory_of(jitted, *args):
    t0 = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    m = compiled.memory_analysis()
    out = {
        "temp": int(m.temp_size_in_bytes),
        "argument": int(m.argument_size_in_bytes),
        "output": int(m.output_size_in_bytes),
        "alias": int(getattr(m, "alias_size_in_bytes", 0)),
        "compile_s": round(time.perf_counter() - t0, 2),
    }
    out["total"] = out["temp"] + out["argument"] + out["output"]
    return out, compiled


def run_device_peak(compiled, state, x, y):
    """Peak bytes in use after running the step once, where the backend reports it."""
    import jax

    dev = jax.devices()[0]
    if not dev.memory_stats() or "peak_bytes_in_use" not in dev.memory_stats():
        return None
    out = compiled(state, x, y)
    jax.block_until_ready(out)
    return int(dev.memory_stats()["peak_bytes_in_use"])


def main(argv=None):
    args = parse_args(argv)
    args.out = output_dir(args.out, args.quick, "bptt_memory")
    if "lstm" in args.panels:
        lstm_panel(args)
    if "lm" in args.panels:
        lm_panel(args)


def lstm_panel(args):
    import jax
    import jax.numpy as jnp

    import jaxrnn as jr
    from jaxrnn import fused

    B, I, H = args.batch, args.input, args.hidden
    lengths = args.lengths or (QUICK_LENGTHS if args.quick else FULL_LENGTHS)
    # The quick run (a smoke test) measures the loss on the final state only.
    losses = ("final",) if args.quick else ("final", "every")
    floor = 2 * B * H * 4
    info = machine_info()
    device_reports_peak = bool(jax.devices()[0].memory_stats())
    print(f"{info['cpu']}, {info['cores']} cores, jax {info['jax']}; floor = {floor} bytes/step; "
          f"device peak reported: {device_reports_peak}")

    spec = lambda shape: jax.ShapeDtypeStruct(shape, jnp.float32)  # noqa: E731
    rows = []  # {"loss", "variant", "L", temp, argument, output, total}
    for loss_kind in losses:
        for variant in VARIANTS:
            loss_fn, tx, state, y_shape = build(variant, loss_kind, B, I, H)
            saved = fused.applies
            if variant == "generic":
                fused.applies = lambda *a: False
            try:
                for L in lengths:
                    step = jr.bptt.make_step(loss_fn, tx, donate=False)
                    mem, compiled = memory_of(step.jitted, state, spec((B, L, I)), spec(y_shape(L)))
                    if device_reports_peak:
                        x = jnp.zeros((B, L, I), jnp.float32)
                        mem["device_peak_bytes"] = run_device_peak(compiled, state, x, jnp.zeros(y_shape(L), jnp.float32))
                    rows.append({"loss": loss_kind, "variant": variant, "L": L, **mem})
                    print(f"  {loss_kind:5s} {variant:13s} L={L:6d}: temp {mem['temp'] / 2**20:9.1f} MiB  "
                          f"total {mem['total'] / 2**20:9.1f} MiB  ({mem['compile_s']} s)")
            finally:
                fused.applies = saved

    # TBPTT: one segment step per T (independent of L by construction), and the fused epoch
    # over a whole stream of L steps in segments of EPOCH_SEGMENT (temp should stay flat).
    tbptt = []
    for loss_kind in losses:
        loss_fn, tx, state, y_shape = build("remat=None", loss_kind, B, I, H)
        for T in args.segments or ((32,) if args.quick else SEGMENTS):
            step = jr.tbptt.make_step(loss_fn, tx, donate=False)
            mem, _ = memory_of(step.jitted, state, spec((B, T, I)), spec(y_shape(T)))
            tbptt.append({"loss": loss_kind, "kind": "segment", "T": T, **mem})
            print(f"  {loss_kind:5s} TBPTT segment T={T}: temp {mem['temp'] / 2**20:.1f} MiB total {mem['total'] / 2**20:.1f} MiB")
        for L in lengths:
            if L % EPOCH_SEGMENT:
                continue
            S = L // EPOCH_SEGMENT
            epoch = jr.tbptt.make_epoch(loss_fn, tx, donate=False)
            ys = spec((S,) + y_shape(EPOCH_SEGMENT))
            mem, _ = memory_of(epoch.jitted, state, spec((S, B, EPOCH_SEGMENT, I)), ys)
            tbptt.append({"loss": loss_kind, "kind": "epoch", "T": EPOCH_SEGMENT, "L": L, **mem})
            print(f"  {loss_kind:5s} TBPTT epoch L={L}: temp {mem['temp'] / 2**20:.1f} MiB total {mem['total'] / 2**20:.1f} MiB")

    # ------------------------------------------------------------------ summaries
    def get(loss, variant, L, key="temp"):
        for r in rows:
            if r["loss"] == loss and r["variant"] == variant and r["L"] == L:
                return r[key]
        return None

    slopes = {}
    if 512 in lengths and 2048 in lengths:
        for loss_kind in losses:
            for variant in VARIANTS:
                slopes[f"{loss_kind}/{variant}"] = (get(loss_kind, variant, 2048) - get(loss_kind, variant, 512)) / 1536 / floor
    sqrt_share = {}
    if 2048 in lengths:
        for loss_kind in losses:
            sqrt_share[loss_kind] = get(loss_kind, SQRT, 2048, "total") / get(loss_kind, "plain scan", 2048, "total")

    md = header_markdown("BPTT memory: full BPTT vs TBPTT vs remat modes", info, command_line())
    md += (f"\nFloat32 LSTM, B={B}, I={I}, H={H}, linear head to {OUT} outputs, MSE, clip 5 + SGD; XLA compiled "
           f"memory analysis of the jitted training step. Floor (the carried state h, c) = 2·B·H·4 = {floor} bytes "
           "per step. The CPU backend does not report the device's peak bytes in use "
           f"({'reported and recorded' if device_reports_peak else 'memory_stats() is None'}).\n")
    if slopes:
        md += "\n## Activation memory per time step (slope of temp bytes, L=512 -> 2048) / floor\n\n"
        md += "| variant | loss on h_L (final) | loss on every h_t | target |\n|---|---|---|---|\n"
        for variant in VARIANTS:
            tgt = TARGETS.get(variant)
            every = f"{slopes[f'every/{variant}']:.2f}" if f"every/{variant}" in slopes else "not measured"
            md += (f"| {variant} | **{slopes[f'final/{variant}']:.2f}** | {every} | "
                   f"{'<= %.0f' % tgt if tgt else ''} |\n")
    if sqrt_share:
        md += ("\n## remat=\"sqrt\" at L=2048: total bytes as a share of the plain scan's total\n\n"
               "| loss | remat=\"sqrt\" total | plain scan total | share | target |\n|---|---|---|---|---|\n")
        for loss_kind, share in sqrt_share.items():
            md += (f"| {loss_kind} | {get(loss_kind, SQRT, 2048, 'total') / 2**20:.1f} MiB | "
                   f"{get(loss_kind, 'plain scan', 2048, 'total') / 2**20:.1f} MiB | **{100 * share:.2f} %** | <= 5 % |\n")
        md += ("\nWith the loss on every h_t the outputs alone (B·L·H·4 bytes, kept for the head's gradient) "
               "are 7 % of the plain scan's total, so the 5 % target applies to the final-state loss.\n")
    for loss_kind in losses:
        md += f"\n## Temp / total MiB per sequence length (loss on {'h_L' if loss_kind == 'final' else 'every h_t'})\n\n"
        md += "| L | " + " | ".join(VARIANTS) + " |\n|---|" + "---|" * len(VARIANTS) + "\n"
        for L in lengths:
            md += f"| {L} | " + " | ".join(
                f"{get(loss_kind, v, L) / 2**20:.1f} / {get(loss_kind, v, L, 'total') / 2**20:.1f}" for v in VARIANTS) + " |\n"
    md += "\n## TBPTT\n\nOne segment step of T steps (`jr.tbptt.make_step`): the same program whatever the stream length.\n\n"
    md += "| loss | T | temp MiB | total MiB |\n|---|---|---|---|\n"
    for r in tbptt:
        if r["kind"] == "segment":
            md += f"| {r['loss']} | {r['T']} | {r['temp'] / 2**20:.1f} | {r['total'] / 2**20:.1f} |\n"
    md += (f"\nThe fused epoch (`jr.tbptt.make_epoch`, segments of {EPOCH_SEGMENT}) over a whole stream of L steps: "
           "temp bytes stay flat in L (only the stream itself, an argument, grows).\n\n")
    md += "| loss | L | temp MiB | arguments MiB |\n|---|---|---|---|\n"
    for r in tbptt:
        if r["kind"] == "epoch":
            md += f"| {r['loss']} | {r['L']} | {r['temp'] / 2**20:.1f} | {r['argument'] / 2**20:.1f} |\n"

    name = "bptt_memory_quick" if args.quick else "bptt_memory"
    png = os.path.join(args.out, f"{name}.png")
    plot(rows, tbptt, lengths, floor, png, B, I, H, losses)
    md += f"\n![memory vs sequence length]({name}.png)\n"
    payload = {"machine": info, "command": command_line(), "B": B, "I": I, "H": H, "head_outputs": OUT,
               "floor_bytes_per_step": floor, "device_reports_peak": device_reports_peak, "rows": rows,
               "tbptt": tbptt, "slopes_over_floor": slopes, "sqrt_share_of_plain_at_2048": sqrt_share}
    md_path, _ = write_results(name, md, payload, args.out)
    print(f"wrote {md_path} and {png}")


def plot(rows, tbptt, lengths, floor, path, B, I, H, losses=("final", "every")):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(losses), figsize=(6 * len(losses), 4.8), sharey=True, squeeze=False)
    axes = axes[0]
    for ax, loss_kind in zip(axes, losses):
        for variant in VARIANTS:
            pts = [(r["L"], r["total"]) for r in rows if r["loss"] == loss_kind and r["variant"] == variant]
            ax.plot(*zip(*pts), marker="o", label=variant)
        seg = [r for r in tbptt if r["loss"] == loss_kind and r["kind"] == "segment"]
        for r, color in zip(seg, ("C5", "C6", "C8", "C9")):
            ax.plot([lengths[0], lengths[-1]], [r["total"]] * 2, linestyle="--", color=color,
                    label=f"TBPTT segment T={r['T']} (any L)")
        ep = [(r["L"], r["total"]) for r in tbptt if r["loss"] == loss_kind and r["kind"] == "epoch"]
        if ep:
            ax.plot(*zip(*ep), marker="x", linestyle=":", color="C6",
                    label=f"TBPTT epoch T={EPOCH_SEGMENT}, whole stream (input grows)")
        ax.plot(lengths, [floor * L for L in lengths], color="black", linewidth=0.8, label="floor: h, c per step")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length L")
        ax.set_title(f"loss on {'final h_L' if loss_kind == 'final' else 'every h_t'}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("bytes (XLA temp + arguments + outputs)")
    axes[-1].legend(fontsize=7, loc="upper left")
    fig.suptitle(f"Training-step memory, float32 LSTM B={B} I={I} H={H}")
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)



# --------------------------------------------------------------------------- language-model panel


def lm_loss(variant, V, E, H):
    """``(loss(params, carry, x, y), params_spec, carry)`` of one LM-panel variant."""
    import jax
    import jax.numpy as jnp

    import jaxrnn as jr

    model = jr.lm.language_model(V, "lstm", hidden=H, embed=E, remat=LM_REMAT.get(variant))
    params = jax.eval_shape(model.init, jax.random.key(0))
    if variant != "naive":
        return (lambda p, c, x, y: jr.lm.loss(model, p, c, x, y)[0]), params

    def naive(p, carry, x, y):
        # embedding -> lax.scan LSTM -> dense -> softmax cross-entropy, nothing else
        e = jnp.take(p["embed"]["table"], x, axis=0)
        q = p["rnn"][0]

        def step(c, e_t):
            h, cc = c
            i, f, g, o = jnp.split(e_t @ q["w_x"] + q["b"] + h @ q["w_h"], 4, axis=-1)
            cc = jax.nn.sigmoid(f) * cc + jax.nn.sigmoid(i) * jnp.tanh(g)
            h = jax.nn.sigmoid(o) * jnp.tanh(cc)
            return (h, cc), h

        _, hs = jax.lax.scan(step, carry[0], jnp.swapaxes(e, 0, 1))
        logits = jnp.swapaxes(hs, 0, 1) @ p["out"]["w"] + p["out"]["b"]
        logp = jax.nn.log_softmax(logits, axis=-1)
        return -jnp.mean(jnp.take_along_axis(logp, y[..., None], axis=-1))

    return naive, params


def lm_panel(args):
    import jax
    import jax.numpy as jnp

    import jaxrnn as jr

    V, E, H, B = args.lm_vocab, args.lm_embed, args.lm_hidden, args.lm_batch
    if args.quick:
        V, B = min(V, LM_QUICK["vocab"]), min(B, LM_QUICK["batch"])
    lengths = args.lm_lengths or (LM_QUICK_LENGTHS if args.quick else LM_LENGTHS)
    variants = LM_QUICK_VARIANTS if args.quick else LM_VARIANTS
    info = machine_info()
    print(f"LM panel: V={V}, embed {E}, LSTM {H}, B={B}; {info['cpu']}, {info['cores']} cores, jax {info['jax']}")
    rows = []
    carry = jr.lstm(H).initial_carry(B)
    for variant in variants:
        loss, params = lm_loss(variant, V, E, H)
        for L in lengths:
            ids = jax.ShapeDtypeStruct((B, L), jnp.int32)
            mem, _ = memory_of(jax.jit(jax.grad(loss)), params, (carry,), ids, ids)
            rows.append({"variant": variant, "L": L, **mem})
            print(f"  LM {variant:15s} L={L:5d}: temp {mem['temp'] / 2**20:9.1f} MiB ({mem['compile_s']} s)",
                  flush=True)

    def temp(variant, L):
        return next((r["temp"] for r in rows if r["variant"] == variant and r["L"] == L), None)

    lo, hi = (512, 2048) if {512, 2048} <= set(lengths) else (lengths[0], lengths[-1])
    growth = {v: temp(v, hi) / temp(v, lo) for v in variants} if len(lengths) > 1 else {}
    share = {v: temp(v, hi) / temp("naive", hi) for v in variants}
    md = header_markdown("BPTT memory of a language model: per-step loss, chunked readout and remat", info,
                         command_line())
    md += (f"\nWord-level LM: vocabulary V={V}, embedding {E}, one float32 LSTM layer of {H}, batch B={B}, mean "
           "next-token cross-entropy over every step. Temp bytes of XLA's compiled memory analysis of "
           "`jax.jit(jax.grad(loss))` (gradient with respect to the parameters); nothing is executed. `naive` is "
           "embedding -> `lax.scan` LSTM -> dense -> softmax cross-entropy written plainly; the others are "
           "`jr.lm.loss` of `jr.lm.language_model(..., remat=...)`.\n")
    md += (f"\n## At L={hi}: temp as a share of the naive model's, and growth from L={lo}\n\n"
           f"| variant | temp L={lo} | temp L={hi} | share of naive at L={hi} | growth L={lo} -> {hi} |\n"
           "|---|---|---|---|---|\n")
    for v in variants:
        g = f"{growth[v]:.2f}x" if v in growth else ""
        md += (f"| {v} | {temp(v, lo) / 2**20:.1f} MiB | {temp(v, hi) / 2**20:.1f} MiB | "
               f"{100 * share[v]:.2f} % | {g} |\n")
    md += (f"\nTargets for `remat=\"sqrt\"` (V=10,000, B=16, LSTM 256, L=2048): share <= "
           f"{100 * LM_TARGET_SHARE:.0f} %, growth L=512 -> 2048 <= {LM_TARGET_GROWTH}x.\n")
    md += "\n## Temp MiB per sequence length\n\n| L | " + " | ".join(variants) + " |\n|---|"
    md += "---|" * len(variants) + "\n"
    for L in lengths:
        md += f"| {L} | " + " | ".join(f"{temp(v, L) / 2**20:.1f}" for v in variants) + " |\n"
    name = "bptt_memory_lm_quick" if args.quick else "bptt_memory_lm"
    png = os.path.join(args.out, f"{name}.png")
    plot_lm(rows, variants, png, V, E, H, B)
    md += f"\n![LM gradient memory vs sequence length]({name}.png)\n"
    payload = {"machine": info, "command": command_line(), "V": V, "E": E, "H": H, "B": B, "rows": rows,
               "share_of_naive": {"L": hi, **share}, "growth": {"from": lo, "to": hi, **growth}}
    md_path, _ = write_results(name, md, payload, args.out)
    print(f"wrote {md_path} and {png}")


def plot_lm(rows, variants, path, V, E, H, B):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for variant in variants:
        pts = [(r["L"], r["temp"]) for r in rows if r["variant"] == variant]
        ax.plot(*zip(*pts), marker="o", label=variant)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length L")
    ax.set_ylabel("XLA temp bytes of jax.grad(loss)")
    ax.set_title(f"LM gradient memory: V={V}, embed {E}, LSTM {H}, B={B}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()

"""Draw docs/figures/offset_batching.png: offset batching of one stream for TBPTT.

Run ``python docs/figures/offset_batching.py`` (needs matplotlib) to redraw it. The
segments are computed by ``jr.data.offset_batches`` itself, so the figure shows what
the code does.
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import jaxrnn as jr  # noqa: E402

N, B, T, STEPS = 48, 4, 4, 3  # tokens, streams (rows), segment length, steps drawn


def main() -> str:
    tokens = np.arange(N)
    batches = jr.data.offset_batches(tokens, batch_size=B, seq_len=T)
    segments = [next(batches)[0] for _ in range(STEPS)]  # each (B, T): token positions
    colors = plt.get_cmap("tab10").colors

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 4.6), gridspec_kw={"height_ratios": [1, 2.2]})
    # Top: the stream, with where each row reads during the first STEPS steps.
    for i in range(N):
        top.add_patch(plt.Rectangle((i, 0), 1, 1, fill=False, lw=0.5, color="0.6"))
    for s, seg in enumerate(segments):
        for b in range(B):
            for pos in seg[b]:
                top.add_patch(plt.Rectangle((pos, 0), 1, 1, color=colors[s], alpha=0.75))
    for b in range(B):
        top.annotate(f"row {b} starts at {b}·N/B = {b * (N // B)}", (b * (N // B), 1.05), fontsize=8,
                     xytext=(b * (N // B), 1.7), arrowprops={"arrowstyle": "->", "lw": 0.8})
    top.set_xlim(-0.5, N + 0.5)
    top.set_ylim(-0.2, 2.4)
    top.axis("off")
    top.set_title(f"one stream of N = {N} tokens, B = {B} rows, segments of T = {T}", fontsize=10)

    # Bottom: the batches; the carry of row b flows from step k to step k + 1.
    w = T + 2
    for s, seg in enumerate(segments):
        for b in range(B):
            y = B - 1 - b
            for t in range(T):
                x0 = s * w + t
                bottom.add_patch(plt.Rectangle((x0, y), 1, 0.8, color=colors[s], alpha=0.75))
                bottom.text(x0 + 0.5, y + 0.4, str(seg[b, t]), ha="center", va="center", fontsize=7)
            if s + 1 < STEPS:
                bottom.annotate("", (s * w + w, y + 0.4), (s * w + T, y + 0.4),
                                arrowprops={"arrowstyle": "->", "lw": 1.0, "color": "k"})
        bottom.text(s * w + T / 2, B + 0.1, f"step {s + 1}: x of shape (B, T)", ha="center", fontsize=8)
    bottom.text(STEPS * w - 1.5, -0.6, "→ carry of row b, through lax.stop_gradient", ha="right", fontsize=8)
    for b in range(B):
        bottom.text(-0.4, B - 1 - b + 0.4, f"row {b}", ha="right", va="center", fontsize=8)
    bottom.set_xlim(-2.5, STEPS * w)
    bottom.set_ylim(-1, B + 0.6)
    bottom.axis("off")
    fig.tight_layout()
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "offset_batching.png")
    fig.savefig(path, dpi=90)
    return path


if __name__ == "__main__":
    print(main())

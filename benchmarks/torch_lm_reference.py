"""PyTorch reference of ``jaxrnn train`` for a character-level language model.

The same model, data, initialisation scheme and training algorithm as the ``jaxrnn``
command, written in plain PyTorch so that anyone can rerun the comparison:

* **data**: the text file read as UTF-8; vocabulary = its distinct characters in
  code-point order; split by position, ``[0, floor(0.8 n))`` train,
  ``[floor(0.8 n), floor(0.9 n))`` validation, the rest test (``jaxrnn.corpus``);
* **offset batching** (``jaxrnn.data.offset_batches``): with ``N`` training tokens and
  batch ``B``, stream ``b`` reads from ``b * (N // B)`` onward, ``T`` steps per segment,
  in order, wrapping around the end; targets are the next tokens;
* **model**: embedding ``E`` -> ``L`` stacked LSTM / GRU / tanh-RNN layers of ``H`` ->
  affine to ``V`` (dropout on the embeddings, between layers and before the output when
  ``--dropout > 0``). Initialisation as ``jaxrnn.lm`` / ``jaxrnn.cells``: embedding
  ``N(0, 1)``; ``W_ih ~ N(0, 1/input)``; each gate block of ``W_hh`` an independent random
  orthogonal matrix; biases 0 except the LSTM forget gate, 1 (in ``b_ih``); output
  weights ``N(0, 1/H)``, bias 0;
* **TBPTT**: one Adam (or SGD) step per segment on the mean cross-entropy, the state
  detached between segments, gradients clipped to global norm ``--clip``
  (``torch.nn.utils.clip_grad_norm_``);
* **evaluation** (``jaxrnn.lm.evaluate``): the split cut into ``B`` rows of
  ``L = (n - 1) // B`` steps, read ``T`` steps at a time with the state carried over,
  no dropout; the mean negative log-likelihood in nats per token, its ``exp``
  (perplexity) and ``/ ln 2`` (bits per character).

Training throughput counts ``B * T`` tokens per step over the time spent in training
steps (validation excluded), like ``jaxrnn train``.

Usage::

    python benchmarks/torch_lm_reference.py --corpus ../shared/corpora/shakespeare.txt --steps 1500 --out DIR
    python benchmarks/torch_lm_reference.py --quick --out /tmp/ref   # a tiny smoke run

Writes ``DIR/metrics.json`` (the keys of ``jaxrnn train``'s) and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import corpus_file, output_dir  # noqa: E402


def read_corpus(path: str, limit: int | None = None):
    with open(path, "rb") as f:
        text = f.read().decode("utf-8")
    if text.startswith("\ufeff"):
        text = text[1:]
    if limit is not None:
        text = text[:limit]
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    ids = np.fromiter((index[c] for c in text), np.int64, len(text))
    n = len(ids)
    a, b = int(n * 0.8), int(n * 0.9)
    return ids[:a], ids[a:b], ids[b:], chars


class OffsetBatches:
    """Stream ``b`` starts at ``b * (N // B)``; segments of ``T`` steps; wraps at ``N``."""

    def __init__(self, tokens: np.ndarray, batch_size: int, seq_len: int):
        self.tokens, self.n = tokens, len(tokens)
        self.offsets = np.arange(batch_size, dtype=np.int64) * (self.n // batch_size)
        self.seq_len, self.position = seq_len, 0

    def __next__(self):
        idx = (self.offsets[:, None] + self.position + np.arange(self.seq_len)[None, :]) % self.n
        self.position += self.seq_len
        return torch.from_numpy(self.tokens[idx]), torch.from_numpy(self.tokens[(idx + 1) % self.n])


class LanguageModel(torch.nn.Module):
    def __init__(self, vocab: int, cell: str, hidden: int, embed: int, layers: int, dropout: float):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, embed)
        rnn_cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell]
        self.rnn = rnn_cls(embed, hidden, num_layers=layers, batch_first=True,
                           dropout=dropout if layers > 1 else 0.0)
        self.drop = torch.nn.Dropout(dropout)
        self.out = torch.nn.Linear(hidden, vocab)
        self.cell, self.hidden, self.layers = cell, hidden, layers
        self._init(embed)

    @torch.no_grad()
    def _init(self, embed: int):
        g = {"lstm": 4, "gru": 3, "rnn": 1}[self.cell]
        h = self.hidden
        torch.nn.init.normal_(self.embed.weight, 0.0, 1.0)
        for i in range(self.layers):
            w_ih, w_hh = getattr(self.rnn, f"weight_ih_l{i}"), getattr(self.rnn, f"weight_hh_l{i}")
            torch.nn.init.normal_(w_ih, 0.0, 1.0 / math.sqrt(w_ih.shape[1]))
            for k in range(g):
                torch.nn.init.orthogonal_(w_hh[k * h:(k + 1) * h])
            b_ih, b_hh = getattr(self.rnn, f"bias_ih_l{i}"), getattr(self.rnn, f"bias_hh_l{i}")
            b_ih.zero_()
            b_hh.zero_()
            if self.cell == "lstm":
                b_ih[h:2 * h] = 1.0
        torch.nn.init.normal_(self.out.weight, 0.0, 1.0 / math.sqrt(h))
        self.out.bias.zero_()

    def forward(self, x, state):
        y, state = self.rnn(self.drop(self.embed(x)), state)
        return self.out(self.drop(y)), state

    def initial_state(self, batch: int):
        z = torch.zeros(self.layers, batch, self.hidden)
        return (z, z.clone()) if self.cell == "lstm" else z


def detach(state):
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


@torch.no_grad()
def evaluate(model: LanguageModel, tokens: np.ndarray, batch_size: int, seq_len: int) -> float:
    model.eval()
    n = len(tokens)
    rows = max(1, min(batch_size, n - 1))
    length = (n - 1) // rows
    x = torch.from_numpy(tokens[: rows * length].reshape(rows, length))
    y = torch.from_numpy(tokens[1: rows * length + 1].reshape(rows, length))
    state, total = model.initial_state(rows), 0.0
    for s in range(0, length, seq_len):
        logits, state = model(x[:, s:s + seq_len], state)
        total += float(torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), y[:, s:s + seq_len].reshape(-1), reduction="sum"))
    model.train()
    return total / (rows * length)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", default=None,
                   help="plain-text file (default: ../shared/corpora/shakespeare.txt, else the Python standard library's source)")
    p.add_argument("--cell", choices=["lstm", "gru", "rnn"], default="lstm")
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--embed", type=int, default=64)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--clip", type=float, default=5.0, help="global-norm clip, 0 for none")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=None, help="default: 5 validations per run")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: PyTorch's choice)")
    p.add_argument("--out", default=None, help="directory for metrics.json (required, except with --quick: a temporary one)")
    p.add_argument("--quick", action="store_true", help="first 200k characters, hidden 64, 40 steps")
    args = p.parse_args(argv)
    if args.out is None and not args.quick:
        p.error("--out DIR is required (except with --quick)")
    args.out = output_dir(args.out, args.quick, "torch_lm_reference")
    args.corpus = corpus_file(args.corpus)
    limit = None
    if args.quick:
        limit, args.hidden, args.steps = 200_000, 64, 40
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    wall0 = time.perf_counter()
    train, valid, test, chars = read_corpus(args.corpus, limit)
    print(f"corpus: {args.corpus}: {len(train) + len(valid) + len(test):,} characters, {len(chars)} distinct; "
          f"train/valid/test {len(train):,}/{len(valid):,}/{len(test):,}", flush=True)
    model = LanguageModel(len(chars), args.cell, args.hidden, args.embed, args.layers, args.dropout)
    params = list(model.parameters())
    opt = (torch.optim.Adam(params, lr=args.lr) if args.optimizer == "adam" else torch.optim.SGD(params, lr=args.lr))
    batches = OffsetBatches(train, args.batch_size, args.seq_len)
    state = model.initial_state(args.batch_size)
    eval_every = args.eval_every or max(1, math.ceil(args.steps / 5))
    history = {"train_steps": [], "train_loss": [], "val_steps": [], "val_loss": []}
    train_seconds = eval_seconds = first_step = 0.0
    vocab = len(chars)
    for step in range(1, args.steps + 1):
        x, y = next(batches)
        t0 = time.perf_counter()
        state = detach(state)
        logits, state = model(x, state)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if args.clip > 0:
            torch.nn.utils.clip_grad_norm_(params, args.clip)
        opt.step()
        value = float(loss.detach())
        dt = time.perf_counter() - t0
        train_seconds += dt
        if step == 1:
            first_step = dt
        history["train_steps"].append(step)
        history["train_loss"].append(value)
        if step % eval_every == 0 or step == args.steps:
            t1 = time.perf_counter()
            nll = evaluate(model, valid, args.batch_size, args.seq_len)
            eval_seconds += time.perf_counter() - t1
            history["val_steps"].append(step)
            history["val_loss"].append(nll)
            print(f"step {step}: validation loss {nll:.4f}, {nll / math.log(2):.4f} bits/char; "
                  f"{step * args.batch_size * args.seq_len / train_seconds:,.0f} training tokens/s", flush=True)
    val_nll = history["val_loss"][-1]
    t1 = time.perf_counter()
    test_nll = evaluate(model, test, args.batch_size, args.seq_len)
    eval_seconds += time.perf_counter() - t1
    tokens = args.steps * args.batch_size * args.seq_len
    metrics = {
        "val_loss": val_nll, "val_perplexity": math.exp(val_nll), "val_bpc": val_nll / math.log(2),
        "test_loss": test_nll, "test_perplexity": math.exp(test_nll), "test_bpc": test_nll / math.log(2),
        "steps": args.steps, "tokens": tokens, "tokens_per_s": tokens / train_seconds,
        "tokens_per_s_after_first_step": (tokens - args.batch_size * args.seq_len) / (train_seconds - first_step)
        if args.steps > 1 else None,
        "train_seconds": train_seconds, "first_step_seconds": first_step, "eval_seconds": eval_seconds,
        "wall_seconds": time.perf_counter() - wall0,
        "train_loss_last": sum(history["train_loss"][-50:]) / len(history["train_loss"][-50:]),
        "parameters": sum(p.numel() for p in params), "vocab_size": vocab,
        "config": {**vars(args), "eval_every": eval_every},
        "history": history,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "torch_threads": torch.get_num_threads()},
    }
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2, sort_keys=True)
    print(f"done: {args.steps} steps, validation {metrics['val_bpc']:.4f} bits/char, test perplexity "
          f"{metrics['test_perplexity']:.3f}; {metrics['tokens_per_s']:,.0f} training tokens/s, "
          f"{metrics['wall_seconds']:.1f} s in all", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

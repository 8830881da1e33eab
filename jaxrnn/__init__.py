"""jaxrnn: functional recurrent networks for JAX.

Pure cells unrolled with ``lax.scan``, trained by full or truncated backpropagation
through time. See ``README.md`` for a tour.
"""

from jaxrnn import layers
from jaxrnn import corpus, lm
from jaxrnn import bptt, checkpoint, data, tbptt
from jaxrnn import train
from jaxrnn.optim import clipped
from jaxrnn import diagnostics, tasks
from jaxrnn import sequence
from jaxrnn import cells
from jaxrnn.cells import Cell, gru, indrnn, ln_gru, ln_lstm, lstm, mgu, mingru, minlstm, rnn
from jaxrnn.unroll import Bidirectional, Stack, bidirectional, output_size, reduce_blocks, stack, unroll, unroll_readout
from jaxrnn import cudnn, fused
from jaxrnn import interop  # imports torch only inside its functions
from jaxrnn import parallel

__version__ = "0.1.0"  # the one place the version is written (pyproject.toml reads it)

__all__ = [
    "cells", "Cell", "rnn", "lstm", "gru", "ln_lstm", "ln_gru", "mgu", "indrnn", "mingru", "minlstm",
    "unroll", "unroll_readout", "reduce_blocks", "stack", "bidirectional", "Stack", "Bidirectional", "output_size",
    "layers", "corpus", "lm", "data", "tbptt", "bptt", "train", "checkpoint", "clipped", "sequence", "interop",
    "diagnostics", "tasks", "parallel", "fused", "cudnn",
]

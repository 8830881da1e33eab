"""Data parallelism over the batch with JAX's own sharding (one host or many).

The rows of an offset batch are independent streams, so a TBPTT or BPTT step splits over
the batch: with ``D`` devices each holds ``B / D`` rows of ``x``, ``y`` and the carry,
and a full copy of the parameters and the optimizer state. For a loss that is a mean over
the rows (and time), the gradient of the whole batch is the mean of the devices'
gradients::

    g = (1/B) Σ_b ∇ℓ_b = Σ_d (B_d / B) · g_d,     g_d = (1/B_d) Σ_{b on device d} ∇ℓ_b

which XLA computes with an all-reduce that it inserts itself: the step is the
single-device step under ``jax.jit`` with ``NamedSharding`` placements (no hand-written
collectives), and gives the same numbers up to the order of floating-point sums.

* :func:`data_mesh`: a 1-D ``jax.sharding.Mesh`` over the devices.
* :func:`shard_batch`, :func:`replicate`, :func:`shard_state`: place a batch (split on
  the batch axis), any tree (copied to every device) or a training state (parameters and
  optimizer state replicated, carry split over the batch).
* ``jr.tbptt.make_step(..., mesh=mesh)`` / ``jr.bptt.make_step(..., mesh=mesh)`` (and
  ``make_epoch``, ``make_k1k2_step``) place their inputs this way on every call and
  constrain the new state to the same shardings, so a training loop never retraces.
* Many hosts: :func:`initialize` (``jax.distributed.initialize``), :func:`process_rows`
  and :func:`process_batches` (each process reads its own streams of the offset
  batching), :func:`gather` (a host copy of a global array).

Example (one host; ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` gives a CPU
8 devices to try it)::

  >>> import jax, jax.numpy as jnp, numpy as np, optax, jaxrnn as jr
  >>> mesh = jr.parallel.data_mesh()                 # every device, axis "batch"
  >>> cell = jr.lstm(8)
  >>> params = cell.init(jax.random.key(0), input_size=3)
  >>> def loss_fn(params, carry, x, y):
  ...     carry, ys = jr.unroll(cell, params, x, carry)
  ...     return jnp.mean((ys[..., :1] - y) ** 2), carry
  >>> tx = jr.clipped(optax.adam(1e-2), max_norm=1.0)
  >>> B = 8 * mesh.size
  >>> state = jr.parallel.shard_state(jr.tbptt.init_state(params, tx, cell.initial_carry(B)), mesh)
  >>> step = jr.tbptt.make_step(loss_fn, tx, mesh=mesh)
  >>> state, metrics = step(state, np.ones((B, 5, 3), np.float32), np.zeros((B, 5, 1), np.float32))
  >>> state, metrics = step(state, np.ones((B, 5, 3), np.float32), np.zeros((B, 5, 1), np.float32))
  >>> step.trace_count, state.carry[0].sharding.is_equivalent_to(jr.parallel.batch_sharding(mesh), 2)
  (1, True)

Many hosts: start one process per host with the same script, and in each::

  jr.parallel.initialize("10.0.0.1:1234", num_processes=P, process_id=p)
  mesh = jr.parallel.data_mesh()                     # every device of every process
  batches = jr.parallel.process_batches(tokens, B, T)   # this process's B / P streams
  state = jr.parallel.shard_state(init_state(...), mesh)  # the same global state everywhere
  step = jr.tbptt.make_step(loss_fn, tx, mesh=mesh)
  for x, y in batches:                               # local rows; the global batch is their union
      state, metrics = step(state, x, y)

Host (NumPy) batches given to a step or to :func:`shard_batch` are this process's rows
of the global batch (with one process: the whole batch), and process ``p`` of ``P``
holds global rows ``[p·B/P, (p+1)·B/P)``. The state is global: every process builds it
from the same seed. Checkpoints (:func:`jaxrnn.checkpoint.save_state`) gather the global
arrays, so every process must call them; process 0 writes the file, and it restores on
any number of devices or processes.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Iterator
from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxrnn._checks import shape_str
from jaxrnn.data import OffsetBatches, offset_batches, take_segments

__all__ = [
    "data_mesh", "batch_sharding", "replicated", "shard_batch", "replicate", "state_shardings", "shard_state",
    "place_step_inputs", "sharded_call", "initialize", "process_rows", "ProcessBatches", "process_batches",
    "gather",
]

#: Fields of a training state that hold per-row (batch-major) values; the rest is replicated.
BATCHED_FIELDS = ("carry", "history_carry", "history_x", "history_y")


# --------------------------------------------------------------------------- meshes


def data_mesh(devices: int | Sequence[Any] | None = None, axis: str = "batch") -> Mesh:
    """A 1-D mesh for data parallelism.

    Args:
      devices: ``None`` for every device (``jax.devices()``: with many processes, every
        process's devices), an int ``n`` for the first ``n`` of them, or a sequence of
        devices.
      axis: the name of the mesh axis the batch is split over.

    Returns:
      A ``jax.sharding.Mesh`` of shape ``(n,)``, its devices ordered by process, then id
      (so process ``p`` holds a contiguous block of the batch).

    Raises:
      ValueError: ``devices`` asks for more devices than there are, or for none.
    """
    if not isinstance(axis, str) or not axis:
        raise TypeError(f"axis must be a non-empty str (the mesh axis name), got {axis!r}")
    available = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    if devices is None:
        chosen = available
    elif isinstance(devices, (int, np.integer)) and not isinstance(devices, bool):
        n = int(devices)
        if not 1 <= n <= len(available):
            raise ValueError(
                f"devices must be between 1 and the {len(available)} available "
                f"{available[0].platform} device(s), got {n}"
            )
        chosen = available[:n]
    elif isinstance(devices, (list, tuple)) and devices and all(hasattr(d, "platform") for d in devices):
        if len({d.id for d in devices}) != len(devices):
            raise ValueError(f"devices must be distinct, got {list(devices)}")
        chosen = sorted(devices, key=lambda d: (d.process_index, d.id))
    else:
        raise TypeError(f"devices must be None, a positive int or a non-empty sequence of devices, got {devices!r}")
    return Mesh(np.array(chosen, dtype=object), (axis,))


def _check_mesh(mesh: Any) -> Mesh:
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh (e.g. jr.parallel.data_mesh()), got {type(mesh).__name__}")
    return mesh


def batch_sharding(mesh: Mesh, batch_axis: int = 0) -> NamedSharding:
    """``NamedSharding`` splitting array axis ``batch_axis`` over all the axes of ``mesh``."""
    _check_mesh(mesh)
    names = tuple(mesh.axis_names)
    return NamedSharding(mesh, PartitionSpec(*([None] * batch_axis), names[0] if len(names) == 1 else names))


def replicated(mesh: Mesh) -> NamedSharding:
    """``NamedSharding`` holding a full copy on every device of ``mesh``."""
    return NamedSharding(_check_mesh(mesh), PartitionSpec())


def _put(tree: Any, shardings: Any) -> Any:
    """``device_put`` every leaf not already placed as asked (a placed leaf is returned as is)."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    targets = treedef.flatten_up_to(shardings)
    out = []
    for a, s in zip(leaves, targets):
        if isinstance(a, jax.Array) and a.sharding == s:
            out.append(a)
        else:
            out.append(jax.device_put(a, s))
    return jax.tree_util.tree_unflatten(treedef, out)


# --------------------------------------------------------------------------- batches


def _batch_leaf(what: str, a: Any, sharding: NamedSharding, batch_axis: int) -> Any:
    if isinstance(a, jax.Array) and a.sharding == sharding:
        return a
    if isinstance(a, jax.Array) and not a.is_fully_addressable:  # a global array: reshard it
        return jax.device_put(a, sharding)
    shape = tuple(np.shape(a))
    if len(shape) <= batch_axis:
        raise ValueError(f"{what} must have a batch axis {batch_axis}, got shape {shape_str(shape)}")
    rows = shape[batch_axis]
    if jax.process_count() > 1 and not sharding.is_fully_addressable:
        # Host data are this process's rows of the global batch.
        n_local = len(sharding.addressable_devices)
        if rows % n_local:
            raise ValueError(
                f"{what} has {rows} rows on axis {batch_axis} in process {jax.process_index()}, which is not "
                f"divisible by its {n_local} devices of the mesh (shape {shape_str(shape)})"
            )
        local = np.asarray(a)
        n_proc = len(_mesh_processes(sharding.mesh))
        global_shape = shape[:batch_axis] + (rows * n_proc,) + shape[batch_axis + 1:]
        _check_process_block(sharding, global_shape, batch_axis)
        return jax.make_array_from_process_local_data(sharding, local, global_shape)
    n = sharding.mesh.size
    if rows % n:
        raise ValueError(
            f"{what} has batch size {rows} (axis {batch_axis} of shape {shape_str(shape)}), which is not divisible "
            f"by the {n} devices of the mesh: use a batch size that is a multiple of {n}"
        )
    return jax.device_put(a, sharding)


def _mesh_processes(mesh: Mesh) -> list[int]:
    return sorted({d.process_index for d in mesh.devices.flat})


@functools.lru_cache(maxsize=64)
def _check_process_block(sharding: NamedSharding, global_shape: tuple, batch_axis: int) -> None:
    """This process's devices must own global rows ``[p·B/P, (p+1)·B/P)``."""
    rows = global_shape[batch_axis]
    processes = _mesh_processes(sharding.mesh)
    p, n_proc = processes.index(jax.process_index()), len(processes)
    owned = set()
    for idx in sharding.addressable_devices_indices_map(global_shape).values():
        owned.update(range(*idx[batch_axis].indices(rows)))
    want = set(range(p * rows // n_proc, (p + 1) * rows // n_proc))
    if owned != want:
        raise ValueError(
            f"process {p} of {n_proc} must hold global rows [{min(want)}, {max(want) + 1}) of the batch on its devices, "
            "but the mesh gives it others: build the mesh with jr.parallel.data_mesh(), which orders devices by process"
        )


def shard_batch(tree: Any, mesh: Mesh, *, batch_axis: int = 0, name: str = "batch") -> Any:
    """Place every leaf of ``tree`` split along ``batch_axis`` over the devices of ``mesh``.

    Host arrays are this process's rows of the global batch: with one process, the whole
    batch; with ``P`` processes the global batch is their concatenation in process order
    (``jax.make_array_from_process_local_data``). Leaves already placed so are returned
    unchanged.

    Args:
      tree: a pytree of arrays with the batch on axis ``batch_axis`` (``x``, ``y``, ...).
      mesh: the mesh (:func:`data_mesh`).
      batch_axis: the batch axis (1 for the stacked segments ``(S, B, T, ...)`` of
        :func:`jaxrnn.tbptt.make_epoch`).
      name: what to call ``tree`` in error messages.

    Returns:
      The tree of global ``jax.Array``s with ``NamedSharding(mesh, P(..., axis))``.

    Raises:
      ValueError: a leaf has no axis ``batch_axis``, or its batch size is not divisible by
        the number of devices (the message names ``name``, the batch size and the count).
    """
    sharding = batch_sharding(mesh, batch_axis)
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    out = [
        _batch_leaf(name if len(leaves) == 1 else f"{name} (leaf {i})", a, sharding, batch_axis)
        for i, a in enumerate(leaves)
    ]
    return jax.tree_util.tree_unflatten(treedef, out)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """A full copy of every leaf of ``tree`` on every device of ``mesh`` (global values)."""
    rep = replicated(mesh)
    return _put(tree, jax.tree_util.tree_map(lambda _: rep, tree))


# --------------------------------------------------------------------------- states


def _leading_size(tree: Any, axis: int = 0) -> int | None:
    for a in jax.tree_util.tree_leaves(tree):
        if len(np.shape(a)) > axis:
            return int(np.shape(a)[axis])
    return None


def state_shardings(state: Any, mesh: Mesh, *, batch_size: int | None = None) -> Any:
    """The shardings of a training state: a tree like ``state`` with a ``NamedSharding`` per leaf.

    Leaves of the per-row fields (``carry``, and ``history_carry``, ``history_x``,
    ``history_y`` of a :class:`~jaxrnn.tbptt.K1K2State`) whose leading axis is the batch
    are split over the mesh; every other leaf (parameters, optimizer state, step, a
    dropout key carried beside the recurrent state) is replicated.

    Args:
      state: a ``TrainState`` / ``K1K2State`` (a NamedTuple with a ``carry`` field).
      mesh: the mesh.
      batch_size: the batch ``B``; ``None`` takes the leading size of the first carry leaf.

    Raises:
      ValueError: ``B`` is not divisible by the number of devices.
    """
    _check_mesh(mesh)
    if not (isinstance(state, tuple) and "carry" in getattr(state, "_fields", ())):
        raise TypeError(
            "state must be a training state with a carry field (jr.tbptt.init_state / jr.bptt.init_state / "
            f"jr.tbptt.init_k1k2_state), got {type(state).__name__}"
        )
    rep, split = replicated(mesh), batch_sharding(mesh)
    if batch_size is None:
        batch_size = _leading_size(state.carry)
    if batch_size is not None and batch_size % mesh.size:
        raise ValueError(
            f"state.carry has batch size {batch_size}, which is not divisible by the {mesh.size} devices of the "
            f"mesh: use a batch size that is a multiple of {mesh.size}"
        )

    def per_row(a):
        shape = np.shape(a)
        return split if len(shape) >= 1 and shape[0] == batch_size else rep

    fields = {}
    for f in state._fields:
        v = getattr(state, f)
        fields[f] = jax.tree_util.tree_map(per_row if f in BATCHED_FIELDS else (lambda _: rep), v)
    return type(state)(**fields)


def shard_state(state: Any, mesh: Mesh, *, batch_size: int | None = None) -> Any:
    """Place a training state on ``mesh``: parameters and optimizer state replicated,
    the carry split over the batch (see :func:`state_shardings`).

    The state's values are global: with many processes every process passes the same
    state (e.g. initialised from the same seed). Leaves already placed are kept.

    Example::

      >>> import jax.numpy as jnp, optax, jaxrnn as jr
      >>> mesh = jr.parallel.data_mesh(1)
      >>> state = jr.tbptt.init_state({"w": jnp.ones(3)}, optax.sgd(0.1), jnp.zeros((4, 2)))
      >>> state = jr.parallel.shard_state(state, mesh)
      >>> state.carry.sharding.spec, state.params["w"].sharding.spec
      (P('batch',), P())
    """
    return _put(state, state_shardings(state, mesh, batch_size=batch_size))


# --------------------------------------------------------------------------- steps


@functools.lru_cache(maxsize=None)
def _arg_names(fn: Callable) -> tuple[str, ...]:
    try:
        return tuple(inspect.signature(fn).parameters)[1:]
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return ()


def place_step_inputs(
    fn: Callable, mesh: Mesh, state: Any, args: tuple, kwargs: dict | None = None, batch_axis: int = 0
) -> tuple[Any, tuple, dict]:
    """Place the inputs of ``fn(state, *args, **kwargs)`` on ``mesh`` before a sharded step.

    Each of ``args`` and ``kwargs`` (``x``, ``y``, ``reset``...) is split along
    ``batch_axis`` (:func:`shard_batch`, named after ``fn``'s parameters in errors); the
    state is placed by :func:`shard_state` with the batch size of the first of them. Used
    by :class:`jaxrnn.bptt.Step` when it was given a mesh.

    Returns:
      ``(state, args, kwargs)``, placed.
    """
    names = _arg_names(fn)
    args = tuple(
        shard_batch(a, mesh, batch_axis=batch_axis, name=names[i] if i < len(names) else f"argument {i + 1}")
        for i, a in enumerate(args)
    )
    kwargs = {k: shard_batch(v, mesh, batch_axis=batch_axis, name=k) for k, v in (kwargs or {}).items()}
    return shard_state(state, mesh, batch_size=_leading_size((args, kwargs), batch_axis)), args, kwargs


def sharded_call(fn: Callable, mesh: Mesh, state: Any, args: tuple, kwargs: dict | None = None, batch_axis: int = 0):
    """``fn(state, *args, **kwargs)`` under sharding constraints, for use inside ``jax.jit``.

    The inputs and the returned ``(state, metrics)`` are constrained with
    ``jax.lax.with_sharding_constraint``: the state to :func:`state_shardings`, the
    batch arguments to :func:`batch_sharding`, the metrics replicated. So the new state
    has exactly the shardings of the old one and the next call reuses the compiled step.
    """
    wsc = jax.lax.with_sharding_constraint
    kwargs = kwargs or {}
    batch = _leading_size((args, kwargs), batch_axis)
    state = wsc(state, state_shardings(state, mesh, batch_size=batch))
    split = batch_sharding(mesh, batch_axis)
    args, kwargs = wsc((args, kwargs), jax.tree_util.tree_map(lambda _: split, (args, kwargs)))
    new_state, metrics = fn(state, *args, **kwargs)
    new_state = wsc(new_state, state_shardings(new_state, mesh, batch_size=batch))
    rep = replicated(mesh)
    metrics = wsc(metrics, jax.tree_util.tree_map(lambda _: rep, metrics))
    return new_state, metrics


# --------------------------------------------------------------------------- many processes


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    **kwargs: Any,
) -> tuple[int, int]:
    """Join a multi-process run: ``jax.distributed.initialize``, then ``(process_index, process_count)``.

    Call it first in every process, before anything touches a device. Process
    ``process_id`` of ``num_processes`` connects to the coordinator (process 0) at
    ``coordinator_address`` (``"host:port"``); afterwards ``jax.devices()`` lists every
    process's devices and :func:`data_mesh` spans them all. On a cluster that JAX
    recognises (SLURM, Cloud TPU...) the three arguments may be left out. On CPU the
    processes' collectives go through gloo (the default of jax 0.10); e.g. two processes on
    one machine, each with two devices::

      XLA_FLAGS=--xla_force_host_platform_device_count=2 python train.py 0 &
      XLA_FLAGS=--xla_force_host_platform_device_count=2 python train.py 1
      # train.py: jr.parallel.initialize("127.0.0.1:12355", 2, int(sys.argv[1]))

    Args:
      coordinator_address: ``"host:port"`` of process 0.
      num_processes: ``P``.
      process_id: this process's index ``p`` in ``[0, P)``.
      **kwargs: passed to ``jax.distributed.initialize`` (e.g. ``local_device_ids``).
    """
    if coordinator_address is not None and (not isinstance(coordinator_address, str) or ":" not in coordinator_address):
        raise ValueError(f"coordinator_address must be a 'host:port' string, got {coordinator_address!r}")
    if num_processes is not None and (isinstance(num_processes, bool) or not isinstance(num_processes, int) or num_processes < 1):
        raise ValueError(f"num_processes must be a positive int, got {num_processes!r}")
    if process_id is not None:
        if isinstance(process_id, bool) or not isinstance(process_id, int) or process_id < 0:
            raise ValueError(f"process_id must be a non-negative int, got {process_id!r}")
        if num_processes is not None and process_id >= num_processes:
            raise ValueError(f"process_id must be < num_processes={num_processes}, got {process_id}")
    jax.distributed.initialize(coordinator_address, num_processes, process_id, **kwargs)
    return jax.process_index(), jax.process_count()


def _process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    p = jax.process_index() if process_index is None else process_index
    n = jax.process_count() if process_count is None else process_count
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"process_count must be a positive int, got {n!r}")
    if isinstance(p, bool) or not isinstance(p, (int, np.integer)) or not 0 <= p < n:
        raise ValueError(f"process_index must be an int in [0, {n}), got {p!r}")
    return int(p), int(n)


def process_rows(batch_size: int, process_index: int | None = None, process_count: int | None = None) -> slice:
    """The global rows of the batch that process ``p`` of ``P`` reads: ``slice(p·B/P, (p+1)·B/P)``.

    Args:
      batch_size: the global batch ``B``, a multiple of ``P``.
      process_index, process_count: ``p`` and ``P`` (default: this process's, from JAX).

    Example::

      >>> import jaxrnn as jr
      >>> jr.parallel.process_rows(8, process_index=1, process_count=4)
      slice(2, 4, None)
    """
    p, n = _process(process_index, process_count)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if batch_size % n:
        raise ValueError(f"batch_size {batch_size} must be divisible by the {n} processes (each reads B / P streams)")
    per = batch_size // n
    return slice(p * per, (p + 1) * per)


class ProcessBatches(Iterator):
    """This process's streams of a global :class:`~jaxrnn.data.OffsetBatches`.

    Global stream ``b`` starts at ``b · (N // B)`` as with one process; process ``p`` of
    ``P`` reads streams ``[p·B/P, (p+1)·B/P)``, so the union over the processes is the
    global batch, row for row. The position (``state_dict``) is the global one: the same
    in every process.

    Attributes:
      batches: the global :class:`~jaxrnn.data.OffsetBatches` (it tracks the position).
      rows: the ``slice`` of global rows this process reads.
    """

    def __init__(self, batches: OffsetBatches, process_index: int | None = None, process_count: int | None = None):
        if not isinstance(batches, OffsetBatches):
            raise TypeError(f"batches must be a jr.data.OffsetBatches, got {type(batches).__name__}")
        self.batches = batches
        self.rows = process_rows(batches.batch_size, process_index, process_count)

        self._offsets = np.arange(self.rows.start, self.rows.stop, dtype=np.int64) * batches.steps_per_epoch

    def __iter__(self) -> "ProcessBatches":
        return self

    def __next__(self) -> tuple[np.ndarray, np.ndarray]:
        """The next ``(x, y)`` of this process's rows: ``(B/P, T, ...)`` NumPy arrays."""
        length = self.batches._next_len()  # the global stream's rule (epochs, drop_remainder)
        if length == 0:
            raise StopIteration
        out = self.segment(self.batches.position, length)
        self.batches.position += length
        return out

    def segment(self, position: int, length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """This process's rows of the segment at ``position``, without moving."""
        b = self.batches
        length = b.seq_len if length is None else length
        idx = (self._offsets[:, None] + (position + np.arange(length, dtype=np.int64))[None, :]) % b.num_steps
        x = b.inputs[idx]
        y = b.inputs[(idx + 1) % b.num_steps] if b.targets is None else b.targets[idx]
        return x, y

    def take(self, num_segments: int) -> tuple[np.ndarray, np.ndarray]:
        """The next ``num_segments`` segments of this process's rows, ``(S, B/P, T, ...)``."""
        return take_segments(self.batches, self.segment, num_segments)

    def __len__(self) -> int:
        return len(self.batches)

    @property
    def position(self) -> int:
        return self.batches.position

    def state_dict(self) -> dict:
        return self.batches.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.batches.load_state_dict(state)

    def __repr__(self) -> str:
        return f"ProcessBatches(rows={self.rows.start}:{self.rows.stop}, {self.batches!r})"


def process_batches(
    tokens: Any,
    batch_size: int,
    seq_len: int,
    *,
    process_index: int | None = None,
    process_count: int | None = None,
    **kwargs: Any,
) -> ProcessBatches:
    """Offset batching read by many processes: this process's ``B / P`` streams.

    The arguments are those of :func:`jaxrnn.data.offset_batches` with the *global*
    ``batch_size``; ``process_index``/``process_count`` default to JAX's. The rows it
    yields go to a sharded step (or :func:`shard_batch`) as they are.

    Example::

      >>> import numpy as np, jaxrnn as jr
      >>> full = jr.data.offset_batches(np.arange(100), 4, 5)
      >>> mine = jr.parallel.process_batches(np.arange(100), 4, 5, process_index=1, process_count=2)
      >>> bool((next(mine)[0] == next(full)[0][2:]).all())
      True
    """
    return ProcessBatches(offset_batches(tokens, batch_size, seq_len, **kwargs), process_index, process_count)


def gather(tree: Any) -> Any:
    """A host (NumPy) copy of every array leaf, gathered from every process if need be.

    Arrays that span many processes are collected with
    ``jax.experimental.multihost_utils.process_allgather``, so every process must call
    it; other leaves are copied with ``numpy.asarray``. PRNG key arrays are returned as
    (single-device) key arrays.
    """

    def one(a):
        if isinstance(a, jax.Array) and jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(gather(jax.random.key_data(a)), impl=jax.random.key_impl(a))
        if isinstance(a, jax.Array) and not a.is_fully_addressable:
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(a, tiled=True))
        return np.asarray(a)

    return jax.tree_util.tree_map(one, tree)

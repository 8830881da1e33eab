"""Checkpoints: save and restore pytrees (params, optimizer state, carry, stream position).

The file format is `safetensors <https://github.com/huggingface/safetensors>`_: a JSON
header followed by the raw little-endian bytes of each array, no pickle. Each leaf of
the tree is stored under its path, ``jax.tree_util.keystr(path)`` (e.g.
``.params['rnn']['w_x']`` or ``.opt_state[1][0].mu['b']``), with its dtype and shape
preserved exactly (``bfloat16`` and other dtypes safetensors' NumPy reader lacks are
stored as unsigned-integer views and restored bit for bit; typed PRNG keys as their key
data). The header also holds:

* ``metadata``: any JSON-able dict (step, stream position, a vocabulary...);
* ``sha256``: a digest of the metadata and of every array's name, dtype, shape and bytes,
  checked on every load, so a corrupted file raises a clear ``ValueError`` instead of
  returning wrong numbers.

Writes are atomic: the bytes go to a temporary file in the same directory, which is
flushed and ``fsync``-ed, then renamed over the target with ``os.replace``. A process
killed mid-write leaves the previous checkpoint intact (and at worst a stray
``.<name>.*.tmp`` file next to it).

Example::

  >>> import os, tempfile, jax.numpy as jnp, jaxrnn as jr
  >>> path = os.path.join(tempfile.mkdtemp(), "ckpt.safetensors")
  >>> tree = {"w": jnp.ones((2, 3)), "step": jnp.array(7)}
  >>> jr.checkpoint.save(path, tree, metadata={"note": "hello"})
  >>> restored, meta = jr.checkpoint.restore(path, like=tree)
  >>> restored["w"].shape, int(restored["step"]), meta["note"]
  ((2, 3), 7, 'hello')

The ``safetensors`` package is a core dependency of jaxrnn.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxrnn._checks import shape_str

__all__ = ["save", "restore", "load", "save_state", "restore_state", "Restored", "FORMAT"]

FORMAT = "jaxrnn.checkpoint"
VERSION = 1

# Dtypes safetensors' NumPy reader understands; anything else is stored as a view.
_NATIVE = {
    "float64", "float32", "float16", "int64", "uint64", "int32", "uint32",
    "int16", "uint16", "int8", "uint8", "bool", "complex64",
}
_VIEW = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def _safetensors():
    try:
        import safetensors
        import safetensors.numpy
    except ImportError as e:  # pragma: no cover - exercised with a patched import
        raise ImportError(
            'jaxrnn.checkpoint needs the safetensors package, a dependency of jaxrnn: pip install safetensors'
        ) from e
    return safetensors


# --------------------------------------------------------------------------- encoding


def _is_key_array(x: Any) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _contiguous(a: np.ndarray) -> np.ndarray:
    # (np.ascontiguousarray would turn a 0-d array into shape (1,).)
    return a if a.flags.c_contiguous else a.copy(order="C")


def _encode(name: str, leaf: Any) -> tuple[np.ndarray, dict | None]:
    """(array to store, how to decode it or None)."""
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:  # spans processes: gather (collective)
        from jax.experimental import multihost_utils

        leaf = multihost_utils.process_allgather(leaf, tiled=True)
    if _is_key_array(leaf):
        data = np.asarray(jax.random.key_data(leaf))
        return _contiguous(data), {"key": str(jax.random.key_impl(leaf))}
    if isinstance(leaf, (bool, int, float, np.generic)) or hasattr(leaf, "__array__"):
        a = np.asarray(leaf)
    else:
        raise TypeError(f"checkpoint leaves must be arrays or numbers; the leaf at {name} is a {type(leaf).__name__}")
    if a.dtype.kind in ("O", "U", "S"):
        raise TypeError(f"checkpoint leaves must be numeric arrays; the leaf at {name} has dtype {a.dtype}")
    if a.dtype.name in _NATIVE:
        return _contiguous(a), None
    if a.dtype.itemsize not in _VIEW:
        raise TypeError(f"cannot store dtype {a.dtype} (itemsize {a.dtype.itemsize}) of the leaf at {name}")
    return _contiguous(a).view(_VIEW[a.dtype.itemsize]), {"dtype": a.dtype.name}


def _decode(a: np.ndarray, how: dict | None) -> Any:
    if how is None:
        return a
    if "key" in how:
        return jax.random.wrap_key_data(jnp.asarray(a), impl=how["key"])
    return a.view(jnp.dtype(how["dtype"]))


def _digest(tensors: dict[str, np.ndarray], meta_json: str) -> str:
    h = hashlib.sha256()
    h.update(meta_json.encode())
    for k in sorted(tensors):
        a = tensors[k]
        h.update(b"\0" + k.encode() + b"\0" + a.dtype.str.encode() + b"\0" + str(a.shape).encode() + b"\0")
        h.update(_contiguous(a).tobytes())
    return h.hexdigest()


def _flatten(tree: Any) -> list[tuple[str, Any]]:
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [(jax.tree_util.keystr(path), leaf) for path, leaf in leaves]


# --------------------------------------------------------------------------- files


def _atomic_write(path: str, data: bytes) -> None:
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. platforms without directory fds
        return
    try:
        os.fsync(dir_fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(dir_fd)


def save(path: str | os.PathLike, tree: Any, *, metadata: dict | None = None) -> None:
    """Write ``tree`` (and JSON-able ``metadata``) to ``path`` atomically.

    Sharded arrays are stored whole (gathered), so the file does not depend on the device
    count. In a multi-process run (:func:`jaxrnn.parallel.initialize`) every process must
    call it: arrays spanning processes are gathered collectively, process 0 writes the
    file, and all return once it is written.

    Args:
      path: the file to write (conventionally ``*.safetensors``); its directory must exist.
      tree: a pytree of arrays (JAX or NumPy, any dtype incl. bfloat16 and PRNG keys) or
        Python numbers. ``None`` entries are part of the structure and store nothing.
      metadata: a JSON-able dict stored in the header (e.g. ``{"step": 100}``).

    Raises:
      TypeError: a leaf is not numeric, or ``metadata`` is not JSON-able.
    """
    st = _safetensors()
    if metadata is not None and not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict or None, got {type(metadata).__name__}")
    try:
        meta_json = json.dumps(metadata if metadata is not None else {}, sort_keys=True)
    except (TypeError, ValueError) as e:
        raise TypeError(f"metadata must be JSON-serialisable: {e}") from e
    tensors, encodings = {}, {}
    for name, leaf in _flatten(tree):
        if name in tensors:  # pragma: no cover - keystr paths are unique
            raise ValueError(f"two leaves share the name {name}")
        tensors[name], how = _encode(name, leaf)
        if how is not None:
            encodings[name] = how
    header = {
        "format": FORMAT,
        "version": str(VERSION),
        "metadata": meta_json,
        "encodings": json.dumps(encodings, sort_keys=True),
        "sha256": _digest(tensors, meta_json + json.dumps(encodings, sort_keys=True)),
    }
    _check_not_dir(os.fspath(path))
    if jax.process_index() == 0:  # with many processes all gather the arrays, process 0 writes
        _atomic_write(os.fspath(path), st.numpy.save(tensors, metadata=header))
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"jaxrnn.checkpoint.save {os.fspath(path)}")


def _check_not_dir(path: str) -> None:
    if os.path.isdir(path):
        inside = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
        hint = f"; it holds {', '.join(inside[:5])}" if inside else ""
        raise ValueError(f"{path} is a directory, not a checkpoint file: pass the file's path{hint}")


def _corrupt(path: str, why: str) -> ValueError:
    return ValueError(f"{path} is not a valid jaxrnn checkpoint ({why}); the file is truncated, corrupted or of another kind")


def load(path: str | os.PathLike) -> tuple[dict[str, Any], dict]:
    """Read a checkpoint without a template: ``({name: array}, metadata)``.

    Arrays are NumPy arrays in their saved dtype (PRNG keys come back as JAX key
    arrays). The checksum is verified.

    Raises:
      FileNotFoundError: no file at ``path``.
      ValueError: the file is truncated, corrupted, or not a jaxrnn checkpoint.
    """
    st = _safetensors()
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    _check_not_dir(path)
    try:
        with st.safe_open(path, framework="numpy") as f:
            header = f.metadata() or {}
            if header.get("format") != FORMAT:
                raise _corrupt(path, f"its header has no {FORMAT!r} format tag")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except ValueError:
        raise
    except Exception as e:  # safetensors raises its own error type for bad headers / sizes
        raise _corrupt(path, f"{type(e).__name__}: {e}") from e
    if int(header.get("version", -1)) > VERSION:
        raise ValueError(f"{path} was written by a newer jaxrnn (checkpoint version {header['version']} > {VERSION})")
    meta_json, enc_json = header.get("metadata", "{}"), header.get("encodings", "{}")
    if _digest(tensors, meta_json + enc_json) != header.get("sha256"):
        raise _corrupt(path, "sha256 checksum mismatch")
    try:
        metadata, encodings = json.loads(meta_json), json.loads(enc_json)
    except json.JSONDecodeError as e:  # pragma: no cover - caught by the checksum first
        raise _corrupt(path, f"bad metadata JSON: {e}") from e
    return {k: _decode(v, encodings.get(k)) for k, v in tensors.items()}, metadata


def _like_leaf(name: str, saved: Any, like: Any) -> Any:
    """Check ``saved`` against the template leaf ``like`` and convert it to like's kind."""
    if _is_key_array(like) or (isinstance(like, jax.ShapeDtypeStruct) and jax.dtypes.issubdtype(like.dtype, jax.dtypes.prng_key)):
        if not _is_key_array(saved):
            raise ValueError(f"checkpoint entry {name} is a plain array, but the template holds a PRNG key there")
        if saved.shape != like.shape:
            raise ValueError(f"checkpoint entry {name} has key shape {shape_str(saved.shape)}, the template expects {shape_str(like.shape)}")
        return _place(saved, like)
    if _is_key_array(saved):
        raise ValueError(f"checkpoint entry {name} is a PRNG key, but the template holds a plain array there")
    if isinstance(like, (bool, int, float)):
        if saved.shape != ():
            raise ValueError(f"checkpoint entry {name} has shape {shape_str(saved.shape)}, the template holds a Python scalar")
        return type(like)(saved.item())
    shape, dtype = tuple(np.shape(like)), like.dtype
    if tuple(saved.shape) != shape:
        raise ValueError(f"checkpoint entry {name} has shape {shape_str(saved.shape)}, the template expects {shape_str(shape)}")
    if saved.dtype != dtype:
        raise ValueError(f"checkpoint entry {name} has dtype {saved.dtype}, the template expects {dtype}")
    if isinstance(like, np.ndarray) or isinstance(like, np.generic):
        return saved
    return _place(saved, like)


def _place(saved: Any, like: Any) -> Any:
    """A JAX array of ``saved``, laid out like ``like`` when that is sharded over many devices
    (e.g. placed by :func:`jaxrnn.parallel.shard_state`), so a checkpoint restores onto any
    device count or mesh; otherwise on the default device."""
    sharding = getattr(like, "sharding", None)
    if sharding is not None and not isinstance(sharding, jax.sharding.SingleDeviceSharding):
        return jax.device_put(saved, sharding)
    return jnp.asarray(saved) if not _is_key_array(saved) else saved


def restore(path: str | os.PathLike, like: Any, *, strict: bool = True) -> tuple[Any, dict]:
    """Read a checkpoint into the structure of ``like``: ``(tree, metadata)``.

    Args:
      path: a file written by :func:`save`.
      like: a template with the saved tree structure (e.g. freshly initialised params
        and optimizer state; NamedTuples such as optax states are matched by path). Its
        leaves may be arrays, ``jax.ShapeDtypeStruct``, or Python numbers; each restored
        leaf takes the kind of its template leaf (JAX array, NumPy array, Python number)
        with the saved values, bit for bit. A leaf sharded over many devices (a template
        placed by :func:`jaxrnn.parallel.shard_state`) is restored with its sharding, on
        any device count: a run saved on 8 devices resumes on 1 or on 2.
      strict: also refuse entries in the file that the template does not have.

    Returns:
      ``(tree, metadata)``.

    Raises:
      ValueError: truncated or corrupted file, missing or unexpected entries, or a shape
        or dtype different from the template's (the message names the entry).
    """
    arrays, metadata = load(path)
    named = _flatten(like)
    names = [n for n, _ in named]
    missing = [n for n in names if n not in arrays]
    if missing:
        raise ValueError(
            f"{os.fspath(path)} has no entries for {len(missing)} leaves of the template, e.g. "
            f"{', '.join(missing[:5])}; it holds {', '.join(sorted(arrays)[:5])}{'...' if len(arrays) > 5 else ''}"
        )
    extra = sorted(set(arrays) - set(names))
    if extra and strict:
        raise ValueError(
            f"{os.fspath(path)} holds {len(extra)} entries the template lacks, e.g. {', '.join(extra[:5])} "
            "(pass strict=False to ignore them)"
        )
    leaves = [_like_leaf(n, arrays[n], leaf) for n, leaf in named]
    treedef = jax.tree_util.tree_structure(like)
    return jax.tree_util.tree_unflatten(treedef, leaves), metadata


# --------------------------------------------------------------------------- training states


class Restored(NamedTuple):
    """What :func:`restore_state` returns."""

    state: Any
    position: Any
    metadata: dict


def save_state(path: str | os.PathLike, state: Any, *, position: Any = None, metadata: dict | None = None) -> None:
    """Save a training state and the data stream's position in one atomic file.

    Args:
      path: the file to write.
      state: a :class:`~jaxrnn.bptt.TrainState` (params, optimizer state, carry, step),
        a :class:`~jaxrnn.tbptt.K1K2State`, or any pytree.
      position: JSON-able position of the batches, e.g. ``batches.state_dict()``.
      metadata: more JSON-able information (hyper-parameters, a vocabulary...).

    Example::

      >>> import os, tempfile, jax.numpy as jnp, numpy as np, optax, jaxrnn as jr
      >>> tx = optax.sgd(0.1)
      >>> state = jr.tbptt.init_state({"w": jnp.ones(3)}, tx, jnp.zeros((2, 4)))
      >>> batches = jr.data.offset_batches(np.arange(100), 2, 5)
      >>> _ = next(batches)
      >>> path = os.path.join(tempfile.mkdtemp(), "run.safetensors")
      >>> jr.checkpoint.save_state(path, state, position=batches.state_dict())
      >>> state, position, meta = jr.checkpoint.restore_state(path, like=state)
      >>> position["position"]
      5
    """
    step = getattr(state, "step", None)
    info = {
        "step": None if step is None else int(np.asarray(step)),
        "position": position,
        "metadata": metadata if metadata is not None else {},
    }
    save(path, state, metadata=info)


def restore_state(path: str | os.PathLike, like: Any, *, strict: bool = True) -> Restored:
    """Restore what :func:`save_state` wrote: ``Restored(state, position, metadata)``.

    ``like`` is a template state with the same structure (e.g. ``init_state(params, tx,
    carry)`` from a freshly initialised model); ``position`` goes to
    ``batches.load_state_dict(position)``.
    """
    state, info = restore(path, like, strict=strict)
    if not isinstance(info, dict) or "position" not in info:
        raise ValueError(f"{os.fspath(path)} was written by checkpoint.save, not save_state (no stream position in it)")
    return Restored(state, info["position"], info.get("metadata", {}))

"""Checkpoints: exact round trips, kill-and-resume == uninterrupted, atomic writes, clear errors."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxrnn as jr
from jaxrnn import checkpoint

pytest.importorskip("safetensors")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def leaves_equal(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for u, v in zip(la, lb):
        assert np.asarray(u).dtype == np.asarray(v).dtype
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


# --------------------------------------------------------------------------- round trips


def test_round_trip_preserves_values_dtypes_and_structure(tmp_path):
    rng = np.random.default_rng(0)
    tree = {
        "f32": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32),
        "f64": np.asarray(rng.normal(size=(2,)), np.float64),
        "bf16": jnp.asarray(rng.normal(size=(5,)), jnp.bfloat16),
        "f16": jnp.asarray(rng.normal(size=(2, 2)), jnp.float16),
        "i32": jnp.arange(4, dtype=jnp.int32),
        "bool": jnp.array([True, False]),
        "scalar": jnp.array(3.5, jnp.float32),
        "empty": jnp.zeros((0, 3), jnp.float32),
        "nested": [(jnp.ones(2, jnp.float32), None), {"n": 7, "x": 0.25}],
        "key": jax.random.key(42),
    }
    path = tmp_path / "t.safetensors"
    checkpoint.save(path, tree, metadata={"vocab": ["a", "b"], "step": 3})
    got, meta = checkpoint.restore(path, like=tree)
    assert meta == {"vocab": ["a", "b"], "step": 3}
    key = got.pop("key")
    assert jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
    np.testing.assert_array_equal(jax.random.key_data(key), jax.random.key_data(tree.pop("key")))
    leaves_equal(got, tree)
    assert isinstance(got["f64"], np.ndarray) and isinstance(got["f32"], jax.Array)
    assert got["nested"][1] == {"n": 7, "x": 0.25} and got["nested"][0][1] is None
    # NaN payloads and -0.0 survive bit for bit.
    special = {"x": jnp.array([np.nan, -0.0, np.inf], jnp.float32)}
    checkpoint.save(path, special)
    got, _ = checkpoint.restore(path, like=special)
    np.testing.assert_array_equal(np.asarray(got["x"]).view(np.uint32), np.asarray(special["x"]).view(np.uint32))


def test_restore_into_optax_state_template_and_shape_dtype_structs(tmp_path):
    params = {"w": jnp.arange(6.0, dtype=jnp.float32).reshape(2, 3)}
    tx = jr.clipped(optax.adam(0.1), 1.0, skip_nonfinite=True)
    opt_state = tx.init(params)
    _, opt_state = tx.update(params, opt_state, params)
    path = tmp_path / "o.safetensors"
    checkpoint.save(path, (params, opt_state))
    template = jax.eval_shape(lambda: (params, tx.init(params)))
    got, _ = checkpoint.restore(path, like=template)
    leaves_equal(got, (params, opt_state))
    names, _ = checkpoint.load(path)
    assert "[1].inner_state[1][0].mu['w']" in names  # keys are jax.tree_util.keystr paths


def test_mismatches_give_clear_errors(tmp_path):
    path = tmp_path / "m.safetensors"
    checkpoint.save(path, {"a": jnp.zeros((2, 3), jnp.float32), "b": jnp.zeros(2, jnp.int32)})
    with pytest.raises(ValueError, match=r"\['a'\] has shape \(2, 3\), the template expects \(3, 2\)"):
        checkpoint.restore(path, like={"a": jnp.zeros((3, 2), jnp.float32), "b": jnp.zeros(2, jnp.int32)})
    with pytest.raises(ValueError, match=r"\['b'\] has dtype int32, the template expects float32"):
        checkpoint.restore(path, like={"a": jnp.zeros((2, 3), jnp.float32), "b": jnp.zeros(2, jnp.float32)})
    with pytest.raises(ValueError, match=r"no entries for 1 leaves.*\['c'\]"):
        checkpoint.restore(path, like={"a": jnp.zeros((2, 3), jnp.float32), "c": jnp.zeros(2)})
    with pytest.raises(ValueError, match=r"entries the template lacks.*\['b'\]"):
        checkpoint.restore(path, like={"a": jnp.zeros((2, 3), jnp.float32)})
    got, _ = checkpoint.restore(path, like={"a": jnp.zeros((2, 3), jnp.float32)}, strict=False)
    assert got["a"].shape == (2, 3)
    with pytest.raises(TypeError, match="JSON"):
        checkpoint.save(path, {"a": jnp.zeros(1)}, metadata={"f": object()})
    with pytest.raises(TypeError, match=r"\['s'\]"):
        checkpoint.save(path, {"s": "text"})
    with pytest.raises(FileNotFoundError):
        checkpoint.restore(tmp_path / "missing.safetensors", like={})


# --------------------------------------------------------------------------- corruption


@pytest.fixture
def saved(tmp_path):
    tree = {"w": jnp.asarray(np.random.default_rng(1).normal(size=(64, 8)), jnp.float32), "step": jnp.array(5)}
    path = tmp_path / "c.safetensors"
    checkpoint.save(path, tree, metadata={"step": 5})
    return path, tree


@pytest.mark.parametrize("cut", [0, 4, 30, 0.5, -1])
def test_truncated_file_is_a_clear_value_error(saved, cut):
    path, tree = saved
    data = path.read_bytes()
    n = int(len(data) * cut) if isinstance(cut, float) else (len(data) + cut if cut < 0 else cut)
    path.write_bytes(data[:n])
    with pytest.raises(ValueError, match="not a valid jaxrnn checkpoint"):
        checkpoint.restore(path, like=tree)


def test_flipped_payload_byte_fails_the_checksum(saved):
    path, tree = saved
    data = bytearray(path.read_bytes())
    data[-100] ^= 0x10  # inside the array bytes: the header still parses
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256 checksum mismatch"):
        checkpoint.restore(path, like=tree)


def test_corrupted_header_and_foreign_files(saved, tmp_path):
    path, tree = saved
    data = bytearray(path.read_bytes())
    header_len = int.from_bytes(data[:8], "little")
    data[8 + header_len // 2] = ord("\x01")
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="not a valid jaxrnn checkpoint"):
        checkpoint.restore(path, like=tree)
    garbage = tmp_path / "g.safetensors"
    garbage.write_bytes(os.urandom(300))
    with pytest.raises(ValueError, match="not a valid jaxrnn checkpoint"):
        checkpoint.load(garbage)
    import safetensors.numpy

    foreign = tmp_path / "f.safetensors"
    foreign.write_bytes(safetensors.numpy.save({"w": np.zeros(2, np.float32)}))
    with pytest.raises(ValueError, match="format tag"):
        checkpoint.load(foreign)


def test_missing_safetensors_names_the_package(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "safetensors", None)
    with pytest.raises(ImportError, match=r"needs the safetensors package, a dependency of jaxrnn: pip install safetensors"):
        checkpoint.save(tmp_path / "x.safetensors", {"a": jnp.zeros(1)})


# --------------------------------------------------------------------------- atomic writes


def test_crash_before_rename_keeps_previous_checkpoint(saved, monkeypatch):
    path, tree = saved

    def crash(*args):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        checkpoint.save(path, {"w": jnp.zeros((64, 8), jnp.float32), "step": jnp.array(6)})
    monkeypatch.undo()
    got, meta = checkpoint.restore(path, like=tree)
    leaves_equal(got, tree)
    assert meta == {"step": 5}
    assert sorted(os.listdir(path.parent)) == [path.name]  # the temporary file was removed


_WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from jaxrnn import checkpoint
    path = sys.argv[1]
    i = 1
    while True:
        checkpoint.save(path, {"w": np.full((1 << 20,), i, np.float32)}, metadata={"i": i})
        if i == 1:
            print("ready", flush=True)
        i += 1
    """
)


def test_process_killed_mid_write_leaves_a_valid_checkpoint(tmp_path):
    """SIGKILL a process that rewrites a 4 MB checkpoint in a loop: whenever it dies, the
    file on disk is a complete checkpoint of one of the versions it wrote."""
    path = tmp_path / "k.safetensors"
    checkpoint.save(path, {"w": np.zeros((1 << 20,), np.float32)}, metadata={"i": 0})
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), JAX_PLATFORMS="cpu")
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(0.3)  # several writes in flight
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    got, meta = checkpoint.restore(path, like={"w": np.zeros((1 << 20,), np.float32)})
    assert meta["i"] >= 1
    np.testing.assert_array_equal(got["w"], np.full((1 << 20,), meta["i"], np.float32))


# --------------------------------------------------------------------------- kill and resume


V, E, H, B, T = 11, 4, 8, 3, 5


def make_model(seed):
    cell = jr.lstm(H)
    emb, head = jr.layers.embedding(V, E), jr.layers.affine(V)
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    params = {"rnn": cell.init(k1, E), "emb": emb.init(k2), "head": head.init(k3, H)}

    def loss_fn(params, carry, x, y):
        carry, hs = jr.unroll(cell, params["rnn"], emb.apply(params["emb"], x), carry)
        return jr.layers.softmax_cross_entropy(head.apply(params["head"], hs), y), carry

    return params, cell.initial_carry(B, jnp.float32), loss_fn


def tokens():
    return np.random.default_rng(3).integers(0, V, 400).astype(np.int32)


def test_kill_and_resume_is_bitwise_identical_to_an_uninterrupted_run(tmp_path):
    total, cut = 9, 4
    tx = jr.clipped(optax.adam(3e-2), max_norm=0.5)

    params, carry, loss_fn = make_model(0)
    step = jr.tbptt.make_step(loss_fn, tx)
    state = jr.tbptt.init_state(params, tx, carry)
    batches = jr.data.offset_batches(tokens(), B, T)
    for _ in range(total):
        state, _ = step(state, *next(batches))
    straight = jax.tree_util.tree_map(np.asarray, state)

    state = jr.tbptt.init_state(params, tx, carry)  # the same step function: no recompilation
    batches = jr.data.offset_batches(tokens(), B, T)
    for _ in range(cut):
        state, _ = step(state, *next(batches))
    path = tmp_path / "run.safetensors"
    checkpoint.save_state(path, state, position=batches.state_dict(), metadata={"lr": 3e-2})
    del state, batches, step, params, carry, loss_fn

    # A fresh process would rebuild everything: a differently initialised model as the
    # template, new batches, a new (recompiled) step.
    params, carry, loss_fn = make_model(123)
    template = jr.tbptt.init_state(params, tx, carry)
    state, position, meta = checkpoint.restore_state(path, like=template)
    assert meta == {"lr": 3e-2} and int(state.step) == cut
    assert json.loads(json.dumps(position)) == position
    batches = jr.data.offset_batches(tokens(), B, T)
    batches.load_state_dict(position)
    step = jr.tbptt.make_step(loss_fn, tx)
    for _ in range(total - cut):
        state, _ = step(state, *next(batches))
    resumed = jax.tree_util.tree_map(np.asarray, state)
    leaves_equal(resumed, straight)  # params, optimizer state, carry and step, bit for bit


def test_a_directory_path_is_named(tmp_path):
    checkpoint.save(tmp_path / "run.safetensors", {"w": np.ones(2)})
    for call in (lambda: checkpoint.load(tmp_path), lambda: checkpoint.restore(tmp_path, like={"w": np.ones(2)}),
                 lambda: checkpoint.save(tmp_path, {"w": np.ones(2)})):
        with pytest.raises(ValueError, match=f"{tmp_path} is a directory, not a checkpoint file: pass the file's "
                                             "path; it holds run.safetensors"):
            call()

"""Data parallelism (jaxrnn.parallel, mesh= on the steps, checkpoints across device counts).

JAX fixes its device count when it starts, so the multi-device tests run small scripts
in subprocesses with ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` (CPU devices
that share the host's cores): one with 8 devices (sharded vs single-device TBPTT, fused
epoch, TBPTT(k1, k2) and BPTT steps; error messages; a checkpoint written; the
``jaxrnn train --devices`` option), one with 2 devices that resumes that checkpoint on 1
and on 2 devices, and two processes joined by ``jax.distributed.initialize`` on
127.0.0.1 (2 devices each) that read their own streams of the offset batching.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("safetensors")

import jaxrnn as jr  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 2e-5  # float32, sums in another order

# Shared by the scripts: a small LSTM regression, float32 (x64 is off in the subprocesses).
PRELUDE = textwrap.dedent(
    """
    import json, os, sys
    import jax, jax.numpy as jnp, numpy as np, optax
    import jaxrnn as jr
    from jaxrnn import checkpoint, parallel

    B, T, S = 16, 5, 3
    cell = jr.lstm(8)
    params = cell.init(jax.random.key(0), input_size=3)
    tx = jr.clipped(optax.adam(1e-2), max_norm=1.0)
    rs = np.random.RandomState(0)
    XS = rs.randn(S, B, T, 3).astype(np.float32)
    YS = rs.randn(S, B, T, 1).astype(np.float32)

    def loss_fn(p, c, x, y):
        c, ys = jr.unroll(cell, p, x, c)
        return jnp.mean((ys[..., :1] - y) ** 2), c

    def fresh():
        return jr.tbptt.init_state(params, tx, cell.initial_carry(B))

    def maxdiff(a, b):
        la, lb = jax.tree_util.tree_leaves(parallel.gather(a)), jax.tree_util.tree_leaves(parallel.gather(b))
        assert len(la) == len(lb)
        return max(float(np.max(np.abs(np.asarray(u, np.float64) - np.asarray(v, np.float64)))) for u, v in zip(la, lb))

    def spec(a):
        return [list(getattr(a.sharding, "spec", ())), len(a.sharding.device_set)]

    def error(f):
        try:
            f()
        except ValueError as e:
            return str(e)
        return None
    """
)

EIGHT = PRELUDE + textwrap.dedent(
    """
    import contextlib, io
    from jaxrnn import cli
    out = {"device_count": jax.device_count()}
    mesh8, mesh4 = parallel.data_mesh(), parallel.data_mesh(4)
    resets = np.zeros((S, B), bool); resets[1, [1, 10]] = True

    # TBPTT: three segments (two rows reset before the second), 8 devices vs 1.
    one, eight = jr.tbptt.make_step(loss_fn, tx), jr.tbptt.make_step(loss_fn, tx, mesh=mesh8)
    s1, s8, loss_diff = fresh(), parallel.shard_state(fresh(), mesh8), 0.0
    for i in range(S):
        s1, m1 = one(s1, XS[i], YS[i], reset=resets[i])
        s8, m8 = eight(s8, XS[i], YS[i], reset=resets[i])
        loss_diff = max(loss_diff, abs(float(m1["loss"]) - float(m8["loss"])), abs(float(m1["grad_norm"]) - float(m8["grad_norm"])))
    out["tbptt"] = {"params": maxdiff(s1.params, s8.params), "opt_state": maxdiff(s1.opt_state, s8.opt_state),
                    "carry": maxdiff(s1.carry, s8.carry), "metrics": loss_diff, "step": int(s8.step),
                    "traces": [one.trace_count, eight.trace_count], "carry_spec": spec(s8.carry[0]),
                    "param_spec": spec(s8.params["w_h"]), "loss_spec": spec(m8["loss"])}
    # The same steps again from unplaced (host) inputs and state: placed by the step itself.
    s8b = eight(fresh(), XS[0], YS[0], reset=resets[0])[0]
    out["tbptt"]["auto_placed"] = [spec(s8b.carry[1]), spec(s8b.opt_state[1][0].mu["w_x"])]

    # Fused epoch: the batch is axis 1 of the stacked segments.
    e1, e8 = jr.tbptt.make_epoch(loss_fn, tx), jr.tbptt.make_epoch(loss_fn, tx, mesh=mesh8)
    a, ma = e1(fresh(), XS, YS)
    b, mb = e8(fresh(), XS, YS)
    out["epoch"] = {"params": maxdiff(a.params, b.params), "carry": maxdiff(a.carry, b.carry),
                    "loss": maxdiff(ma["loss"], mb["loss"]), "carry_spec": spec(b.carry[0])}

    # TBPTT(k1=2, k2=4) over 3 updates: the history is split like the carry.
    k1, k8 = jr.tbptt.make_k1k2_step(loss_fn, tx, 2, 4), jr.tbptt.make_k1k2_step(loss_fn, tx, 2, 4, mesh=mesh8)
    a = jr.tbptt.init_k1k2_state(params, tx, cell.initial_carry(B)); b = jr.tbptt.init_k1k2_state(params, tx, cell.initial_carry(B))
    for i in range(3):
        a, _ = k1(a, XS[i][:, :2], YS[i][:, :2])
        b, _ = k8(b, XS[i][:, :2], YS[i][:, :2])
    out["k1k2"] = {"params": maxdiff(a.params, b.params), "carry": maxdiff(a.carry, b.carry),
                   "history": maxdiff(a.history_x, b.history_x), "history_spec": spec(b.history_x)}

    # Full BPTT on 4 of the 8 devices, whole sequences of 15 steps.
    X, Y = XS.transpose(1, 0, 2, 3).reshape(B, S * T, 3), YS.transpose(1, 0, 2, 3).reshape(B, S * T, 1)
    f1, f4 = jr.bptt.make_step(loss_fn, tx), jr.bptt.make_step(loss_fn, tx, mesh=mesh4)
    a, b = fresh(), fresh()
    for _ in range(2):
        a, ma = f1(a, X, Y)
        b, mb = f4(b, X, Y)
    out["bptt"] = {"params": maxdiff(a.params, b.params), "loss": abs(float(ma["loss"]) - float(mb["loss"])),
                   "traces": f4.trace_count, "carry_spec": spec(b.carry[0]), "param_spec": spec(b.params["b"])}

    # Errors: a batch the device count does not divide.
    out["errors"] = {
        "step": error(lambda: eight(fresh(), XS[0][:12], YS[0][:12])),
        "epoch": error(lambda: e8(fresh(), XS[:, :6], YS[:, :6])),
        "shard_batch": error(lambda: parallel.shard_batch(np.zeros((6, 3)), mesh8, name="tokens")),
        "shard_state": error(lambda: parallel.shard_state(jr.tbptt.init_state(params, tx, cell.initial_carry(4)), mesh8)),
        "data_mesh": error(lambda: parallel.data_mesh(9)),
    }

    # Checkpoint after the 3 sharded segments, then 2 more segments as the reference.
    ckpt = os.path.join(sys.argv[1], "run.safetensors")
    checkpoint.save_state(ckpt, s8, position={"position": S * T})
    for i in range(2):
        s8, _ = eight(s8, XS[i], YS[i], reset=resets[0])
    host = parallel.gather(s8)
    np.savez(os.path.join(sys.argv[1], "after.npz"), *jax.tree_util.tree_leaves(host))

    # jaxrnn train --devices 4 equals 3 TBPTT steps of the same model on one device (dropout on:
    # its key rides in the carry, replicated).
    corpus = os.path.join(sys.argv[1], "tiny.txt")
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran"]
    with open(corpus, "w") as f:
        f.write("".join(" ".join(rs.choice(words, rs.randint(3, 8))) + ".\\n" for _ in range(120)))
    common = ["train", "--corpus", corpus, "--hidden", "16", "--embed", "8", "--batch-size", "8", "--seq-len", "8",
              "--steps", "3", "--eval-every", "3", "--dropout", "0.2", "--no-progress", "--sample-length", "1"]
    run = os.path.join(sys.argv[1], "cli4")
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(common + ["--devices", "4", "--out", run]) == 0
    with open(os.path.join(run, cli.CONFIG)) as f:
        cfg = json.load(f)
    with open(os.path.join(run, cli.METRICS)) as f:
        metrics = json.load(f)
    data = cli._load_corpus(cfg)
    model, tx_lm = cli._model(cfg, data.vocab.size), cli._optimizer(cfg)
    ref, ref_step = cli._template_state(cfg, model, tx_lm), jr.tbptt.make_step(jr.lm.loss_fn(model), tx_lm)
    batches, ref_loss = jr.data.offset_batches(data.train, 8, 8), []
    for _ in range(3):
        ref, m = ref_step(ref, *next(batches))
        ref_loss.append(float(m["loss"]))
    saved = checkpoint.restore_state(os.path.join(run, cli.CHECKPOINT), like=cli._template_state(cfg, model, tx_lm))
    out["cli"] = {"state": maxdiff(saved.state, ref), "devices": metrics["devices"], "steps": metrics["steps"],
                  "train_loss": max(abs(u - v) for u, v in zip(metrics["history"]["train_loss"], ref_loss))}
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.main(common + ["--batch-size", "6", "--devices", "4", "--out", os.path.join(sys.argv[1], "bad")])
    out["cli"]["bad_batch"] = [code, err.getvalue()]
    print(json.dumps(out))
    """
)

RESUME = PRELUDE + textwrap.dedent(
    """
    out = {"device_count": jax.device_count()}
    ckpt = os.path.join(sys.argv[1], "run.safetensors")
    with np.load(os.path.join(sys.argv[1], "after.npz")) as f:
        want = [f[f"arr_{i}"] for i in range(len(f.files))]
    mesh2 = parallel.data_mesh(2)
    for name, like, mesh in (("one", fresh(), None), ("two", parallel.shard_state(fresh(), mesh2), mesh2)):
        state, position, _ = checkpoint.restore_state(ckpt, like=like)
        placed = spec(state.carry[0])
        step = jr.tbptt.make_step(loss_fn, tx, mesh=mesh)
        for i in range(2):
            state, _ = step(state, XS[i], YS[i], reset=np.zeros(B, bool))
        got = jax.tree_util.tree_leaves(parallel.gather(state))
        out[name] = {"diff": max(float(np.max(np.abs(np.asarray(u, np.float64) - v))) for u, v in zip(got, want)),
                     "step": int(state.step), "position": position["position"], "restored_spec": placed,
                     "traces": step.trace_count}
    print(json.dumps(out))
    """
)

PROCESS = textwrap.dedent(
    """
    import json, os, sys
    pid, port, outdir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    import jax, jax.numpy as jnp, numpy as np, optax
    import jaxrnn as jr
    from jaxrnn import checkpoint, parallel

    index, count = parallel.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=pid)
    B, T, V = 8, 5, 11
    cell, emb, head = jr.gru(8), jr.layers.embedding(V, 4), jr.layers.affine(V)
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    params = {"rnn": cell.init(k1, 4), "emb": emb.init(k2), "head": head.init(k3, 8)}
    tx = jr.clipped(optax.adam(1e-2), max_norm=1.0)
    tokens = np.random.RandomState(1).randint(0, V, 400)

    def loss_fn(p, c, x, y):
        c, hs = jr.unroll(cell, p["rnn"], emb.apply(p["emb"], x), c)
        return jr.layers.softmax_cross_entropy(head.apply(p["head"], hs), y), c

    mesh = parallel.data_mesh()
    mine = parallel.process_batches(tokens, B, T)
    state = parallel.shard_state(jr.tbptt.init_state(params, tx, cell.initial_carry(B)), mesh)
    step = jr.tbptt.make_step(loss_fn, tx, mesh=mesh)
    losses, local_rows = [], None
    for _ in range(3):
        x, y = next(mine)
        local_rows = x.shape[0]
        state, m = step(state, x, y)
        losses.append(float(m["loss"]))
    x_global = parallel.gather(parallel.shard_batch(mine.segment(0)[0], mesh, name="x"))
    result = parallel.gather(state)
    checkpoint.save_state(os.path.join(outdir, "multi.safetensors"), state, position=mine.state_dict())
    out = {"index": index, "count": count, "devices": jax.device_count(), "local_devices": jax.local_device_count(),
           "local_rows": local_rows, "rows": [mine.rows.start, mine.rows.stop], "traces": step.trace_count,
           "carry_spec": list(state.carry.sharding.spec), "addressable": state.carry.is_fully_addressable}
    if pid == 0:
        # The reference: one device of this process, the whole global batch.
        full = jr.data.offset_batches(tokens, B, T)
        out["global_batch"] = bool((x_global == full.segment(0)[0]).all())
        with jax.default_device(jax.local_devices()[0]):
            ref = jr.tbptt.init_state(params, tx, cell.initial_carry(B))
            one = jr.tbptt.make_step(loss_fn, tx)
            ref_losses = []
            for _ in range(3):
                ref, m = one(ref, *next(full))
                ref_losses.append(float(m["loss"]))
        ref = parallel.gather(ref)
        out["params"] = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree_util.tree_leaves(result.params),
                                                                       jax.tree_util.tree_leaves(ref.params)))
        out["carry"] = float(np.max(np.abs(result.carry - ref.carry)))
        out["losses"] = max(abs(a - b) for a, b in zip(losses, ref_losses))
        np.save(os.path.join(outdir, "carry.npy"), result.carry)
    print(json.dumps(out))
    """
)


def _env(devices: int) -> dict:
    env = dict(os.environ)
    env.update(
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""),
    )
    env.pop("JAX_ENABLE_X64", None)
    return env


def _json(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, f"subprocess failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _run(script: str, devices: int, *args: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", script, *args], env=_env(devices), capture_output=True, text=True,
                          timeout=600)
    return _json(proc)


@pytest.fixture(scope="module")
def eight(tmp_path_factory):
    pytest.importorskip("tqdm")
    pytest.importorskip("matplotlib")
    d = tmp_path_factory.mktemp("eight")
    return str(d), _run(EIGHT, 8, str(d))


def test_sharded_tbptt_step_equals_single_device(eight):
    _, out = eight
    assert out["device_count"] == 8
    t = out["tbptt"]
    assert t["params"] < TOL and t["opt_state"] < TOL and t["carry"] < TOL and t["metrics"] < TOL
    assert t["step"] == 3
    # one trace per step kind: the new state keeps the shardings it came in with
    assert t["traces"] == [1, 1]
    assert t["carry_spec"] == [["batch"], 8]
    assert t["param_spec"] == [[], 8] and t["loss_spec"] == [[], 8]
    # host state and batch given to the sharded step are placed by it
    assert t["auto_placed"] == [[["batch"], 8], [[], 8]]


def test_sharded_epoch_k1k2_and_bptt_equal_single_device(eight):
    _, out = eight
    e, k, b = out["epoch"], out["k1k2"], out["bptt"]
    assert e["params"] < TOL and e["carry"] < TOL and e["loss"] < TOL
    assert e["carry_spec"] == [["batch"], 8]
    assert k["params"] < TOL and k["carry"] < TOL and k["history"] == 0.0
    assert k["history_spec"] == [["batch"], 8]
    assert b["params"] < TOL and b["loss"] < TOL and b["traces"] == 1
    assert b["carry_spec"] == [["batch"], 4] and b["param_spec"] == [[], 4]


def test_batch_not_divisible_by_devices_is_a_clear_error(eight):
    _, out = eight
    err = out["errors"]
    assert err["step"].startswith("x has batch size 12") and "not divisible by the 8 devices" in err["step"]
    assert err["epoch"].startswith("xs has batch size 6 (axis 1 of shape (3, 6, 5, 3))") and "8 devices" in err["epoch"]
    assert err["shard_batch"].startswith("tokens has batch size 6") and "8 devices" in err["shard_batch"]
    assert "state.carry has batch size 4" in err["shard_state"] and "8 devices" in err["shard_state"]
    assert "between 1 and the 8 available" in err["data_mesh"] and "got 9" in err["data_mesh"]


def test_cli_devices_equals_one_device(eight):
    _, out = eight
    c = out["cli"]
    assert c["devices"] == 4 and c["steps"] == 3
    assert c["state"] < TOL and c["train_loss"] < TOL
    code, msg = c["bad_batch"]
    assert code == 2 and "--batch-size 6 must be a multiple of --devices 4" in msg


def test_checkpoint_from_8_devices_resumes_on_1_and_2(eight):
    d, _ = eight
    out = _run(RESUME, 2, d)
    assert out["device_count"] == 2
    for name, n in (("one", 1), ("two", 2)):
        r = out[name]
        # two more segments from the restored state give the 8-device run's state
        assert r["diff"] < TOL, (name, r)
        assert r["step"] == 5 and r["position"] == 15 and r["traces"] == 1
    assert out["one"]["restored_spec"][1] == 1
    assert out["two"]["restored_spec"] == [["batch"], 2]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_read_their_own_streams(tmp_path):
    """jax.distributed.initialize on 127.0.0.1: 2 processes x 2 CPU devices."""
    port = str(_free_port())
    procs = [
        subprocess.Popen([sys.executable, "-c", PROCESS, str(p), port, str(tmp_path)], env=_env(2),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for p in range(2)
    ]
    outs = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=300)
            outs.append(_json(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr)))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, out in enumerate(outs):
        assert out["index"] == p and out["count"] == 2 and out["devices"] == 4 and out["local_devices"] == 2
        assert out["local_rows"] == 4 and out["rows"] == [4 * p, 4 * p + 4] and out["traces"] == 1
        assert out["carry_spec"] == ["batch"] and out["addressable"] is False
    first = outs[0]
    assert first["global_batch"]  # the union of the processes' rows is the single-process batch
    assert first["params"] < TOL and first["carry"] < TOL and first["losses"] < TOL
    # process 0 wrote the gathered global state
    arrays, meta = jr.checkpoint.load(tmp_path / "multi.safetensors")
    np.testing.assert_array_equal(arrays[".carry"], np.load(tmp_path / "carry.npy"))
    assert arrays[".carry"].shape == (8, 8) and meta["position"]["position"] == 15 and meta["step"] == 3


def test_process_rows_and_batches_split_the_offset_batch():
    tokens = np.arange(240)
    full = jr.data.offset_batches(tokens, 6, 4)
    parts = [jr.parallel.process_batches(tokens, 6, 4, process_index=p, process_count=3) for p in range(3)]
    assert [jr.parallel.process_rows(6, p, 3) for p in range(3)] == [slice(0, 2), slice(2, 4), slice(4, 6)]
    for _ in range(2):
        x, y = next(full)
        got = [next(p) for p in parts]
        np.testing.assert_array_equal(np.concatenate([g[0] for g in got]), x)
        np.testing.assert_array_equal(np.concatenate([g[1] for g in got]), y)
    xs, _ = full.take(2)
    np.testing.assert_array_equal(np.concatenate([p.take(2)[0] for p in parts], axis=1), xs)
    assert parts[1].state_dict() == full.state_dict()
    with pytest.raises(ValueError, match="batch_size 6 must be divisible by the 4 processes"):
        jr.parallel.process_rows(6, 0, 4)
    with pytest.raises(ValueError, match=r"process_index must be an int in \[0, 3\)"):
        jr.parallel.process_rows(6, 3, 3)


# --------------------------------------------------------------------------- in this process (any device count)


def test_state_shardings_split_the_carry_and_replicate_the_rest():
    import jax
    import jax.numpy as jnp
    import optax

    n = jax.device_count()
    mesh = jr.parallel.data_mesh(n)
    B = 4 * n
    carry = ((jnp.zeros((B, 3), jnp.float32), jnp.zeros((B, 3), jnp.float32)), jnp.zeros((2,), jnp.uint32))
    state = jr.tbptt.init_state({"w": jnp.ones((B, 3), jnp.float32)}, optax.adam(0.1), carry)
    sh = jr.parallel.state_shardings(state, mesh)
    split, rep = jr.parallel.batch_sharding(mesh), jr.parallel.replicated(mesh)
    # the rows of the recurrent state are split; a dropout key beside it and the
    # parameters (even one whose leading size happens to be B) are replicated
    assert sh.carry[0][0] == split and sh.carry[0][1] == split and sh.carry[1] == rep
    assert sh.params["w"] == rep and sh.step == rep
    assert all(s == rep for s in jax.tree_util.tree_leaves(sh.opt_state))
    placed = jr.parallel.shard_state(state, mesh)
    assert placed.carry[0][0].sharding == split and placed.params["w"].sharding == rep
    assert jr.parallel.shard_state(placed, mesh).carry[0][0] is placed.carry[0][0]  # already placed: kept
    host = jr.parallel.gather(placed)
    assert isinstance(host.params["w"], np.ndarray)
    np.testing.assert_array_equal(host.params["w"], np.ones((B, 3)))
    x = jr.parallel.shard_batch({"a": np.arange(B * 2).reshape(B, 2)}, mesh)
    assert x["a"].sharding == split
    np.testing.assert_array_equal(np.asarray(x["a"]), np.arange(B * 2).reshape(B, 2))
    r = jr.parallel.replicate(np.ones(3), mesh)
    assert r.sharding == rep
    with pytest.raises(ValueError, match="x must have a batch axis 1, got shape"):
        jr.parallel.shard_batch(np.ones(B), mesh, batch_axis=1, name="x")


def test_bad_mesh_and_devices_arguments():
    import jax
    import optax

    with pytest.raises(TypeError, match="mesh must be a jax.sharding.Mesh"):
        jr.tbptt.make_step(lambda p, c, x, y: (0.0, c), optax.sgd(0.1), mesh="batch")
    with pytest.raises(TypeError, match="devices must be None, a positive int"):
        jr.parallel.data_mesh("all")
    with pytest.raises(ValueError, match=f"devices must be between 1 and the {jax.device_count()} available"):
        jr.parallel.data_mesh(0)
    with pytest.raises(ValueError, match="coordinator_address must be a 'host:port' string"):
        jr.parallel.initialize("localhost", 2, 0)
    with pytest.raises(ValueError, match="process_id must be < num_processes=2"):
        jr.parallel.initialize("127.0.0.1:1234", 2, 2)


def test_cli_devices_errors(tmp_path, capsys):
    pytest.importorskip("tqdm")
    pytest.importorskip("matplotlib")
    import jax

    from jaxrnn import cli

    n = jax.device_count() + 1
    assert cli.main(["train", "--batch-size", str(4 * n), "--devices", str(n), "--out", str(tmp_path / "a")]) == 2
    assert f"devices must be between 1 and the {n - 1} available" in capsys.readouterr().err
    assert cli.main(["train", "--batch-size", "6", "--devices", "4", "--out", str(tmp_path / "b")]) == 2
    assert "--batch-size 6 must be a multiple of --devices 4" in capsys.readouterr().err
    assert cli.main(["train", "--devices", "0", "--out", str(tmp_path / "c")]) == 2
    assert "--devices must be a positive int, got 0" in capsys.readouterr().err

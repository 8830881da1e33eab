"""Tests of jaxrnn.lm: the language model, its loss, metrics, evaluation and generation."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxrnn as jr
from jaxrnn import lm

F32 = jnp.float32


@functools.lru_cache(maxsize=None)
def _model(cell, layers, tie, dropout, vocab, hidden, embed):
    # one model object per configuration: the jitted functions of lm (keyed by the model) compile once
    return lm.language_model(vocab, cell=cell, hidden=hidden, embed=embed, layers=layers, dropout=dropout, tie=tie)


def _model_and_params(cell="lstm", layers=1, tie=False, dropout=0.0, vocab=7, hidden=6, embed=5, seed=0):
    model = _model(cell, layers, tie, dropout, vocab, hidden, embed)
    return model, model.init(jax.random.key(seed), F32)


def _tokens(shape, vocab, seed=0):
    return jnp.asarray(np.random.RandomState(seed).randint(0, vocab, shape), jnp.int32)


# --------------------------------------------------------------------------- the model


@pytest.mark.parametrize("cell,layers", [("lstm", 2), ("gru", 1), ("rnn", 2)])
def test_apply_matches_pytorch(cell, layers):
    torch = pytest.importorskip("torch")
    vocab, hidden, embed = 7, 6, 5
    model, params = _model_and_params(cell, layers, vocab=vocab, hidden=hidden, embed=embed)
    tokens = _tokens((3, 9), vocab)
    carry, logits = model.apply(params, model.initial_carry(3, F32), tokens)

    rnn_cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell]
    g = {"lstm": 4, "gru": 3, "rnn": 1}[cell]
    t_rnn = rnn_cls(embed, hidden, num_layers=layers, batch_first=True)
    with torch.no_grad():
        for i, p in enumerate(params["rnn"]):
            getattr(t_rnn, f"weight_ih_l{i}").copy_(torch.tensor(np.asarray(p["w_x"]).T))
            getattr(t_rnn, f"weight_hh_l{i}").copy_(torch.tensor(np.asarray(p["w_h"]).T))
            b_hh = np.zeros(g * hidden, np.float32)
            if cell == "gru":
                b_hh[2 * hidden:] = np.asarray(p["b_hn"])
            getattr(t_rnn, f"bias_ih_l{i}").copy_(torch.tensor(np.asarray(p["b"])))
            getattr(t_rnn, f"bias_hh_l{i}").copy_(torch.tensor(b_hh))
        e = torch.nn.functional.embedding(torch.tensor(np.asarray(tokens, np.int64)),
                                          torch.tensor(np.asarray(params["embed"]["table"])))
        ys, state = t_rnn(e)
        t_logits = ys @ torch.tensor(np.asarray(params["out"]["w"])) + torch.tensor(np.asarray(params["out"]["b"]))
    np.testing.assert_allclose(np.asarray(logits), t_logits.numpy(), rtol=1e-5, atol=1e-5)
    h_last = carry[-1][0] if cell == "lstm" else carry[-1]
    t_h = state[0] if cell == "lstm" else state
    np.testing.assert_allclose(np.asarray(h_last), t_h[-1].numpy(), rtol=1e-5, atol=1e-5)


def test_tied_output_uses_embedding_transpose():
    model, params = _model_and_params(tie=True, hidden=5, embed=5)
    assert set(params["out"]) == {"b"}
    params["out"]["b"] = jnp.arange(7, dtype=F32) / 10
    tokens = _tokens((2, 4), 7)
    logits = jax.jit(lambda p: model.apply(p, model.initial_carry(2, F32), tokens)[1])(params)
    # recompute with an untied model whose output weights are E^T
    untied = lm.language_model(7, hidden=5, embed=5)
    p2 = {"embed": params["embed"], "rnn": params["rnn"],
          "out": {"w": params["embed"]["table"].T, "b": params["out"]["b"]}}
    logits2 = jax.jit(lambda p: untied.apply(p, untied.initial_carry(2, F32), tokens)[1])(p2)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(logits2), rtol=1e-6)
    # gradients reach the table through both uses (rows of unseen tokens only through the output)
    f = lambda p: jnp.sum(model.apply(p, model.initial_carry(2, F32), tokens)[1] ** 2)
    g = jax.jit(jax.grad(f))(params)
    assert float(jnp.abs(g["embed"]["table"][np.setdiff1d(np.arange(7), np.asarray(tokens))]).sum()) > 0


def test_bad_configurations_and_inputs():
    with pytest.raises(ValueError, match="hidden must equal embed; got hidden=6, embed=5"):
        lm.language_model(7, hidden=6, embed=5, tie=True)
    with pytest.raises(ValueError, match="cell must be one of"):
        lm.language_model(7, cell="transformer")
    with pytest.raises(ValueError, match="dropout must be a float in"):
        lm.language_model(7, dropout=1.0)
    with pytest.raises(ValueError, match="layers must be a positive int"):
        lm.language_model(7, layers=0)
    model, params = _model_and_params()
    with pytest.raises(TypeError, match="tokens must have an integer dtype"):
        model.apply(params, model.initial_carry(2, F32), jnp.zeros((2, 3), F32))
    with pytest.raises(ValueError, match=r"tokens must have shape \(batch, time\)"):
        model.apply(params, model.initial_carry(2, F32), jnp.zeros((6,), jnp.int32))
    tied, tparams = _model_and_params(tie=True, hidden=5, embed=5)
    with pytest.raises(TypeError, match=r"params\['out'\] must have keys \['b'\] for a model with tie=True"):
        tied.apply(params, tied.initial_carry(2, F32), jnp.zeros((2, 3), jnp.int32))


def test_config_round_trip():
    model = lm.language_model(9, cell="gru", hidden=4, embed=4, layers=3, dropout=0.25, tie=True)
    again = lm.language_model(**model.config())
    assert again.config() == model.config()
    p = model.init(jax.random.key(1))
    jax.tree_util.tree_map(np.testing.assert_array_equal, p, again.init(jax.random.key(1)))


def test_backend_auto_equals_xla_and_is_checked():
    """``backend="auto"`` runs the stack through ``jr.unroll(backend="auto")``: without a
    CUDA GPU that is the XLA path, so loss and gradients (dropout included, the same key)
    are those of the default exactly; it is in ``config()`` only when not "xla"; a bad
    name is refused naming ``backend``; ``"cudnn"`` without a GPU raises when run."""
    if jr.cudnn.available():
        pytest.skip("on a CUDA machine 'auto' takes cuDNN (tests/test_cudnn.py compares them)")
    x, y = _tokens((3, 7), 9, 1), _tokens((3, 7), 9, 2)
    grads = {}
    for backend in ("xla", "auto"):
        model = lm.language_model(9, hidden=6, embed=4, layers=2, dropout=0.3, backend=backend)
        params = model.init(jax.random.key(0))
        grads[backend] = jax.grad(lambda p: lm.loss(model, p, model.initial_carry(3, F32), x, y,
                                                    key=jax.random.key(5))[0])(params)
        assert ("backend" in model.config()) == (backend != "xla")
        assert lm.language_model(**model.config()).backend == backend
    jax.tree_util.tree_map(np.testing.assert_array_equal, grads["xla"], grads["auto"])
    with pytest.raises(ValueError, match=r"backend must be one of \['xla', 'cudnn', 'auto'\], got 'gpu'"):
        lm.language_model(9, backend="gpu")
    model = lm.language_model(9, hidden=6, embed=4, backend="cudnn")
    with pytest.raises(ValueError, match=r"backend='cudnn' needs a CUDA GPU"):
        lm.loss(model, model.init(jax.random.key(0)), model.initial_carry(3, F32), x, y)


# --------------------------------------------------------------------------- loss, dropout, metrics


def test_loss_is_mean_next_token_nll():
    model, params = _model_and_params()
    x, y = _tokens((3, 8), 7, 1), _tokens((3, 8), 7, 2)
    value, carry = lm.loss(model, params, model.initial_carry(3, F32), x, y)
    _, logits = model.apply(params, model.initial_carry(3, F32), x)
    lp = np.asarray(jax.nn.log_softmax(logits.astype(jnp.float64)))
    want = -np.mean(np.take_along_axis(lp, np.asarray(y)[..., None], -1))
    np.testing.assert_allclose(float(value), want, rtol=1e-6)


def test_perplexity_and_bits_per_char():
    assert float(lm.perplexity(math.log(5.0))) == pytest.approx(5.0)
    assert float(lm.bits_per_char(math.log(2.0))) == pytest.approx(1.0)
    # a uniform model over V tokens: perplexity V, log2 V bits
    v = 37
    assert float(lm.perplexity(math.log(v))) == pytest.approx(v)
    assert float(lm.bits_per_char(math.log(v))) == pytest.approx(math.log2(v))


def test_loss_fn_threads_the_dropout_key():
    model, params = _model_and_params(dropout=0.5)  # embedding and output dropout
    m0 = _model("lstm", 1, False, 0.0, 7, 6, 5)  # same shapes, no dropout
    f = jax.jit(lm.loss_fn(model))
    x, y = _tokens((4, 6), 7, 1), _tokens((4, 6), 7, 2)
    c0 = lm.train_carry(model, 4, key=3)
    l1, c1 = f(params, c0, x, y)
    assert c1[1].dtype == jnp.uint32 and not np.array_equal(c0[1], c1[1])
    assert float(f(params, c0, x, y)[0]) == float(l1)  # same key -> same masks
    assert float(f(params, (c0[0], c1[1]), x, y)[0]) != float(l1)  # carried key -> new masks
    sub = jax.random.split(jax.random.wrap_key_data(c0[1]))[1]

    @jax.jit
    def others(p, c, k):
        return (lm.loss(model, p, c, x, y, key=k)[0],                    # the masks of the split key
                lm.loss(model, p, c, x, y)[0],                           # no key: no dropout
                lm.loss(m0, p, c, x, y)[0],                              # a model without dropout
                lm.loss_fn(m0)(p, lm.train_carry(m0, 4, key=5), x, y)[0])  # ignores the carried key

    with_key, no_key, no_dropout, no_dropout_fn = others(params, c0[0], sub)
    assert float(with_key) == float(l1)
    np.testing.assert_allclose(float(no_key), float(no_dropout), rtol=1e-6)
    np.testing.assert_allclose(float(no_dropout_fn), float(no_dropout), rtol=1e-6)
    assert float(with_key) != float(no_key)


def test_training_learns_a_periodic_sequence():
    # 60 Adam steps on the sequence 0 1 2 3 4 0 1 2 ... drive the loss close to 0.
    model, params = _model_and_params(vocab=5, hidden=16, embed=8)
    seq = np.arange(61) % 5
    x, y = jnp.asarray(seq[None, :-1], jnp.int32), jnp.asarray(seq[None, 1:], jnp.int32)
    tx = optax.adam(3e-2)
    opt = tx.init(params)

    @jax.jit
    def step(p, o):
        val, g = jax.value_and_grad(lambda q: lm.loss(model, q, model.initial_carry(1, F32), x, y)[0])(p)
        u, o = tx.update(g, o, p)
        return optax.apply_updates(p, u), o, val

    first = None
    for _ in range(60):
        params, opt, val = step(params, opt)
        first = float(val) if first is None else first
    assert first > 1.2 and float(val) < 0.05
    assert lm.greedy(model, params, jnp.array([2, 3], jnp.int32), 7).tolist() == [4, 0, 1, 2, 3, 4, 0]


# --------------------------------------------------------------------------- evaluation


def _evaluate_by_hand(model, params, tokens, batch_size):
    n = len(tokens)
    length = (n - 1) // batch_size
    x = np.asarray(tokens[: batch_size * length]).reshape(batch_size, length)
    y = np.asarray(tokens[1: batch_size * length + 1]).reshape(batch_size, length)
    _, logits = model.apply(params, model.initial_carry(batch_size, F32), jnp.asarray(x, jnp.int32))
    lp = np.asarray(jax.nn.log_softmax(logits.astype(jnp.float64)))
    return -np.mean(np.take_along_axis(lp, y[..., None], -1))


@pytest.mark.parametrize("seq_len", [5, 21])  # 21 = the whole row in one segment
def test_evaluate_equals_one_long_unroll_for_any_segment_length(seq_len):
    model, params = _model_and_params(layers=2, dropout=0.3)
    tokens = np.random.RandomState(3).randint(0, 7, 87)
    got = lm.evaluate(model, params, tokens, batch_size=4, seq_len=seq_len)
    np.testing.assert_allclose(got, _evaluate_by_hand(model, params, tokens, 4), rtol=1e-5)


def test_evaluate_errors():
    model, params = _model_and_params()
    with pytest.raises(ValueError, match="at least batch_size \\+ 1 = 5 tokens, got 4"):
        lm.evaluate(model, params, np.arange(4), batch_size=4, seq_len=2)
    with pytest.raises(ValueError, match="1-D integer array"):
        lm.evaluate(model, params, np.zeros((3, 4), np.int32), batch_size=1, seq_len=2)


# --------------------------------------------------------------------------- generation


@pytest.mark.parametrize("cell,layers", [("lstm", 2), ("gru", 1)])
def test_greedy_is_the_argmax_of_a_full_unroll_over_its_own_output(cell, layers):
    # Greedy decoding steps the cells one token at a time (model.step); re-reading
    # prompt + output in one unroll (model.apply) must give each output token as the argmax.
    model, params = _model_and_params(cell, layers, seed=4)
    params["out"]["w"] = params["out"]["w"] * 4.0  # sharper distributions: no near-ties
    prompt = [1, 5, 2]
    got = lm.greedy(model, params, jnp.asarray(prompt, jnp.int32), 12)
    seq = jnp.asarray([prompt + got.tolist()], jnp.int32)
    _, logits = model.apply(params, model.initial_carry(1, F32), seq)
    assert jnp.argmax(logits[0, 2:-1], axis=-1).tolist() == got.tolist()
    batch = lm.greedy(model, params, jnp.asarray([prompt, [0, 0, 3]], jnp.int32), 12)
    assert batch.shape == (2, 12) and batch[0].tolist() == got.tolist()


def test_sample_top1_and_cold_temperature_are_greedy():
    model, params = _model_and_params(seed=5)
    prompt = jnp.asarray([3, 1], jnp.int32)
    want = lm.greedy(model, params, prompt, 12).tolist()
    assert lm.sample(model, params, jax.random.key(0), prompt, 12, top_k=1).tolist() == want
    assert lm.sample(model, params, 7, prompt, 12, temperature=1e-4).tolist() == want


def test_sample_first_token_follows_softmax_and_top_k():
    model, params = _model_and_params(seed=6)
    prompt = jnp.asarray([2, 4], jnp.int32)
    _, logits = model.apply(params, model.initial_carry(1, F32), prompt[None])
    n = 4000
    for temperature, top_k in ((1.0, None), (0.5, 3)):
        lg = np.asarray(logits[0, -1], np.float64) / temperature
        if top_k is not None:
            lg[np.argsort(lg)[:-top_k]] = -np.inf
        p = np.exp(lg - lg.max())
        p /= p.sum()
        draws = lm.sample(model, params, jax.random.key(11), jnp.tile(prompt, (n, 1)), 1,
                          temperature=temperature, top_k=top_k)[:, 0]
        freq = np.bincount(np.asarray(draws), minlength=7) / n
        assert np.all(np.abs(freq - p) < 4 * np.sqrt(p * (1 - p) / n) + 1e-9), (freq, p)
        if top_k is not None:
            assert set(np.unique(np.asarray(draws))) <= set(np.argsort(lg)[-top_k:])


def test_sample_errors():
    model, params = _model_and_params()
    k = jax.random.key(0)
    with pytest.raises(ValueError, match="temperature must be a positive number"):
        lm.sample(model, params, k, jnp.array([1]), 3, temperature=0.0)
    with pytest.raises(ValueError, match=r"top_k must be None or an int in \[1, 7\]"):
        lm.sample(model, params, k, jnp.array([1]), 3, top_k=8)
    with pytest.raises(ValueError, match="P >= 1"):
        lm.sample(model, params, k, jnp.zeros((0,), jnp.int32), 3)
    with pytest.raises(ValueError, match=r"prompt_ids must lie in \[0, 7\)"):
        lm.greedy(model, params, jnp.array([7]), 3)
    with pytest.raises(ValueError, match="length must be a positive int"):
        lm.greedy(model, params, jnp.array([1]), 0)

r"""Gradient flow through time: state gradients, Jacobian products and their bounds.

Backpropagation through time sends the gradient of a loss ``L_s`` at step ``s`` back to
the state at an earlier step ``t <= s`` through a product of one-step Jacobians::

    dL_s/dh_t = (dh_s/dh_t)^T dL_s/dh_s,      dh_s/dh_t = J_s J_{s-1} ... J_{t+1},
    J_k = dh_k/dh_{k-1}.

For the Elman cell ``h_k = phi(z_k)``, ``z_k = x_k W_x + b + h_{k-1} W_h`` (row vectors,
as in :func:`jaxrnn.rnn`), ``J_k = diag(phi'(z_k)) W_h^T``, so with
``gamma_w = ||W_h||_2`` and ``gamma_h = sup |phi'|`` (1 for tanh and for ReLU)::

    ||dh_s/dh_t||_2 <= prod_{k=t+1}^{s} ||J_k||_2 <= (gamma_w gamma_h)^(s - t).

Below 1 the gradient vanishes geometrically with the distance ``s - t``; above 1 it can
explode. This module measures every term of that chain for a cell, its parameters and
an input sequence:

* :func:`state_gradients` / :func:`gradient_norms`: ``dL_s/dh_t`` for every ``t <= s``
  (one ``jax.jacrev`` over zero "probe" perturbations added to each state in the scan);
* :func:`jacobian_norms`: ``||dh_s/dh_t||`` for every ``t <= s``, the one-step norms
  ``||J_k||`` and their running products (a bound valid for every cell);
* :func:`spectral_norm`, :func:`recurrent_norms`, :func:`activation_bound`,
  :func:`elman_bound`: ``gamma_w``, ``gamma_h`` and ``(gamma_w gamma_h)^(s-t)``;
* :func:`by_distance`: reduce a ``(T, T)`` matrix over ``s`` at fixed ``s - t``.

**Indexing.** ``h_t`` is the state after reading ``xs[t]`` (so ``ys[t]`` is the ``h`` part
of ``h_t``), ``t = 0 .. T-1``; the initial carry is ``h_{-1}``. A ``(T, T)`` result ``m``
holds ``m[s, t]`` for ``t <= s`` and exact zeros above the diagonal (a state never
depends on a later one).

**The state** is the whole carry, whatever pytree it is: for the LSTM the pair
``(h, c)``, for a cell of your own (any object with ``init``, ``initial_carry``,
``apply`` and ``hidden_size``) its own carry. Jacobians are taken on the carry's leaves
flattened into one vector per row (``[h, c]``, size ``2H``, for the LSTM) and state
gradients are reported for every leaf (norms over all of them). Every function here
steps the cell with its ``apply``. The bound ``(gamma_w gamma_h)^(s-t)`` is a theorem for the
Elman cell only: for the LSTM and the GRU the identity paths (``f * c`` and ``z * h``)
and the gate derivatives break it, so :func:`elman_bound` refuses gated cells. The
running product of the measured one-step norms (``JacobianNorms.step_bound``) is a valid
bound for every cell (submultiplicativity of the operator norm).

Everything is a pure function of arrays and traces under ``jax.jit`` (pass the cell and
the loss function as static arguments or close over them)::

    >>> import jax, jax.numpy as jnp, jaxrnn as jr
    >>> cell = jr.rnn(8)
    >>> params = cell.init(jax.random.key(0), input_size=3)
    >>> xs = jax.random.normal(jax.random.key(1), (12, 3))
    >>> jn = jax.jit(jr.diagnostics.jacobian_norms, static_argnums=0)(cell, params, xs)
    >>> bound = jr.diagnostics.elman_bound(cell, params, 12)
    >>> bool((jn.products <= bound * (1 + 1e-5)).all())
    True
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxrnn._checks import check_floating, check_rank, shape_str
from jax.flatten_util import ravel_pytree

from jaxrnn.cells import ELMAN, GATE_NAMES, Cell, check_cell, check_params, is_builtin
from jaxrnn.unroll import checked_carry

Array = jax.Array

__all__ = [
    "JacobianNorms",
    "spectral_norm",
    "recurrent_norms",
    "activation_bound",
    "elman_bound",
    "step_jacobians",
    "jacobian_norms",
    "state_gradients",
    "gradient_norms",
    "by_distance",
]



class JacobianNorms(NamedTuple):
    """Norms of the recurrent Jacobians along one sequence (``T`` steps).

    Attributes:
      products: ``(..., T, T)``; ``products[s, t] = ||dh_s/dh_t||`` for ``t <= s`` (the
        diagonal is ``||I||``: 1 for the spectral norm), 0 for ``t > s``.
      steps: ``(..., T)``; ``steps[k] = ||J_k|| = ||dh_k/dh_{k-1}||``; ``steps[0]`` is
        the Jacobian with respect to the initial carry.
      step_bound: ``(..., T, T)``; ``prod_{k=t+1}^{s} steps[k]`` for ``t <= s`` (1 on the
        diagonal), 0 for ``t > s``. For ``ord=2`` it bounds ``products`` for every cell.
    """

    products: Array
    steps: Array
    step_bound: Array


# --------------------------------------------------------------------------- checks


def _check_cell(cell: Any):
    return check_cell(cell, "cell")


def _check_ord(ord: Any) -> None:
    if ord not in (2, "fro"):
        raise ValueError(f"ord must be 2 (spectral norm) or 'fro' (Frobenius), got {ord!r}")


def _prepare(cell, params, xs, carry):
    """Check arguments; return time-major xs, the carry and whether xs is batched."""
    _check_cell(cell)
    check_rank("xs", xs, (2, 3), "((time, features) or (batch, time, features))")
    check_floating("xs", xs)
    batched = xs.ndim == 3
    if xs.shape[-2] == 0:
        raise ValueError(f"xs must have at least one time step, got shape {shape_str(xs.shape)}")
    xs_tm = jnp.swapaxes(xs, 0, 1) if batched else xs
    carry = checked_carry(cell, params, xs_tm, carry)
    return xs_tm, carry, batched


def _apply_probed(cell, params, c, x_t, e_t):
    """One step with the probe ``e_t`` added to the new carry. When ``apply`` returns one of
    the carry's leaves as ``y_t`` (every built-in cell returns its ``h``), ``y_t`` is that
    leaf after the probe, so ``L_t`` sees ``h_t``."""
    c2, y = cell.apply(params, c, x_t)
    leaves = jax.tree_util.tree_leaves(c2)
    at = next((i for i, leaf in enumerate(leaves) if leaf is y), None)
    c2 = jax.tree_util.tree_map(jnp.add, c2, e_t)
    if at is not None:
        y = jax.tree_util.tree_leaves(c2)[at]
    return c2, y


def _lower_mask(n: int) -> Array:
    s, t = np.indices((n, n))
    return jnp.asarray(t <= s)


# --------------------------------------------------------------------------- weight norms


def spectral_norm(w: Array) -> Array:
    """The spectral norm ``||w||_2``, the largest singular value of a matrix.

    Exact (via the SVD), differentiable and jit-able. Leading dimensions are batch
    dimensions: ``w`` of shape ``(..., m, n)`` gives ``(...)``.

    Example::

      >>> import jax.numpy as jnp, jaxrnn as jr
      >>> float(jr.diagnostics.spectral_norm(jnp.diag(jnp.array([3.0, -4.0]))))
      4.0
    """
    check_floating("w", w)
    if w.ndim < 2:
        raise ValueError(f"w must be a matrix (rank >= 2), got shape {shape_str(w.shape)}")
    return jnp.linalg.norm(w, ord=2, axis=(-2, -1))


def _w_h(cell, params, fn: str) -> Array:
    """``params["w_h"]`` as a matrix, or a ``TypeError`` saying what ``fn`` needs."""
    if is_builtin(cell):
        check_params(params, cell.kind, cell.hidden_size)
        return params["w_h"]
    w_h = params.get("w_h") if isinstance(params, dict) else None
    if w_h is None or not hasattr(w_h, "ndim") or w_h.ndim != 2:
        got = f"keys {sorted(params)}" if isinstance(params, dict) else f"a {type(params).__name__}"
        raise TypeError(
            f"{fn} needs the recurrent weight matrix params['w_h'] (as the built-in cells have); "
            f"this cell's params have {got}"
        )
    return w_h


def recurrent_norms(cell: Cell, params) -> dict:
    """Spectral norms of the recurrent weights ``W_h``: the full matrix and each gate block.

    Args:
      cell: a built-in cell, or a cell of your own whose params are a dict with a 2-D
        ``"w_h"`` (else ``TypeError``).
      params: its parameters.

    Returns:
      ``{"w_h": ||W_h||_2}`` plus, for the built-in gated cells, one entry per ``H x H`` gate block of
      ``W_h`` in PyTorch order: LSTM ``"i", "f", "g", "o"``; GRU ``"r", "z", "n"``.
      ``gamma_w`` of the Elman bound is ``["w_h"]``.

    Example::

      >>> import jax, jaxrnn as jr
      >>> cell = jr.lstm(8)
      >>> norms = jr.diagnostics.recurrent_norms(cell, cell.init(jax.random.key(0), 2))
      >>> sorted(norms)
      ['f', 'g', 'i', 'o', 'w_h']
    """
    _check_cell(cell)
    w_h = _w_h(cell, params, "recurrent_norms")
    h = cell.hidden_size
    out = {"w_h": spectral_norm(w_h)}
    for i, name in enumerate(GATE_NAMES[cell.kind] if is_builtin(cell) else ()):
        out[name] = spectral_norm(w_h[:, i * h : (i + 1) * h])
    return out


def activation_bound(cell: Cell) -> float:
    """``gamma_h = sup |phi'|`` for an Elman cell: 1.0 for tanh and for ReLU.

    Raises ``TypeError`` for gated cells, whose one-step Jacobian is not of the form
    ``diag(phi'(z)) W_h^T`` (use :func:`jacobian_norms`' ``step_bound`` for them).
    """
    _check_cell(cell)
    if not (is_builtin(cell) and cell.kind in ELMAN):
        what = f"a cell of kind {cell.kind!r}" if is_builtin(cell) else f"a cell of your own ({type(cell).__name__})"
        raise TypeError(
            f"activation_bound and elman_bound apply to Elman cells only (jr.rnn, kind 'rnn' or 'rnn_relu'), "
            f"got {what}; for any other cell use jacobian_norms(...).step_bound"
        )
    return 1.0  # tanh' = 1 - tanh^2 <= 1;  relu' in {0, 1}


def elman_bound(cell: Cell, params, num_steps: int) -> Array:
    """The bound ``(gamma_w gamma_h)^(s - t)`` on ``||dh_s/dh_t||_2`` for an Elman cell.

    Args:
      cell: an Elman cell (``jr.rnn``, tanh or ReLU).
      params: its parameters; ``gamma_w = ||params["w_h"]||_2``.
      num_steps: ``T``.

    Returns:
      ``(T, T)`` array: ``(gamma_w gamma_h)^(s - t)`` for ``t <= s`` and 0 for ``t > s``,
      in the dtype of ``params["w_h"]``.

    Example::

      >>> import jax, jax.numpy as jnp, jaxrnn as jr
      >>> cell = jr.rnn(4)
      >>> params = cell.init(jax.random.key(0), 1)
      >>> params = dict(params, w_h=0.5 * jnp.eye(4))
      >>> jr.diagnostics.elman_bound(cell, params, 3)[2].tolist()
      [0.25, 0.5, 1.0]
    """
    gamma_h = activation_bound(cell)
    _w_h(cell, params, "elman_bound")
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")
    gamma = spectral_norm(params["w_h"]) * gamma_h
    s, t = np.indices((num_steps, num_steps))
    dist = jnp.asarray(np.maximum(s - t, 0), gamma.dtype)
    return jnp.where(_lower_mask(num_steps), gamma**dist, jnp.zeros((), gamma.dtype))


# --------------------------------------------------------------------------- Jacobians


def _states_tm(cell, params, xs_tm: Array, carry):
    def body(c, x_t):
        c2, _ = cell.apply(params, c, x_t)
        return c2, c2

    return jax.lax.scan(body, carry, xs_tm)[1]


def _step_jacobians_1(cell, params, xs: Array, carry) -> Array:
    """One unbatched sequence: ``(T, D, D)`` with ``J[k] = dh_k/dh_{k-1}``."""
    states = _states_tm(cell, params, xs, carry)
    prev = jax.tree_util.tree_map(lambda c0, s: jnp.concatenate([c0[None], s[:-1]], axis=0), carry, states)
    _, unflat = ravel_pytree(carry)
    prev_flat = jax.vmap(lambda c: ravel_pytree(c)[0])(prev)  # (T, D)

    def one(v, x_k):
        return ravel_pytree(cell.apply(params, unflat(v), x_k)[0])[0]

    return jax.vmap(jax.jacfwd(one))(prev_flat, xs)


def step_jacobians(cell: Cell, params, xs: Array, carry=None) -> Array:
    """The one-step Jacobians ``J_k = dh_k/dh_{k-1}`` along a sequence.

    Args:
      cell: a jaxrnn :class:`~jaxrnn.cells.Cell`.
      params: its parameters.
      xs: ``(T, F)`` or ``(B, T, F)`` inputs.
      carry: the initial carry (unbatched for ``(T, F)``); ``None`` means zeros.

    Returns:
      ``(T, D, D)`` (``(B, T, D, D)`` for batched ``xs``) with
      ``J[k][i, j] = d h_k[i] / d h_{k-1}[j]``; ``D`` is the size of one row's carry,
      its leaves flattened in tree order: ``H``, or ``2H`` for the LSTM state ``[h, c]``.
      ``J[0]`` is taken with respect to the initial carry. For the Elman cell
      ``J_k = diag(phi'(z_k)) W_h^T``.

    Example::

      >>> import jax, jax.numpy as jnp, jaxrnn as jr
      >>> cell = jr.lstm(4)
      >>> params = cell.init(jax.random.key(0), input_size=2)
      >>> jr.diagnostics.step_jacobians(cell, params, jnp.ones((5, 2))).shape
      (5, 8, 8)
    """
    xs_tm, carry, batched = _prepare(cell, params, xs, carry)
    if batched:
        return jax.vmap(lambda x, c: _step_jacobians_1(cell, params, x, c), in_axes=(1, 0))(xs_tm, carry)
    return _step_jacobians_1(cell, params, xs_tm, carry)


def _products_from_jacobians(jac: Array, ord) -> tuple[Array, Array, Array]:
    """``(T, D, D)`` one-step Jacobians -> (products, steps, step_bound)."""
    n, d = jac.shape[0], jac.shape[1]
    norm = lambda m: jnp.linalg.norm(m, ord=ord, axis=(-2, -1))  # noqa: E731
    eye = jnp.eye(d, dtype=jac.dtype)
    idx = jnp.arange(n)

    def body(q, inp):
        # q[t] = dh_{s-1}/dh_t for t < s; advance to dh_s/dh_t and put I at t = s.
        s, j_s = inp
        q = jnp.einsum("ij,tjk->tik", j_s, q)
        q = jnp.where((idx == s)[:, None, None], eye, q)
        q = jnp.where((idx <= s)[:, None, None], q, jnp.zeros_like(q))
        return q, norm(q)

    q0 = jnp.zeros((n, d, d), jac.dtype)
    _, products = jax.lax.scan(body, q0, (idx, jac))
    steps = norm(jac)
    # step_bound[s, t] = prod_{k=t+1}^{s} steps[k] via cumulative sums of logs would lose
    # exact zeros (ReLU), so build it as a masked cumulative product along s.
    lower = _lower_mask(n)
    strict = jnp.asarray(np.triu(np.ones((n, n), dtype=bool), k=1))  # strict[t, k] = k > t
    # factor[t, k] = steps[k] if k > t else 1; step_bound[s, t] = prod_{k<=s} factor[t, k]
    factor = jnp.where(strict, steps[None, :], jnp.ones((), steps.dtype))
    cum = jnp.cumprod(factor, axis=1)  # cum[t, s]
    step_bound = jnp.where(lower, cum.T, jnp.zeros((), steps.dtype))
    return products, steps, step_bound


def jacobian_norms(cell: Cell, params, xs: Array, carry=None, ord: Any = 2) -> JacobianNorms:
    """Norms of the Jacobian products ``dh_s/dh_t = J_s ... J_{t+1}`` for all ``t <= s``.

    Args:
      cell: a jaxrnn :class:`~jaxrnn.cells.Cell`.
      params: its parameters.
      xs: ``(T, F)`` or ``(B, T, F)`` inputs.
      carry: the initial carry; ``None`` means zeros.
      ord: ``2`` (spectral norm, the one the bounds are about) or ``"fro"`` (cheaper).

    Returns:
      A :class:`JacobianNorms` with ``products (..., T, T)``, ``steps (..., T)`` and
      ``step_bound (..., T, T)`` (a leading ``B`` for batched ``xs``). Cost: ``T^2``
      products and norms of ``D x D`` matrices, so keep ``T`` and ``H`` moderate.

    Example::

      >>> import jax, jax.numpy as jnp, jaxrnn as jr
      >>> cell = jr.gru(4)
      >>> params = cell.init(jax.random.key(0), input_size=2)
      >>> jn = jr.diagnostics.jacobian_norms(cell, params, jnp.ones((6, 2)))
      >>> jn.products.shape, bool((jn.products <= jn.step_bound * (1 + 1e-5)).all())
      ((6, 6), True)
    """
    _check_ord(ord)
    jac = step_jacobians(cell, params, xs, carry)
    if jac.ndim == 4:
        return JacobianNorms(*jax.vmap(lambda j: _products_from_jacobians(j, ord))(jac))
    return JacobianNorms(*_products_from_jacobians(jac, ord))


# --------------------------------------------------------------------------- gradients


def state_gradients(cell: Cell, params, xs: Array, loss_fn: Callable[[Array], Array], carry=None):
    """``dL_s/dh_t`` for every pair of steps: how far back each step's loss reaches.

    A zero probe ``eps_t`` is added to each state inside the scan,
    ``h_t = step(h_{t-1}, x_t) + eps_t``, and ``jax.jacrev`` of the per-step losses with
    respect to the stacked probes gives ``dL_s/d eps_t = dL_s/dh_t`` for all ``s, t`` at
    once (one vectorised backward pass per ``s``).

    Args:
      cell: a jaxrnn :class:`~jaxrnn.cells.Cell`.
      params: its parameters.
      xs: ``(T, F)`` or ``(B, T, F)`` inputs.
      loss_fn: ``loss_fn(ys) -> losses`` of shape ``(T,)``, where ``ys`` has the layout
        of :func:`jaxrnn.unroll`'s output (``(T, H)`` or ``(B, T, H)``) and
        ``losses[s] = L_s``. For the bounds to apply, ``L_s`` should read ``ys[..., s, :]``
        only (e.g. a head and a cross-entropy at step ``s``, averaged over the batch).
      carry: the initial carry; ``None`` means zeros.

    Returns:
      A pytree shaped like the carry (``h``, or ``(h, c)`` for the LSTM) whose leaves
      have shape ``(T, T) + state_shape``: ``leaf[s, t] = dL_s/dh_t`` (zero for
      ``t > s``). ``state_shape`` is the leaf's shape, e.g. ``(H,)`` or ``(B, H)``. The
      probe at step ``t`` is added to the carry after the step; when ``apply`` returns
      one of the carry's leaves as ``y_t`` (every built-in cell returns ``h``), ``y_t``
      includes it, so the diagonal ``dL_t/dh_t`` is the gradient through ``y_t``. A cell
      whose ``y_t`` is not a leaf of its carry has ``dL_t/dh_t = 0``.

    Example::

      >>> import jax, jax.numpy as jnp, jaxrnn as jr
      >>> cell = jr.rnn(4)
      >>> params = cell.init(jax.random.key(0), input_size=2)
      >>> g = jr.diagnostics.state_gradients(cell, params, jnp.ones((5, 2)),
      ...                                    lambda ys: jnp.sum(ys**2, axis=-1))
      >>> g.shape, float(jnp.abs(g[1, 3]).max())   # L_1 does not depend on h_3
      ((5, 5, 4), 0.0)
    """
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be a callable ys -> (T,) per-step losses, got {type(loss_fn).__name__}")
    xs_tm, carry, batched = _prepare(cell, params, xs, carry)
    n = xs_tm.shape[0]
    eps0 = jax.tree_util.tree_map(lambda c: jnp.zeros((n,) + c.shape, c.dtype), carry)

    def losses(eps):
        def body(c, inp):
            x_t, e_t = inp
            return _apply_probed(cell, params, c, x_t, e_t)

        _, ys = jax.lax.scan(body, carry, (xs_tm, eps))
        if batched:
            ys = jnp.swapaxes(ys, 0, 1)
        out = loss_fn(ys)
        if not hasattr(out, "shape") or tuple(out.shape) != (n,):
            got = shape_str(out.shape) if hasattr(out, "shape") else type(out).__name__
            raise ValueError(
                f"loss_fn must return the per-step losses, shape ({n},) for {n} time steps, got {got}"
            )
        return out

    return jax.jacrev(losses)(eps0)


def gradient_norms(
    cell: Cell, params, xs: Array, loss_fn: Callable[[Array], Array], carry=None, relative: bool = False
) -> Array:
    """``||dL_s/dh_t||_2`` for every ``t <= s`` (Euclidean norm over the whole state).

    Args:
      cell, params, xs, loss_fn, carry: as in :func:`state_gradients`.
      relative: divide row ``s`` by ``||dL_s/dh_s||`` (rows where that is 0 stay 0).
        Since ``dL_s/dh_t = (dh_s/dh_t)^T dL_s/dh_s`` when ``L_s`` reads step ``s`` only,
        the relative norms are bounded by ``jacobian_norms(...).products`` and, for the
        Elman cell, by :func:`elman_bound`.

    Returns:
      ``(T, T)``: ``[s, t]`` the norm for ``t <= s`` and 0 for ``t > s``. For the LSTM the
      norm is over ``[dL_s/dh_t, dL_s/dc_t]``; for batched ``xs`` it is over all rows.

    Example::

      >>> import jax, jax.numpy as jnp, jaxrnn as jr
      >>> cell = jr.rnn(4)
      >>> params = cell.init(jax.random.key(0), input_size=2)
      >>> g = jr.diagnostics.gradient_norms(cell, params, jnp.ones((5, 2)),
      ...                                   lambda ys: ys.sum(-1), relative=True)
      >>> [round(float(v), 6) for v in jnp.diagonal(g)]
      [1.0, 1.0, 1.0, 1.0, 1.0]
    """
    grads = state_gradients(cell, params, xs, loss_fn, carry)
    leaves = jax.tree_util.tree_leaves(grads)
    sq = sum(jnp.sum(g.reshape(g.shape[:2] + (-1,)) ** 2, axis=-1) for g in leaves)
    norms = jnp.sqrt(sq)
    if relative:
        diag = jnp.diagonal(norms)[:, None]
        norms = jnp.where(diag > 0, norms / jnp.where(diag > 0, diag, 1), jnp.zeros_like(norms))
    return norms


# --------------------------------------------------------------------------- reductions


def by_distance(m: Array, reduce: str = "mean") -> Array:
    """Reduce a ``(..., T, T)`` matrix over ``s`` at each distance ``d = s - t``.

    Args:
      m: e.g. :func:`gradient_norms` or ``JacobianNorms.products``; entries with
        ``t > s`` are ignored.
      reduce: ``"mean"``, ``"geomean"`` (``exp(mean(log m))``, the natural average on a
        log scale; 0 if any entry is 0), ``"median"``, ``"max"`` or ``"min"``.

    Returns:
      ``(..., T)``: entry ``d`` reduces the ``T - d`` values ``m[t + d, t]``.

    Example::

      >>> import jax.numpy as jnp, jaxrnn as jr
      >>> m = jnp.array([[1., 0.], [2., 3.]])
      >>> jr.diagnostics.by_distance(m).tolist()     # d=0: mean(1, 3); d=1: 2
      [2.0, 2.0]
    """
    reductions = ("mean", "geomean", "median", "max", "min")
    if reduce not in reductions:
        raise ValueError(f"reduce must be one of {sorted(reductions)}, got {reduce!r}")
    check_floating("m", m)
    if m.ndim < 2 or m.shape[-1] != m.shape[-2]:
        raise ValueError(f"m must have shape (..., T, T), got {shape_str(m.shape)}")
    n = m.shape[-1]
    # One gather: v[..., d, t] = m[..., t + d, t], valid where t + d < T.
    d_idx, t_idx = np.indices((n, n))
    valid = jnp.asarray(t_idx + d_idx < n)
    v = m[..., np.minimum(t_idx + d_idx, n - 1), t_idx]
    count = jnp.asarray((n - np.arange(n)).astype(np.float64), m.dtype)
    zero = jnp.zeros((), m.dtype)
    if reduce == "mean":
        return jnp.sum(jnp.where(valid, v, zero), axis=-1) / count
    if reduce == "geomean":
        logs = jnp.where(valid, jnp.log(jnp.where(valid, v, 1)), zero)
        return jnp.exp(jnp.sum(logs, axis=-1) / count)
    if reduce == "median":
        return jnp.nanmedian(jnp.where(valid, v, jnp.nan), axis=-1)
    if reduce == "max":
        return jnp.max(jnp.where(valid, v, -jnp.inf), axis=-1)
    return jnp.min(jnp.where(valid, v, jnp.inf), axis=-1)

"""The last layer as a convex problem on fixed similarity vectors.

With the backbone, add-on and prototypes frozen, each training image is a
fixed vector s_i of m similarities, and the last layer solves

    min_W  mean_i CE(W s_i, y_i)  +  l1 * sum_{k, j not of class k} |W_kj|
           + (l2 / 2) * ||W||_F^2

The l2 term (small by default) makes the problem strongly convex: without
it the own-class weights are unpenalised and, when the training set is
separable by them (common after push), the infimum is approached only as
those weights grow without bound. It is solved to optimality by FISTA
(accelerated proximal gradient) in float64 with adaptive restart; it stops
on the KKT residual, the largest violation of the optimality conditions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._maths import log_softmax

# Iterations between two evaluations of the KKT residual.
_CHECK_EVERY = 5


@dataclass
class LastLayerResult:
    weight: np.ndarray  # (K, m)
    kkt_residual: float
    objective: float
    iterations: int
    converged: bool


def _value(W, S, Y, l2, want_proba=False, w=None):
    """mean CE + (l2/2)|W|^2 at W, and the softmax probabilities if asked.

    With image weights ``w`` (n,), the CE term is ``mean_i w_i CE_i``.
    """
    log_p = log_softmax(S @ W.T, axis=1)
    ce_i = (log_p * Y).sum(axis=1)
    ce = -float((ce_i if w is None else w * ce_i).mean())
    value = ce + 0.5 * l2 * float((W * W).sum())
    return (value, np.exp(log_p)) if want_proba else (value, None)


def _smooth(W, S, Y, l2, w=None):
    """Value and gradient of mean CE + (l2/2)|W|^2 (image weights ``w``)."""
    value, P = _value(W, S, Y, l2, want_proba=True, w=w)
    R = P - Y if w is None else (P - Y) * w[:, None]
    return value, R.T @ S / S.shape[0] + l2 * W


def kkt_residual(W, grad, off, l1) -> float:
    """Largest entry of the minimum-norm subgradient of the objective.

    Zero exactly at the optimum: own-class entries need a zero gradient,
    nonzero off-class entries ``grad = -l1 * sign(W)``, zero off-class
    entries ``|grad| <= l1``.
    """
    r = grad.copy()
    nz = off & (W != 0)
    r[nz] += l1 * np.sign(W[nz])
    z = off & (W == 0)
    r[z] = np.sign(grad[z]) * np.maximum(np.abs(grad[z]) - l1, 0.0)
    return float(np.abs(r).max()) if r.size else 0.0


def _weights(sample_weight, n):
    if sample_weight is None:
        return None
    w = np.asarray(sample_weight, dtype=np.float64)
    if w.shape != (n,):
        raise ValueError(f"sample_weight has shape {w.shape}, expected ({n},)")
    return w


def objective(W, S, y, own, l1, l2, sample_weight=None) -> float:
    """The full objective, for reporting and for tests."""
    Y = np.eye(W.shape[0])[y]
    value, _ = _smooth(W, S, Y, l2, _weights(sample_weight, len(Y)))
    return value + l1 * float(np.abs(W[~own]).sum())


def kkt_residual_at(W, S, y, own, l1, l2, sample_weight=None) -> float:
    """:func:`kkt_residual` of the objective at ``W`` (any weights, e.g. the
    float32 ones a network holds), for similarities S and labels y."""
    W = np.asarray(W, dtype=np.float64)
    _, grad = _smooth(W, np.asarray(S, dtype=np.float64), np.eye(W.shape[0])[y], l2,
                      _weights(sample_weight, len(y)))
    return kkt_residual(W, grad, ~np.asarray(own, dtype=bool), l1)


#: Below this many multiply-adds per product (n x m x K), a solve runs with
#: one BLAS thread: a product of that size takes well under a millisecond,
#: less than waking more threads, and on a loaded machine (cross-validation
#: fits side by side) OpenBLAS threads that wait for busy cores made a
#: 1000 x 100 x 10 solve 11x slower (651 s against 57 s, same iterations
#: within 1%).
SINGLE_THREAD_BELOW = 50_000_000


def solve_last_layer(
    S: np.ndarray,
    y: np.ndarray,
    own: np.ndarray,
    l1: float,
    l2: float,
    W0: np.ndarray,
    tol: float = 1e-6,
    max_iter: int = 20000,
    sample_weight: np.ndarray | None = None,
) -> LastLayerResult:
    """Minimise the last-layer objective from ``W0``.

    Parameters
    ----------
    S : (n, m) similarities. y : (n,) class indices. own : (K, m) bool mask of
    each prototype's own class (unpenalised by l1). W0 : (K, m) start.
    sample_weight : (n,) or None; the CE term becomes ``mean_i w_i CE_i``.
    """
    args = (S, y, own, l1, l2, W0, tol, max_iter, sample_weight)
    if np.shape(S)[0] * np.shape(S)[1] * np.shape(own)[0] >= SINGLE_THREAD_BELOW:
        return _solve(*args)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):
        return _solve(*args)


def _solve(S, y, own, l1, l2, W0, tol, max_iter, sample_weight) -> LastLayerResult:
    S = np.asarray(S, dtype=np.float64)
    w = _weights(sample_weight, S.shape[0])
    K = own.shape[0]
    Y = np.eye(K)[np.asarray(y)]
    off = ~np.asarray(own, dtype=bool)
    n = S.shape[0]

    def prox(V, step):
        out = V.copy()
        out[off] = np.sign(V[off]) * np.maximum(np.abs(V[off]) - step * l1, 0.0)
        return out

    # The Hessian of softmax cross-entropy in the logits is bounded by I/2, so
    # L_max is a global Lipschitz constant of the gradient; the local one is
    # often far smaller (confident predictions have flat loss), so the step
    # is found by backtracking from a value that is allowed to shrink.
    S_w = S if w is None else S * np.sqrt(w)[:, None]
    l_max = 0.5 * np.linalg.norm(S_w, 2) ** 2 / n + l2
    lipschitz = l_max
    W = np.array(W0, dtype=np.float64)
    V, t = W.copy(), 1.0
    value, grad = _smooth(W, S, Y, l2, w)
    residual = kkt_residual(W, grad, off, l1)
    it = 0
    while residual > tol and it < max_iter:
        it += 1
        f_v, grad_v = _smooth(V, S, Y, l2, w)
        lipschitz = max(lipschitz * 0.7, 1e-12)
        while True:
            W_next = prox(V - grad_v / lipschitz, 1.0 / lipschitz)
            diff = W_next - V
            f_next, _ = _value(W_next, S, Y, l2, w=w)
            bound = f_v + np.sum(grad_v * diff) + 0.5 * lipschitz * np.sum(diff * diff)
            if f_next <= bound + 1e-12 * abs(f_v) or lipschitz >= l_max:
                break
            lipschitz = min(2.0 * lipschitz, l_max)
        # Adaptive restart (O'Donoghue and Candes, 2015): drop the momentum
        # when the objective goes up.
        F_next = f_next + l1 * float(np.abs(W_next[off]).sum())
        F_prev = value + l1 * float(np.abs(W[off]).sum())
        # From V = W a backtracked proximal step cannot go up but by rounding,
        # so it is taken: restarting again would repeat it forever.
        if F_next > F_prev and V is not W:
            t = 1.0
            V = W
            continue
        t_next = 0.5 * (1.0 + np.sqrt(1.0 + 4.0 * t * t))
        V = W_next + ((t - 1.0) / t_next) * (W_next - W)
        W, t, value = W_next, t_next, f_next
        # The optimality check needs the gradient at W: one more product
        # with S, so it is done every few iterations.
        if it % _CHECK_EVERY == 0 or it >= max_iter:
            _, grad = _smooth(W, S, Y, l2, w)
            residual = kkt_residual(W, grad, off, l1)
    value += l1 * float(np.abs(W[off]).sum())
    return LastLayerResult(W, residual, value, it, residual <= tol)


__all__ = ["LastLayerResult", "kkt_residual", "kkt_residual_at", "objective",
           "solve_last_layer"]

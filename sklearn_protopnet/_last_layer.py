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


def _value(W, S, Y, l2, want_proba=False):
    """mean CE + (l2/2)|W|^2 at W, and the softmax probabilities if asked."""
    log_p = log_softmax(S @ W.T, axis=1)
    ce = -float((log_p * Y).sum(axis=1).mean())
    value = ce + 0.5 * l2 * float((W * W).sum())
    return (value, np.exp(log_p)) if want_proba else (value, None)


def _smooth(W, S, Y, l2):
    """Value and gradient of mean CE + (l2/2)|W|^2."""
    value, P = _value(W, S, Y, l2, want_proba=True)
    return value, (P - Y).T @ S / S.shape[0] + l2 * W


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


def objective(W, S, y, own, l1, l2) -> float:
    """The full objective, for reporting and for tests."""
    Y = np.eye(W.shape[0])[y]
    value, _ = _smooth(W, S, Y, l2)
    return value + l1 * float(np.abs(W[~own]).sum())


def kkt_residual_at(W, S, y, own, l1, l2) -> float:
    """:func:`kkt_residual` of the objective at ``W`` (any weights, e.g. the
    float32 ones a network holds), for similarities S and labels y."""
    W = np.asarray(W, dtype=np.float64)
    _, grad = _smooth(W, np.asarray(S, dtype=np.float64), np.eye(W.shape[0])[y], l2)
    return kkt_residual(W, grad, ~np.asarray(own, dtype=bool), l1)


def solve_last_layer(
    S: np.ndarray,
    y: np.ndarray,
    own: np.ndarray,
    l1: float,
    l2: float,
    W0: np.ndarray,
    tol: float = 1e-6,
    max_iter: int = 20000,
) -> LastLayerResult:
    """Minimise the last-layer objective from ``W0``.

    Parameters
    ----------
    S : (n, m) similarities. y : (n,) class indices. own : (K, m) bool mask of
    each prototype's own class (unpenalised by l1). W0 : (K, m) start.
    """
    S = np.asarray(S, dtype=np.float64)
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
    l_max = 0.5 * np.linalg.norm(S, 2) ** 2 / n + l2
    lipschitz = l_max
    W = np.array(W0, dtype=np.float64)
    V, t = W.copy(), 1.0
    value, grad = _smooth(W, S, Y, l2)
    residual = kkt_residual(W, grad, off, l1)
    it = 0
    while residual > tol and it < max_iter:
        it += 1
        f_v, grad_v = _smooth(V, S, Y, l2)
        lipschitz = max(lipschitz * 0.7, 1e-12)
        while True:
            W_next = prox(V - grad_v / lipschitz, 1.0 / lipschitz)
            diff = W_next - V
            f_next, _ = _value(W_next, S, Y, l2)
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
            _, grad = _smooth(W, S, Y, l2)
            residual = kkt_residual(W, grad, off, l1)
    value += l1 * float(np.abs(W[off]).sum())
    return LastLayerResult(W, residual, value, it, residual <= tol)


__all__ = ["LastLayerResult", "kkt_residual", "kkt_residual_at", "objective",
           "solve_last_layer"]

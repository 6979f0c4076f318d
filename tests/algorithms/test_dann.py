"""DANN and CDANN: reversed discriminator gradient into the featurizer, alternating players, class conditioning."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from fishr_tune.algorithms.dann import CDANN, DANN, AbstractDANN, DomainDiscriminator, is_discriminator_step
from fishr_tune.hparams import SMALL_IMAGES, default_hparams, hparam_space

INPUT_SHAPE = (2, 14, 14)



def build(cls: type[AbstractDANN], num_domains: int = 2, **overrides: object) -> AbstractDANN:
    hparams = {**default_hparams(cls.name, "ColoredMNIST-IRM"), "hidden_dim": 16, "mlp_width": 32, **overrides}
    torch.manual_seed(0)
    return cls(INPUT_SHAPE, 2, num_domains, hparams)


def batches(num_domains: int = 2, n: int = 16, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [(torch.rand(n, *INPUT_SHAPE, generator=generator) + 0.3 * i, torch.randint(2, (n,), generator=generator))
            for i in range(num_domains)]


def param_snapshot(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def unchanged(module: torch.nn.Module, snapshot: list[torch.Tensor]) -> bool:
    return all(torch.equal(p, s) for p, s in zip(module.parameters(), snapshot))


@pytest.mark.parametrize("weight", [0.5, 2.0])
def test_reversal_flips_the_discriminators_gradient_into_the_featurizer(weight: float) -> None:
    algorithm = build(DANN, **{"lambda": weight}).double()  # float64: the comparison holds on any CPU
    data = [(x.double(), y) for x, y in batches()]
    reference = copy.deepcopy(algorithm)
    x = torch.cat([x for x, _ in data])
    y = torch.cat([y for _, y in data])
    domains = torch.tensor([0] * 16 + [1] * 16)
    features = reference.featurizer(x)
    params = list(reference.featurizer.parameters())
    grad_nll = torch.autograd.grad(F.cross_entropy(reference.classifier(features), y), params, retain_graph=True)
    grad_disc = torch.autograd.grad(F.cross_entropy(reference.discriminator(features), domains), params)

    algorithm.update(data)  # update 1 is a generator step (d_steps_per_g_step = 1)
    for p, g_nll, g_disc in zip(algorithm.featurizer.parameters(), grad_nll, grad_disc):
        torch.testing.assert_close(p.grad, g_nll - weight * g_disc, rtol=1e-10, atol=1e-13)
    # the discriminator's own part of the featurizer's gradient points against its loss's gradient
    adversarial = torch.cat([(p.grad - g).flatten() for p, g in zip(algorithm.featurizer.parameters(), grad_nll)])
    assert torch.dot(adversarial, torch.cat([g.flatten() for g in grad_disc])) < 0


def test_players_alternate_and_each_step_moves_only_its_player() -> None:
    algorithm = build(DANN, d_steps_per_g_step=2)
    data = batches()
    kinds = []
    for _ in range(6):
        generator_params = param_snapshot(torch.nn.ModuleList([algorithm.featurizer, algorithm.classifier]))
        discriminator_params = param_snapshot(algorithm.discriminator)
        algorithm.update(data)
        generator_moved = not unchanged(torch.nn.ModuleList([algorithm.featurizer, algorithm.classifier]), generator_params)
        discriminator_moved = not unchanged(algorithm.discriminator, discriminator_params)
        assert generator_moved != discriminator_moved
        kinds.append("D" if discriminator_moved else "G")
    assert kinds == ["D", "G", "D", "D", "G", "D"]  # DomainBed numbers updates from 1: G where n % 3 == 2


@pytest.mark.parametrize("d_steps", [1, 2, 5])
def test_schedule_has_d_discriminator_steps_per_generator_step(d_steps: int) -> None:
    steps = [is_discriminator_step(n, d_steps) for n in range(1, 1 + 4 * (1 + d_steps))]
    assert steps.count(False) == 4
    assert steps.count(True) == 4 * d_steps


def test_discriminator_step_lowers_its_loss() -> None:
    algorithm = build(DANN, lr_d=1e-2)
    data = batches()
    losses = []
    for _ in range(40):
        results = algorithm.update(data)
        if algorithm.update_count % 2 == 0:
            losses.append(results["disc_loss"])
    assert losses[-1] < losses[0]


def test_cdann_discriminator_sees_class_embeddings_and_dann_does_not() -> None:
    data = batches()
    for cls, expect_moved in ((CDANN, True), (DANN, False)):
        algorithm = build(cls)
        embeddings = algorithm.class_embeddings.weight.detach().clone()
        algorithm.update(data)  # generator step
        algorithm.update(data)  # discriminator step: the embeddings belong to the discriminator's optimizer
        assert (not torch.equal(algorithm.class_embeddings.weight, embeddings)) == expect_moved


def test_cdann_discriminator_loss_is_class_balanced() -> None:
    algorithm = build(CDANN)
    algorithm.eval()
    x = torch.rand(8, *INPUT_SHAPE, generator=torch.Generator().manual_seed(5))
    y = torch.tensor([0, 0, 0, 1, 0, 0, 1, 1])  # 5 of class 0, 3 of class 1
    data = [(x[:4], y[:4]), (x[4:], y[4:])]
    with torch.no_grad():
        features = algorithm.featurizer(x)
        per_sample = F.cross_entropy(
            algorithm.discriminator(features + algorithm.class_embeddings(y)), torch.tensor([0] * 4 + [1] * 4), reduction="none"
        )
        weights = torch.where(y == 0, 1 / (5 * 2), 1 / (3 * 2))
        expected = (weights * per_sample).sum()
        got = algorithm.losses(data, features).disc_loss
    torch.testing.assert_close(got, expected)


def test_cdann_class_balance_divides_by_largest_label_plus_one_like_domainbed() -> None:
    """Labels {0, 2} of 3 classes: DomainBed's one_hot has 3 columns, so the divisor is 3, not the 2 classes present."""
    hparams = {**default_hparams("CDANN", "ColoredMNIST-IRM"), "hidden_dim": 16, "mlp_width": 32}
    torch.manual_seed(0)
    algorithm = CDANN(INPUT_SHAPE, 3, 2, hparams)
    algorithm.eval()
    x = torch.rand(6, *INPUT_SHAPE, generator=torch.Generator().manual_seed(7))
    y = torch.tensor([0, 2, 2, 0, 0, 0])  # 4 of class 0, none of class 1, 2 of class 2
    data = [(x[:3], y[:3]), (x[3:], y[3:])]
    with torch.no_grad():
        features = algorithm.featurizer(x)
        per_sample = F.cross_entropy(
            algorithm.discriminator(features + algorithm.class_embeddings(y)), torch.tensor([0] * 3 + [1] * 3), reduction="none"
        )
        weights = torch.tensor([1 / (4 * 3), 1 / (2 * 3), 1 / (2 * 3), 1 / (4 * 3), 1 / (4 * 3), 1 / (4 * 3)])
        expected = (weights * per_sample).sum()
        present_only = (torch.where(y == 0, 1 / (4 * 2), 1 / (2 * 2)) * per_sample).sum()
        got = algorithm.losses(data, features).disc_loss
    torch.testing.assert_close(got, expected)
    assert not torch.isclose(got, present_only)  # dividing by the classes present would be a different loss


def test_gradient_penalty_adds_the_squared_input_gradient() -> None:
    data = batches()
    plain = build(DANN)
    penalized = build(DANN, grad_penalty=0.5)
    penalized.load_state_dict(plain.state_dict())
    plain.eval()
    penalized.eval()
    x = torch.cat([x for x, _ in data])
    features = plain.featurizer(x).detach().requires_grad_()
    disc_out = plain.discriminator(features)
    domains = torch.tensor([0] * 16 + [1] * 16)
    input_grad = torch.autograd.grad(F.cross_entropy(disc_out, domains, reduction="sum"), features)[0]
    expected_penalty = input_grad.pow(2).sum(dim=1).mean()
    difference = penalized.losses(data, features).disc_loss - plain.losses(data, features).disc_loss
    torch.testing.assert_close(difference, 0.5 * expected_penalty)


def test_discriminator_mlp_has_domainbeds_shape() -> None:
    mlp = DomainDiscriminator(10, 3, width=7, depth=4, dropout=0.0)
    linears = [m for m in mlp.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(10, 7), (7, 7), (7, 7), (7, 3)]


def test_learning_rates_depend_on_the_dataset() -> None:
    for dataset in SMALL_IMAGES:
        space = hparam_space("DANN", dataset)
        assert space["lr_g"].default == space["lr_d"].default == 1e-3
        assert space["weight_decay_g"].dist.kind == "fixed"
    space = hparam_space("CDANN", "PACS")
    assert space["lr_g"].default == space["lr_d"].default == 5e-5
    assert space["lr_g"].dist.bounds == pytest.approx((1e-5, 10**-3.5))
    assert space["weight_decay_g"].dist.bounds == pytest.approx((1e-6, 1e-2))

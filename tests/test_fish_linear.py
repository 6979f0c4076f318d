"""The linear dataset of Shi et al. 2021 (Figure 2 / Table 1): its construction, the accuracies it implies, the
command's output and its errors."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from fishr_tune import fish_linear as fl
from fishr_tune.cli import main


def _invoke(*args: str):
    return CliRunner().invoke(main, ["reproduce", "fish-linear", *args], catch_exceptions=False)


@pytest.mark.parametrize("n", [100, 1000])
def test_construction_has_figure_2s_proportions(n: int) -> None:
    domains = fl.build_domains(n)
    assert [d.name for d in domains] == ["train 1", "train 2", "test"]
    x1, x3 = torch.zeros(4), torch.tensor([1.0, 0.0, 0.0, 0.0])
    for index, domain in enumerate(domains):
        assert domain.x.shape == (n, 4) and domain.y.shape == (n,)
        x2 = torch.tensor([1.0, 0.0, 0.0, 0.0])
        x2[1 + index] = 1.0
        is_x1 = (domain.x == x1).all(dim=1)
        is_x2 = (domain.x == x2).all(dim=1)
        is_x3 = (domain.x == x3).all(dim=1)
        assert bool((is_x1 | is_x2 | is_x3).all())  # nothing else
        assert int(is_x1.sum()) == n * 50 // 100 and not domain.y[is_x1].any()
        assert int(is_x2.sum()) == n * 40 // 100 and domain.y[is_x2].all()
        assert int(is_x3.sum()) == n * 10 // 100
        assert int(domain.y[is_x3].sum()) == n * 10 // 100 * 30 // 100  # 30% of x3 is label 1
    train = torch.cat([domains[i].x for i in fl.TRAIN_DOMAINS])
    assert not train[:, 3].any()  # the test domain's own coordinate never occurs in training
    assert not domains[0].x[:, 2].any() and not domains[1].x[:, 1].any()  # each training domain has its own


def test_construction_implies_table_1s_accuracies() -> None:
    """The first coordinate alone (the invariant rule) scores 93% everywhere; adding the domain-specific
    coordinates to tell x2 from x3 scores 97% on the training domains and 57% on the test domain."""
    domains = fl.build_domains(1000)

    def acc(rule, ds):
        return sum(int((rule(d.x) == d.y).sum()) for d in ds) / sum(len(d.y) for d in ds)

    train, test = [domains[i] for i in fl.TRAIN_DOMAINS], [domains[fl.TEST_DOMAIN]]
    invariant = lambda x: (x[:, 0] > 0).long()  # noqa: E731
    spurious = lambda x: ((x[:, 0] > 0) & ((x[:, 1] > 0) | (x[:, 2] > 0))).long()  # noqa: E731
    assert (acc(invariant, train), acc(invariant, test)) == (0.93, 0.93)
    assert (acc(spurious, train), acc(spurious, test)) == (0.97, 0.57)


def test_logit_difference_of_a_two_class_head() -> None:
    head = nn.Linear(4, 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.5, 2.5, 0.0, 4.0]]))
        head.bias.copy_(torch.tensor([0.25, -1.0]))
    w, b = fl.logit_difference(head)
    assert w == [-0.5, 0.5, -3.0, 0.0] and b == -1.25


def test_erm_through_the_command_learns_the_spurious_rule(tmp_path) -> None:
    result = _invoke("--methods", "erm", "--steps", "40", "--n-per-domain", "100", "--format", "json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert list(out) == ["ERM"] and set(out["ERM"]) == {"train_acc", "test_acc", "W", "b"}
    erm = out["ERM"]
    assert (erm["train_acc"], erm["test_acc"]) == pytest.approx((97.0, 57.0))
    w = erm["W"]
    assert w[3] == 0.0  # never seen in training, started at zero
    assert w[1] == pytest.approx(w[2], rel=1e-6) and w[1] > w[0] > 0  # the mirror-image domains, symmetric weights
    assert erm["b"] < -w[0]  # x3 = [1, 0, 0, 0] (and so the test domain's x2) classified 0


def test_table_shows_the_papers_row_and_na_for_methods_it_lacks() -> None:
    result = _invoke("--methods", "ERM,Fishr", "--steps", "3", "--n-per-domain", "100")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    erm = next(line for line in lines if line.startswith("ERM "))
    fishr = next(line for line in lines if line.startswith("Fishr "))
    assert "97%" in erm and "57%" in erm and "[2.8, 3.3, 3.3, 0.0]" in erm and "-2.7" in erm
    assert fishr.count("n/a") == 4


@pytest.mark.parametrize(
    "args, message",
    [
        (["--methods", "ERM,Foo"], "unknown method 'Foo'; valid methods: ERM, Fish, Fishr, IDGM"),
        (["--n-per-domain", "150"], "--n-per-domain: expected a positive multiple of 100"),
        (["--steps", "0"], "--steps"),
        (["--lr", "0"], "--lr"),
    ],
)
def test_bad_input_exits_2_with_one_line(args: list[str], message: str) -> None:
    result = _invoke(*args)
    assert result.exit_code == 2
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1

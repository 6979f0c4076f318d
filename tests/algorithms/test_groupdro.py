"""GroupDRO: the domain weights are an exponentiated ascent on the domain losses, kept in the checkpoint."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F

from fishr_tune.algorithms.groupdro import GroupDRO
from fishr_tune.hparams import default_hparams

INPUT_SHAPE = (2, 14, 14)



def build(eta: float = 1e-2, num_domains: int = 3, seed: int = 0) -> GroupDRO:
    hparams = {**default_hparams("GroupDRO", "ColoredMNIST-IRM"), "hidden_dim": 16, "groupdro_eta": eta}
    torch.manual_seed(seed)
    return GroupDRO(INPUT_SHAPE, 2, num_domains, hparams)


def easy_and_hard_domains(algorithm: GroupDRO) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Domains 0 and 1 are labelled as the model predicts (low loss), domain 2 against it (high loss)."""
    x = torch.rand(32, *INPUT_SHAPE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        predicted = algorithm.predict(x).argmax(dim=1)
    return [(x, predicted), (x, predicted), (x, 1 - predicted)]


def test_first_update_weights_are_the_softmax_of_eta_times_losses() -> None:
    algorithm = build(eta=0.7)
    data = easy_and_hard_domains(algorithm)
    with torch.no_grad():
        losses = torch.stack([F.cross_entropy(algorithm.predict(x), y) for x, y in data])
    results = algorithm.update(data)
    torch.testing.assert_close(algorithm.q, torch.softmax(0.7 * losses, dim=0))
    assert results["loss"] == pytest.approx(torch.dot(algorithm.q, losses).item(), rel=1e-5)
    assert results["nll"] == pytest.approx(losses.mean().item(), rel=1e-5)


def test_weights_move_toward_the_domain_with_the_highest_loss() -> None:
    algorithm = build(eta=0.5)
    data = easy_and_hard_domains(algorithm)
    history = [algorithm.q.clone()]
    for _ in range(5):
        algorithm.update(data)
        history.append(algorithm.q.clone())
    hard = [float(q[2]) for q in history]
    assert all(a < b for a, b in zip(hard, hard[1:]))
    assert history[-1].argmax().item() == 2
    assert history[-1].sum().item() == pytest.approx(1.0)


def test_weights_are_in_the_state_dict_and_restored() -> None:
    algorithm = build(eta=0.5)
    algorithm.update(easy_and_hard_domains(algorithm))
    state = algorithm.state_dict()
    assert "q" in state
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    restored = build(eta=0.5, seed=1)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(restored.q, algorithm.q)
    assert not torch.equal(restored.q, torch.full((3,), 1 / 3))


def test_wrong_number_of_domains_is_a_clear_error() -> None:
    algorithm = build(num_domains=3)
    with pytest.raises(ValueError, match="built for 3 domains, got 2"):
        algorithm.update(easy_and_hard_domains(algorithm)[:2])

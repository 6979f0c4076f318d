from __future__ import annotations

import pytest
import torch

from fishr_tune import networks
from fishr_tune.errors import ConfigError
from fishr_tune.networks import MLP, MNIST_CNN, Autocast, Classifier, Featurizer, ResNet


def test_mlp_is_the_irm_body() -> None:
    mlp = MLP(2 * 14 * 14, 390, 2)
    assert mlp.n_outputs == 390
    linears = [m for m in mlp.modules() if isinstance(m, torch.nn.Linear)]
    assert [tuple(m.weight.shape) for m in linears] == [(390, 392), (390, 390)]
    assert all(torch.count_nonzero(m.bias) == 0 for m in linears)
    assert mlp(torch.rand(5, 2, 14, 14)).shape == (5, 390)


def test_mnist_cnn_features() -> None:
    assert MNIST_CNN((2, 28, 28))(torch.rand(3, 2, 28, 28)).shape == (3, 128)


def test_featurizer_dispatch_and_heads() -> None:
    assert isinstance(Featurizer((2, 14, 14), {"featurizer": "mlp"}), MLP)
    linear = Classifier(128, 2)
    deep = Classifier(128, 2, is_nonlinear=True)
    assert isinstance(linear, torch.nn.Linear)
    assert deep(torch.rand(4, 128)).shape == (4, 2) and len(list(deep.parameters())) == 6


def test_resnet_without_cached_weights_warns_and_keeps_batchnorm_frozen(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.warns(UserWarning, match="no ImageNet weights for resnet18"):
        net = ResNet((3, 32, 32), "resnet18")
    net.train()
    assert all(not m.training for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 512)


def test_resnet_weights_from_a_file_none_and_a_wrong_file(tmp_path) -> None:
    import warnings

    import torchvision

    from fishr_tune.errors import ConfigError

    source = torchvision.models.resnet18(weights=None)
    torch.save(source.state_dict(), tmp_path / "r18.pth")
    loaded = ResNet((3, 32, 32), "resnet18", weights_file=str(tmp_path / "r18.pth"))
    assert torch.equal(loaded.network.conv1.weight, source.conv1.weight)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ResNet((3, 32, 32), "resnet18", weights_file="none")  # an explicit random init does not warn
    torch.save({"unrelated": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ConfigError, match=r"bad.pth does not hold torchvision resnet18 weights"):
        ResNet((3, 32, 32), "resnet18", weights_file=str(tmp_path / "bad.pth"))


@pytest.mark.parametrize("kind, shape", [("mlp", (2, 14, 14)), ("mnist_cnn", (2, 28, 28))])
def test_bf16_featurizer_computes_in_bfloat16_and_hands_float32_on(kind: str, shape: tuple[int, ...]) -> None:
    """Same weights, same input: the bf16 body's features are float32, close to fp32's within bfloat16's precision
    (8 bits of mantissa: ~0.4% per rounding, a few roundings deep), and not equal to them (so it did compute in bf16)."""
    torch.manual_seed(0)
    plain = Featurizer(shape, {"featurizer": kind})
    mixed = Featurizer(shape, {"featurizer": kind, "amp": "bf16"})
    assert isinstance(mixed, Autocast) and mixed.n_outputs == plain.n_outputs
    mixed.body.load_state_dict(plain.state_dict())
    x = torch.rand(8, *shape)
    want, got = plain(x).double(), mixed(x)
    assert got.dtype == torch.float32
    error = (got.double() - want).norm() / want.norm()
    assert 1e-4 < error < 3e-2


def test_amp_support_is_decided_per_device(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    assert networks.amp_unsupported_reason("off", cpu) is None
    monkeypatch.setattr(networks, "cpu_has_native_bf16", lambda: True)
    assert networks.amp_unsupported_reason("bf16", cpu) is None
    monkeypatch.setattr(networks, "cpu_has_native_bf16", lambda: False)
    assert "no native bfloat16 instructions" in networks.amp_unsupported_reason("bf16", cpu)
    assert "not supported on mps" in networks.amp_unsupported_reason("bf16", torch.device("mps"))
    with pytest.raises(ConfigError, match=r"hyperparameter amp: expected one of \['off', 'bf16'\], got 'fp16'"):
        Featurizer((2, 14, 14), {"featurizer": "mlp", "amp": "fp16"})

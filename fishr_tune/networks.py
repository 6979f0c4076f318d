"""Featurizers (MLP, DomainBed's MNIST_CNN, ResNets) and classifier heads."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fishr_tune.errors import ConfigError, quote


class MLP(nn.Module):
    """The IRM paper's MLP body: `hidden_layers` Linear+ReLU layers of `hidden_dim` units, Xavier init, zero bias."""

    def __init__(self, n_inputs: int, hidden_dim: int = 390, hidden_layers: int = 2):
        super().__init__()
        layers: list[nn.Module] = []
        width = n_inputs
        for _ in range(hidden_layers):
            linear = nn.Linear(width, hidden_dim)
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)
            layers += [linear, nn.ReLU()]
            width = hidden_dim
        self.layers = nn.Sequential(*layers)
        self.n_outputs = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x.flatten(1))


class MNIST_CNN(nn.Module):  # noqa: N801  (DomainBed's name, kept for users porting code)
    """DomainBed's small CNN for 28x28 inputs: four 3x3 convolutions with GroupNorm, 128 features."""

    n_outputs = 128

    def __init__(self, input_shape: tuple[int, ...]):
        super().__init__()
        self.conv1 = nn.Conv2d(input_shape[0], 64, 3, 1, padding=1)
        self.conv2 = nn.Conv2d(64, 128, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(128, 128, 3, 1, padding=1)
        self.conv4 = nn.Conv2d(128, 128, 3, 1, padding=1)
        self.bn0 = nn.GroupNorm(8, 64)
        self.bn1 = nn.GroupNorm(8, 128)
        self.bn2 = nn.GroupNorm(8, 128)
        self.bn3 = nn.GroupNorm(8, 128)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn0(F.relu(self.conv1(x)))
        x = self.bn1(F.relu(self.conv2(x)))
        x = self.bn2(F.relu(self.conv3(x)))
        x = self.bn3(F.relu(self.conv4(x)))
        return x.mean(dim=(2, 3))


def cached_weights_file(arch: str) -> Path | None:
    """The torchvision ImageNet checkpoint for `arch` in the local torch hub cache, if it is there."""
    import torchvision.models as models

    weights = {"resnet18": models.ResNet18_Weights.IMAGENET1K_V1, "resnet50": models.ResNet50_Weights.IMAGENET1K_V1}[arch]
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    return path if path.exists() else None


WEIGHTS_KEYWORDS = ("auto", "imagenet", "none")
AUTOCAST_DTYPES = {"off": None, "bf16": torch.bfloat16}


def resolve_resnet_weights(arch: str, weights: str | None) -> Path | None:
    """The checkpoint to load for `weights` (auto / imagenet / none / a file), or None for random initialisation.

    `auto` is the forgiving default (a warning when the cache lacks the file); `imagenet` and a path are explicit
    requests, so their absence is an error rather than a silently different experiment.
    """
    if weights in (None, "", "auto"):
        path = cached_weights_file(arch)
        if path is None:
            warnings.warn(
                f"no ImageNet weights for {arch} in {torch.hub.get_dir()}/checkpoints: the featurizer starts from "
                "random initialisation, which is not DomainBed's protocol (hyperparameter resnet_weights: "
                "'none' silences this, a file path or 'imagenet' makes it an error)",
                stacklevel=3,
            )
        return path
    if weights == "none":
        return None
    if weights == "imagenet":
        path = cached_weights_file(arch)
        if path is None:
            from torchvision import models

            url = {"resnet18": models.ResNet18_Weights, "resnet50": models.ResNet50_Weights}[arch].IMAGENET1K_V1.url
            raise ConfigError(
                f"hyperparameter resnet_weights: 'imagenet' asks for {arch}'s ImageNet weights, but "
                f"{torch.hub.get_dir()}/checkpoints/{Path(url).name} does not exist; download {url} there "
                "(or set $TORCH_HOME), or give the file's path as resnet_weights"
            )
        return path
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ConfigError(f"hyperparameter resnet_weights: ResNet weights file {weights} does not exist")
    return path


class ResNet(nn.Module):
    """A torchvision ResNet without its fc layer; BatchNorm stays frozen in train mode (as DomainBed and Fishr).

    With `amp` ("bf16") the body runs under CUDA autocast and hands float32 features on: the head, the losses and
    every penalty (Fishr's gradient variances included) stay in float32, where their small differences survive.
    """

    def __init__(
        self, input_shape: tuple[int, ...], arch: str, dropout: float = 0.0, weights_file: str | None = None, amp: str = "off"
    ):
        super().__init__()
        import torchvision.models as models

        if amp not in AUTOCAST_DTYPES:
            raise ConfigError(f"hyperparameter amp: expected one of {list(AUTOCAST_DTYPES)}, got {quote(amp)}")
        self.autocast_dtype = AUTOCAST_DTYPES[amp]
        network = getattr(models, arch)(weights=None)
        path = resolve_resnet_weights(arch, weights_file)
        if path is not None:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
                network.load_state_dict(state)
            except (RuntimeError, OSError, ValueError) as error:
                first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                raise ConfigError(f"ResNet weights file {path} does not hold torchvision {arch} weights ({first})") from None
        if input_shape[0] != 3:
            old = network.conv1.weight.data
            network.conv1 = nn.Conv2d(input_shape[0], 64, kernel_size=7, stride=2, padding=3, bias=False)
            for i in range(input_shape[0]):
                network.conv1.weight.data[:, i] = old[:, i % 3]
        self.n_outputs = network.fc.in_features
        network.fc = nn.Identity()
        self.network = network
        self.dropout = nn.Dropout(dropout)
        self.freeze_bn()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.autocast_dtype is not None and x.is_cuda:
            with torch.autocast(device_type="cuda", dtype=self.autocast_dtype):
                features = self.network(x)
            return self.dropout(features.float())
        return self.dropout(self.network(x))

    def train(self, mode: bool = True) -> "ResNet":
        super().train(mode)
        self.freeze_bn()
        return self

    def freeze_bn(self) -> None:
        for module in self.network.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eval()


def Featurizer(input_shape: tuple[int, ...], hparams: Mapping[str, Any]) -> nn.Module:  # noqa: N802
    """The featurizer that `hparams['featurizer']` names; it exposes `n_outputs`."""
    kind = hparams["featurizer"]
    if kind == "mlp":
        n_inputs = 1
        for dim in input_shape:
            n_inputs *= dim
        return MLP(n_inputs, hparams.get("hidden_dim", 390), hparams.get("hidden_layers", 2))
    if kind == "mnist_cnn":
        return MNIST_CNN(input_shape)
    if kind in ("resnet18", "resnet50"):
        return ResNet(
            input_shape, kind, hparams.get("resnet_dropout", 0.0), hparams.get("resnet_weights"), hparams.get("amp", "off")
        )
    raise ConfigError(f"unknown featurizer {quote(kind)}; valid: mlp, mnist_cnn, resnet18, resnet50")


def Classifier(in_features: int, out_features: int, is_nonlinear: bool = False) -> nn.Module:  # noqa: N802
    """A linear head, or DomainBed's 3-layer MLP head."""
    if is_nonlinear:
        return nn.Sequential(
            nn.Linear(in_features, in_features // 2),
            nn.ReLU(),
            nn.Linear(in_features // 2, in_features // 4),
            nn.ReLU(),
            nn.Linear(in_features // 4, out_features),
        )
    return nn.Linear(in_features, out_features)

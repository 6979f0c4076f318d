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


class FeatureExtractor(nn.Module):
    """A featurizer: what the algorithms build their heads on needs only its output width."""

    n_outputs: int


class MLP(FeatureExtractor):
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


class MNIST_CNN(FeatureExtractor):  # noqa: N801  (DomainBed's name, kept for users porting code)
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


def augmix_weights_file() -> Path | None:
    """timm's resnet50.ram_in1k (DomainBed's `resnet50_augmix`) in the local Hugging Face cache, if it is there.

    Its state_dict has torchvision's ResNet-50 names, so the ResNet below loads it as it is.
    """
    import os

    hub = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface"), "hub"
    )
    found = sorted((Path(hub) / "models--timm--resnet50.ram_in1k" / "snapshots").glob("*/pytorch_model.bin"))
    return found[-1] if found else None


WEIGHTS_KEYWORDS = ("auto", "imagenet", "none")
AUTOCAST_DTYPES = {"off": None, "bf16": torch.bfloat16}


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX), the case where CPU autocast pays off.

    oneDNN would also run bfloat16 on plain AVX-512 by converting, which is slower than float32, so that
    does not count.
    """
    if not torch.backends.mkldnn.is_available():
        return False
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check is not None and check() for check in checks)


def amp_unsupported_reason(amp: str, device: torch.device) -> str | None:
    """Why `amp` cannot run on `device` (None when it can): bf16 needs a CUDA GPU with bfloat16 or a CPU with it."""
    if amp == "off":
        return None
    if device.type == "cuda":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return None
        return "this CUDA device has no bfloat16 support"
    if device.type == "cpu":
        if cpu_has_native_bf16():
            return None
        capability = torch.backends.cpu.get_cpu_capability()
        return f"this CPU ({capability}) has no native bfloat16 instructions (avx512_bf16 or AMX)"
    return f"mixed precision is not supported on {device.type}"


class Autocast(FeatureExtractor):
    """Runs a featurizer under bfloat16 autocast on its input's device and hands float32 features on.

    The head, the losses and every penalty (Fishr's gradient variances included) stay in float32, where their
    small differences survive.
    """

    def __init__(self, body: FeatureExtractor, dtype: torch.dtype):
        super().__init__()
        self.body = body
        self.dtype = dtype
        self.n_outputs = body.n_outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, dtype=self.dtype):
            features = self.body(x)
        return features.float()


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


class ResNet(FeatureExtractor):
    """A torchvision ResNet without its fc layer. With `freeze_bn` (the default) BatchNorm stays in eval mode while
    training, as in the DomainBed version that the Fishr paper ran; DomainBed's current default is `freeze_bn: false`.

    With `amp` ("bf16") the body runs under autocast (CUDA, or a CPU with bfloat16) and hands float32 features on:
    the head, the losses and every penalty (Fishr's gradient variances included) stay in float32.
    """

    def __init__(
        self, input_shape: tuple[int, ...], arch: str, dropout: float = 0.0, weights_file: str | None = None, amp: str = "off",
        freeze_bn: bool = True,
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
        self.frozen_bn = freeze_bn
        self.train()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.autocast_dtype is not None:
            with torch.autocast(device_type=x.device.type, dtype=self.autocast_dtype):
                features = self.network(x)
            return self.dropout(features.float())
        return self.dropout(self.network(x))

    def train(self, mode: bool = True) -> ResNet:
        super().train(mode)
        if self.frozen_bn:
            self.freeze_bn()
        return self

    def freeze_bn(self) -> None:
        for module in self.network.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eval()


def Featurizer(input_shape: tuple[int, ...], hparams: Mapping[str, Any]) -> FeatureExtractor:  # noqa: N802
    """The featurizer that `hparams['featurizer']` names; it exposes `n_outputs`."""
    kind = hparams["featurizer"]
    amp = hparams.get("amp", "off")
    if amp not in AUTOCAST_DTYPES:
        raise ConfigError(f"hyperparameter amp: expected one of {list(AUTOCAST_DTYPES)}, got {amp!r}")
    if kind in ("mlp", "mnist_cnn"):
        body: nn.Module
        if kind == "mlp":
            n_inputs = 1
            for dim in input_shape:
                n_inputs *= dim
            body = MLP(n_inputs, hparams.get("hidden_dim", 390), hparams.get("hidden_layers", 2))
        else:
            body = MNIST_CNN(input_shape)
        dtype = AUTOCAST_DTYPES[amp]
        return body if dtype is None else Autocast(body, dtype)
    if kind in ("resnet18", "resnet50"):
        return ResNet(
            input_shape, kind, hparams.get("resnet_dropout", 0.0), hparams.get("resnet_weights"), hparams.get("amp", "off"),
            hparams.get("freeze_bn", True),
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

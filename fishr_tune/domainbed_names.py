"""DomainBed's hyperparameter names that fishr-tune spells differently or lacks: translate, or refuse with the reason.

DomainBed's registry (domainbed/hparams_registry.py) has names for choices that fishr-tune makes elsewhere
(`resnet18` is our `featurizer`; `resnet50_augmix` picks its weights) and for features it does not have (ViT,
DINOv2, ERM++'s LARS and linear probing). `freeze_bn` and `class_balanced` are ours too (hparams.py), with the
same meaning. A value that asks for what fishr-tune does anyway (`vit: false`) is accepted and left out; one that
asks for something it cannot do is refused, one line naming it, never silently dropped.

Records of a DomainBed run carry every name of its registry, also those the run never read (`vit_dropout` without a
ViT, `linear_steps` outside ERM++, `resnet18` on 28x28 inputs, where DomainBed always uses MNIST_CNN): reading
records (`from_records=True`, for `analyze --best-config`) leaves those out too, and says which.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fishr_tune.errors import ConfigError

# Features fishr-tune lacks: `false` is what it does anyway, `true` is refused with the reason.
SWITCHES = {
    "vit": "DomainBed's ViT-B/16 featurizer is not in fishr-tune (featurizer: mlp, mnist_cnn, resnet18, resnet50)",
    "dinov2": "DomainBed's DINOv2 featurizer is not in fishr-tune (featurizer: mlp, mnist_cnn, resnet18, resnet50)",
    "vit_attn_tune": "it fine-tunes only the attention of DomainBed's ViT, which fishr-tune does not have",
    "lars": "DomainBed's LARS optimizer (ERM++) is not in fishr-tune; every algorithm trains with Adam, as DomainBed's",
}
# Read only by features fishr-tune lacks, whatever their value: refused when given, left out of records.
UNUSED = {
    "vit_dropout": "only DomainBed's ViT and DINOv2 featurizers read it, and fishr-tune has neither (resnet_dropout is the ResNets')",
    "linear_steps": "only DomainBed's ERM++ reads it (its linear-probing steps), and fishr-tune has no ERM++",
}
FEATURIZER_NAMES = ("resnet18", "resnet50_augmix")
NAMES = frozenset(SWITCHES) | frozenset(UNUSED) | frozenset(FEATURIZER_NAMES)
# On the MNIST datasets (28x28 inputs) DomainBed's network has GroupNorm, not BatchNorm, and the data no augmentation.
SMALL_UNUSED = ("data_augmentation", "freeze_bn")


def _bool(name: str, value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: hyperparameter {name!r} (DomainBed's) must be true or false, got {value!r}")
    return value


def to_our_names(
    values: Mapping[str, Any], dataset: str, where: str, from_records: bool = False
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(values in fishr-tune's names, the DomainBed names left out with their values); ConfigError where it cannot."""
    from fishr_tune.space import DEFAULT_FEATURIZER

    small = dataset in DEFAULT_FEATURIZER
    names = NAMES | frozenset(SMALL_UNUSED) if small else NAMES
    out = {name: value for name, value in values.items() if name not in names}
    left_out: dict[str, Any] = {}
    for name in sorted(names & values.keys()):
        value = values[name]
        if name in SWITCHES:
            if _bool(name, value, where):
                raise ConfigError(f"{where}: hyperparameter {name!r} (DomainBed's) is not supported: {SWITCHES[name]}")
            left_out[name] = value
        elif name in UNUSED:
            if not from_records:
                raise ConfigError(f"{where}: hyperparameter {name!r} (DomainBed's) is not supported: {UNUSED[name]}")
            left_out[name] = value
        elif name in SMALL_UNUSED:
            if not from_records:
                raise ConfigError(f"{where}: hyperparameter {name!r} does nothing on {dataset}: its network has no "
                                  "BatchNorm and its data no augmentation, in DomainBed as here")
            left_out[name] = value
        elif small:  # resnet18 / resnet50_augmix on the MNIST datasets
            if _bool(name, value, where) and not from_records:
                raise ConfigError(
                    f"{where}: hyperparameter {name!r} (DomainBed's) does nothing on {dataset}: DomainBed uses its "
                    f"28x28 network there whatever {name} says; set featurizer (mlp, mnist_cnn, resnet18, resnet50) instead"
                )
            left_out[name] = value
        else:
            _bool(name, value, where)
    if not small:
        out.update(_featurizer_choice(values, out, left_out, where))
    return out, left_out


def _featurizer_choice(values: Mapping[str, Any], out: Mapping[str, Any], left_out: dict[str, Any], where: str) -> dict[str, Any]:
    """DomainBed's ResNet choice: resnet50_augmix (timm's ResNet-50 AugMix weights) wins over resnet18, as in its
    networks.ResNet, and both are false for torchvision's ResNet-50."""
    from fishr_tune.networks import augmix_weights_file

    augmix, resnet18 = values.get("resnet50_augmix", False), values.get("resnet18", False)
    if not (augmix or resnet18):
        left_out.update({name: values[name] for name in FEATURIZER_NAMES if name in values})
        return {}
    chosen = "resnet50" if augmix else "resnet18"
    if out.get("featurizer", chosen) != chosen:
        name = "resnet50_augmix" if augmix else "resnet18"
        raise ConfigError(f"{where}: hyperparameter {name!r} (DomainBed's) asks for {chosen}, but featurizer is {out['featurizer']!r}")
    if not augmix:
        return {"featurizer": "resnet18"}
    if resnet18:
        left_out["resnet18"] = True  # DomainBed replaces the ResNet-18 by the AugMix ResNet-50
    if "resnet_weights" in out:
        raise ConfigError(f"{where}: hyperparameter 'resnet50_augmix' (DomainBed's) picks the ResNet weights, "
                          "so resnet_weights must not be given too")
    path = augmix_weights_file()
    if path is None:
        raise ConfigError(
            f"{where}: hyperparameter 'resnet50_augmix' (DomainBed's) needs timm's resnet50.ram_in1k weights, which are "
            "not in the local Hugging Face cache (models--timm--resnet50.ram_in1k/snapshots/*/pytorch_model.bin); "
            "fetch them there, or set resnet50_augmix false for torchvision's ImageNet ResNet-50"
        )
    return {"featurizer": "resnet50", "resnet_weights": str(path)}

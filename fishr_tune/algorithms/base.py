"""The algorithm interface (DomainBed's, so users can port theirs) and the registry."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from fishr_tune.errors import unknown_name_error
from fishr_tune.space import HParam

Minibatches = Sequence[tuple[torch.Tensor, torch.Tensor]]

ALGORITHMS: dict[str, type[Algorithm]] = {}
A = TypeVar("A", bound=type["Algorithm"])


def register_algorithm(name: str) -> Callable[[A], A]:
    """Class decorator: `@register_algorithm("Fishr")` makes the class usable by name everywhere."""

    def wrap(cls: A) -> A:
        if name in ALGORITHMS and ALGORITHMS[name] is not cls:
            raise RuntimeError(f"algorithm {name!r} is registered twice")
        ALGORITHMS[name] = cls
        cls.name = name
        return cls

    return wrap


def get_algorithm_class(name: str) -> type[Algorithm]:
    if name not in ALGORITHMS:
        raise unknown_name_error("algorithm", name, list(ALGORITHMS))
    return ALGORITHMS[name]


class Algorithm(nn.Module):
    """A domain-generalization method: `update` takes one minibatch per training domain.

    Subclasses build `featurizer` and `classifier` and their optimizers in `__init__`. `state_dict()` holds
    everything needed to resume exactly: parameters, buffers, every optimizer's state, `update_count`, and
    whatever `extra_state()` adds (Fishr's moving averages, for instance).
    """

    name: ClassVar[str] = ""
    HPARAMS: ClassVar[Mapping[str, HParam]] = {}
    # Keys that `update` returns, besides "loss" (documented and checked by the conformance suite).
    UPDATE_KEYS: ClassVar[tuple[str, ...]] = ("loss",)

    featurizer: nn.Module
    classifier: nn.Module

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, num_domains: int, hparams: Mapping[str, Any]):
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.num_domains = num_domains
        self.hparams = dict(hparams)
        self.update_count = 0

    @classmethod
    def hparam_space(cls, dataset: str) -> Mapping[str, HParam]:
        """This algorithm's own hyperparameters; override when they depend on the dataset."""
        return cls.HPARAMS

    def update(self, minibatches: Minibatches) -> dict[str, float]:
        raise NotImplementedError

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.featurizer(x))

    def make_adam(self, params: Any, lr: float | None = None, weight_decay: float | None = None, **kwargs: Any) -> torch.optim.Adam:
        return torch.optim.Adam(
            params,
            lr=self.hparams["lr"] if lr is None else lr,
            weight_decay=self.hparams["weight_decay"] if weight_decay is None else weight_decay,
            **kwargs,
        )

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Every optimizer held as an attribute, by attribute name (they are checkpointed with the model)."""
        return {k: v for k, v in sorted(vars(self).items()) if isinstance(v, torch.optim.Optimizer)}

    def extra_state(self) -> dict[str, Any]:
        """Non-parameter state to checkpoint (tensors, numbers, dicts of them: it is loaded with weights_only)."""
        return {}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        """Restore what `extra_state` returned."""

    def get_extra_state(self) -> dict[str, Any]:
        return {
            "update_count": self.update_count,
            "optimizers": {name: opt.state_dict() for name, opt in self.optimizers().items()},
            "algorithm": self.extra_state(),
        }

    def set_extra_state(self, state: Mapping[str, Any]) -> None:
        self.update_count = int(state["update_count"])
        self.on_update_count_restored()
        optimizers = self.optimizers()
        for name, opt_state in state["optimizers"].items():
            optimizers[name].load_state_dict(opt_state)
        self.load_extra_state(state["algorithm"])

    def on_update_count_restored(self) -> None:
        """Hook for algorithms whose optimizers depend on the step (re-created at a penalty anneal step)."""


def split_logits(all_logits: torch.Tensor, minibatches: Minibatches) -> list[torch.Tensor]:
    """Cut the logits of the concatenated minibatches back into one tensor per domain."""
    return list(torch.split(all_logits, [int(x.shape[0]) for x, _ in minibatches]))

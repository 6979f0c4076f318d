"""Per-domain variances of the classifier head's per-sample gradients: the quantity Fishr matches across domains.

Three engines compute the same thing and are interchangeable (a conformance test holds them to it):

- ``closed_form`` (default): for a linear head the per-sample gradient is the outer product of dL/dlogits and
  the features, so per-domain (centred) second moments follow from two matrix products per domain, without
  ever building the N x (classes x features) per-sample gradient tensor.
- ``torch_func``: ``vmap(grad(...))`` over samples; any head, the nonlinear option included.
- ``backpack``: BackPACK's BatchGrad, the reference the Fishr paper used.

Conventions shared by all engines:

- the per-sample gradient is that of the sample's own loss (not divided by the batch size), as DomainBed sums
  the loss before BackPACK and the IRM-style script multiplies ``grad_batch`` by the batch size;
- parameters are taken in ``classifier.named_parameters()`` order, each flattened, then concatenated;
- the result is differentiable with respect to the features (the penalty trains the featurizer) and the head.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from fishr_tune.errors import ConfigError, unknown_name_error

LossKind = Literal["cross_entropy", "binary_cross_entropy"]
LOSS_KINDS: tuple[str, ...] = ("cross_entropy", "binary_cross_entropy")


def per_sample_losses(logits: torch.Tensor, labels: torch.Tensor, loss: LossKind) -> torch.Tensor:
    """Cross-entropy on class indices, or binary cross-entropy on a single logit with 0/1 labels."""
    if loss == "cross_entropy":
        return F.cross_entropy(logits, labels, reduction="none")
    if loss == "binary_cross_entropy":
        return F.binary_cross_entropy_with_logits(logits.reshape(-1), labels.reshape(-1).to(logits.dtype), reduction="none")
    raise ValueError(f"loss must be one of {LOSS_KINDS}, got {loss!r}")


def moments_to_variance(
    grads: torch.Tensor, domain_sizes: Sequence[int], centered: bool, full_covariance: bool
) -> torch.Tensor:
    """From materialized per-sample gradients (N x P) to per-domain variances (D x P) or covariances (D x P x P)."""
    out = []
    for chunk in torch.split(grads, list(domain_sizes)):
        if centered:
            chunk = chunk - chunk.mean(dim=0, keepdim=True)
        if full_covariance:
            out.append(chunk.T @ chunk / chunk.shape[0])
        else:
            out.append(chunk.pow(2).mean(dim=0))
    return torch.stack(out)


class GradVarEngine(ABC):
    name: ClassVar[str]
    # Whether the engine accepts any head (True) or only nn.Linear (False).
    any_head: ClassVar[bool] = True

    def prepare(self, classifier: nn.Module) -> nn.Module:
        """Called once when an algorithm builds its head (BackPACK extends it); returns the head to use."""
        return classifier

    @abstractmethod
    def per_domain(
        self,
        classifier: nn.Module,
        features: torch.Tensor,
        labels: torch.Tensor,
        domain_sizes: Sequence[int],
        loss: LossKind = "cross_entropy",
        centered: bool = True,
        full_covariance: bool = False,
        logits: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """D x P variances (or D x P x P covariances) of per-sample head gradients, domain by domain.

        `features` is the concatenation of the domains' features in `domain_sizes` order; `logits`, if given,
        must be `classifier(features)` (engines that can reuse it skip a forward pass).
        """


ENGINES: dict[str, GradVarEngine] = {}


def register_engine(cls: type[GradVarEngine]) -> type[GradVarEngine]:
    ENGINES[cls.name] = cls()
    return cls


def get_engine(name: str) -> GradVarEngine:
    if name not in ENGINES:
        raise unknown_name_error("gradient-variance engine", name, list(ENGINES))
    return ENGINES[name]


@register_engine
class ClosedFormEngine(GradVarEngine):
    """Linear heads: the gradient wrt W of sample i is g_i z_i^T, so E[(g z)^2] = (g^2)^T (z^2) / n."""

    name = "closed_form"
    any_head = False

    def per_domain(self, classifier, features, labels, domain_sizes, loss="cross_entropy", centered=True,
                   full_covariance=False, logits=None):
        if not isinstance(classifier, nn.Linear):
            raise ConfigError(
                f"the closed_form gradient-variance engine needs a linear head, got {type(classifier).__name__}; "
                "use gradvar_engine 'torch_func' or 'backpack' with nonlinear_classifier"
            )
        if logits is None:
            logits = classifier(features)
        # dL_i/dlogits_i for every sample at once: the losses are independent across samples.
        dlogits = torch.autograd.grad(per_sample_losses(logits, labels, loss).sum(), logits, create_graph=True)[0]
        has_bias = classifier.bias is not None
        if full_covariance:
            per_sample = torch.einsum("nc,nf->ncf", dlogits, features).flatten(1)
            if has_bias:
                per_sample = torch.cat([per_sample, dlogits], dim=1)
            return moments_to_variance(per_sample, domain_sizes, centered, full_covariance=True)
        out = []
        for g, z in zip(torch.split(dlogits, list(domain_sizes)), torch.split(features, list(domain_sizes))):
            n = g.shape[0]
            weight_var = (g * g).T @ (z * z) / n
            bias_var = (g * g).mean(dim=0)
            if centered:
                weight_var = weight_var - ((g.T @ z) / n).pow(2)
                bias_var = bias_var - g.mean(dim=0).pow(2)
            parts = [weight_var.flatten()] + ([bias_var] if has_bias else [])
            out.append(torch.cat(parts))
        return torch.stack(out)


@register_engine
class TorchFuncEngine(GradVarEngine):
    """Any head: per-sample gradients by `torch.func.vmap(torch.func.grad(...))`."""

    name = "torch_func"

    def per_domain(self, classifier, features, labels, domain_sizes, loss="cross_entropy", centered=True,
                   full_covariance=False, logits=None):
        from torch.func import functional_call, grad, vmap

        params = dict(classifier.named_parameters())

        def sample_loss(p: dict[str, torch.Tensor], z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            out = functional_call(classifier, p, (z.unsqueeze(0),))
            return per_sample_losses(out, y.unsqueeze(0), loss).sum()

        grads = vmap(grad(sample_loss), in_dims=(None, 0, 0))(params, features, labels)
        per_sample = torch.cat([grads[name].flatten(1) for name in params], dim=1)
        return moments_to_variance(per_sample, domain_sizes, centered, full_covariance)


def engine_names() -> list[str]:
    return sorted(ENGINES)



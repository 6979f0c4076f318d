"""Per-domain variances of the classifier head's per-sample gradients: the quantity Fishr matches across domains.

Three engines compute the same thing and are interchangeable (a conformance test holds them to it):

- ``closed_form`` (default): for a linear head the per-sample gradient is the outer product of dL/dlogits and
  the features, so per-domain (centred) second moments follow from two matrix products per domain, without
  ever building the N x (classes x features) per-sample gradient tensor; dL/dlogits itself is written out
  (softmax minus one-hot, or sigmoid minus label), so no autograd pass is spent on it.
- ``torch_func``: ``vmap(grad(...))`` over samples; any head, the nonlinear option included.
- ``backpack``: BackPACK's BatchGrad, the reference the Fishr paper used; any head BackPACK supports.

Conventions shared by all engines:

- the per-sample gradient is that of the sample's own loss (not divided by the batch size), as DomainBed sums
  the loss before BackPACK and the IRM-style script multiplies ``grad_batch`` by the batch size;
- parameters are taken in ``classifier.named_parameters()`` order, each flattened, then concatenated;
- the full-covariance variant (paper, Table 6) is the official ColoredMNIST script's ``fishr_offdiagonal``:
  one covariance block per parameter tensor (weight, bias; no cross terms between tensors), each divided by
  n x (that tensor's number of elements), the blocks flattened and concatenated into D x sum(p_t^2);
- with ``create_graph=True`` (the default) the result is differentiable with respect to the features (the
  penalty trains the featurizer) and the head; with ``create_graph=False`` it is a detached value, computed
  without recording a graph where the engine allows it (Fishr before its anneal step only needs the value).
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


def loss_gradient_wrt_logits(logits: torch.Tensor, labels: torch.Tensor, loss: LossKind) -> torch.Tensor:
    """dL_i/dlogits_i for every sample (N x C), in closed form: softmax - one_hot, or sigmoid - label."""
    if loss == "cross_entropy":
        return torch.softmax(logits, dim=1) - F.one_hot(labels, logits.shape[1]).to(logits.dtype)
    if loss == "binary_cross_entropy":
        if logits.shape[1] != 1:
            raise ValueError(f"binary_cross_entropy needs a single-logit head, got {logits.shape[1]} logits")
        return torch.sigmoid(logits) - labels.reshape(-1, 1).to(logits.dtype)
    raise ValueError(f"loss must be one of {LOSS_KINDS}, got {loss!r}")


def moments_to_variance(
    grads: torch.Tensor,
    domain_sizes: Sequence[int],
    centered: bool,
    full_covariance: bool,
    param_sizes: Sequence[int] | None = None,
) -> torch.Tensor:
    """From materialized per-sample gradients (N x P) to per-domain variances (D x P) or covariance blocks.

    With `full_covariance`, `param_sizes` (each head parameter's number of elements, in column order) splits the
    P columns into tensors; each tensor t gets its own p_t x p_t block, divided by n * p_t as the official
    script's ``fishr_offdiagonal`` does (``einsum("na,nb->ab") / (n * p_t)``), and the result is the D x sum(p_t^2)
    concatenation of the flattened blocks.
    """
    if full_covariance:
        if param_sizes is None:
            raise ValueError("full_covariance needs param_sizes: one covariance block per parameter tensor")
        if sum(param_sizes) != grads.shape[1]:
            raise ValueError(f"param_sizes sum to {sum(param_sizes)}, but the gradients have {grads.shape[1]} columns")
    column_sizes = list(param_sizes or ())
    out = []
    for chunk in torch.split(grads, list(domain_sizes)):
        if centered:
            chunk = chunk - chunk.mean(dim=0, keepdim=True)
        if full_covariance:
            blocks = torch.split(chunk, column_sizes, dim=1)
            out.append(torch.cat([(b.T @ b).flatten() / (b.shape[0] * b.shape[1]) for b in blocks]))
        else:
            out.append(chunk.pow(2).mean(dim=0))
    return torch.stack(out)


def fishr_penalty(variances: torch.Tensor) -> torch.Tensor:
    """Mean over domains of the mean squared difference between a domain's variance and the domains' average.

    DomainBed's ``l2_between_dicts`` takes the mean over every coordinate of every head parameter; every domain
    has the same coordinates, so one mean over everything equals the mean over domains of per-domain means.
    """
    return (variances - variances.mean(dim=0, keepdim=True)).square().mean()


def head_parameter_count(classifier: nn.Module) -> int:
    return sum(p.numel() for p in classifier.parameters())


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
        create_graph: bool = True,
    ) -> torch.Tensor:
        """D x P variances (or D x sum(p_t^2) covariance blocks) of per-sample head gradients, domain by domain.

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
    """Linear heads: the gradient wrt W of sample i is g_i z_i^T, so E[(g z)^2] = (g^2)^T (z^2) / n.

    All domains go through one batched product per moment (no Python loop over domains): on small heads the
    cost is the number of operations, not their size.
    """

    name = "closed_form"
    any_head = False

    def per_domain(self, classifier, features, labels, domain_sizes, loss="cross_entropy", centered=True,
                   full_covariance=False, logits=None, create_graph=True):
        if not isinstance(classifier, nn.Linear):
            raise ConfigError(
                f"the closed_form gradient-variance engine needs a linear head, got {type(classifier).__name__}; "
                "use gradvar_engine 'torch_func' or 'backpack' with nonlinear_classifier"
            )
        with torch.set_grad_enabled(create_graph and torch.is_grad_enabled()):
            if logits is None:
                logits = classifier(features)
            if not create_graph:
                features, logits = features.detach(), logits.detach()
            dlogits = loss_gradient_wrt_logits(logits, labels, loss)
            has_bias = classifier.bias is not None
            if full_covariance:
                per_sample = torch.einsum("nc,nf->ncf", dlogits, features).flatten(1)
                if has_bias:
                    per_sample = torch.cat([per_sample, dlogits], dim=1)
                param_sizes = [p.numel() for p in classifier.parameters()]
                return moments_to_variance(per_sample, domain_sizes, centered, True, param_sizes)
            sizes = torch.tensor(list(domain_sizes), dtype=features.dtype, device=features.device)
            g2 = dlogits * dlogits
            weight_var = per_domain_outer_sums(g2, features * features, domain_sizes) / sizes.view(-1, 1, 1)
            bias_var = per_domain_sums(g2, domain_sizes) / sizes.view(-1, 1)
            if centered:
                # E[x^2] - E[x]^2: exact in float64; in float32 it loses digits only when a coordinate's mean
                # gradient dwarfs its spread (the conformance test compares engines in float64 for that reason).
                weight_var = weight_var - (per_domain_outer_sums(dlogits, features, domain_sizes) / sizes.view(-1, 1, 1)).pow(2)
                bias_var = bias_var - (per_domain_sums(dlogits, domain_sizes) / sizes.view(-1, 1)).pow(2)
            parts = [weight_var.flatten(1)] + ([bias_var] if has_bias else [])
            return torch.cat(parts, dim=1)


def _equal_sizes(domain_sizes: Sequence[int]) -> bool:
    return all(size == domain_sizes[0] for size in domain_sizes)


def _domain_indicator(domain_sizes: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    """N x D one-hot of each sample's domain."""
    sizes = torch.tensor(list(domain_sizes), device=like.device)
    domain = torch.repeat_interleave(torch.arange(len(domain_sizes), device=like.device), sizes)
    return F.one_hot(domain, len(domain_sizes)).to(like.dtype)


def per_domain_outer_sums(a: torch.Tensor, b: torch.Tensor, domain_sizes: Sequence[int]) -> torch.Tensor:
    """D x A x B: for each domain, the sum over its samples of a_i b_i^T, in one batched product.

    Equal domain sizes (DomainBed's case) reshape into a bmm; uneven ones spread `a` into per-domain column
    blocks (zeros outside the sample's domain) so that a single matrix product still covers every domain.
    """
    n_domains = len(domain_sizes)
    if _equal_sizes(domain_sizes):
        per = domain_sizes[0]
        return torch.bmm(a.reshape(n_domains, per, -1).transpose(1, 2), b.reshape(n_domains, per, -1))
    indicator = _domain_indicator(domain_sizes, a)
    blocked = (indicator.unsqueeze(2) * a.unsqueeze(1)).flatten(1)
    return (blocked.T @ b).view(n_domains, a.shape[1], b.shape[1])


def per_domain_sums(a: torch.Tensor, domain_sizes: Sequence[int]) -> torch.Tensor:
    """D x A: each domain's sum of its rows of `a`."""
    if _equal_sizes(domain_sizes):
        return a.reshape(len(domain_sizes), domain_sizes[0], -1).sum(dim=1)
    return _domain_indicator(domain_sizes, a).T @ a


@register_engine
class TorchFuncEngine(GradVarEngine):
    """Any head: per-sample gradients by `torch.func.vmap(torch.func.grad(...))`.

    Not on a head that BackPACK extended: its backward hooks are autograd.Functions that functorch refuses.
    """

    name = "torch_func"

    def per_domain(self, classifier, features, labels, domain_sizes, loss="cross_entropy", centered=True,
                   full_covariance=False, logits=None, create_graph=True):
        from torch.func import functional_call, grad, vmap

        params = dict(classifier.named_parameters())
        if not create_graph:
            features = features.detach()
            params = {name: p.detach() for name, p in params.items()}

        def sample_loss(p: dict[str, torch.Tensor], z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            out = functional_call(classifier, p, (z.unsqueeze(0),))
            return per_sample_losses(out, y.unsqueeze(0), loss).sum()

        grads = vmap(grad(sample_loss), in_dims=(None, 0, 0))(params, features, labels)
        per_sample = torch.cat([grads[name].flatten(1) for name in params], dim=1)
        param_sizes = [p.numel() for p in params.values()]
        return moments_to_variance(per_sample, domain_sizes, centered, full_covariance, param_sizes)


@register_engine
class BackpackEngine(GradVarEngine):
    """BackPACK's BatchGrad (the Fishr paper's reference implementation), with a call pattern for torch 2.x.

    Why not DomainBed's ``loss.backward(inputs=list(head.parameters()), create_graph=True)``: BackPACK computes
    ``grad_batch`` inside full backward hooks (``register_full_backward_hook``), and torch 2.x runs those only
    when the gradient with respect to the module's *input* is computed. With ``inputs=`` restricted to the
    parameters, autograd prunes the path to the input (the features, which require grad because they come from
    the featurizer), the hooks never fire, and ``grad_batch`` stays unset. Asking ``torch.autograd.grad`` for
    the gradient with respect to the features makes every hook of the head fire; ``grad_batch`` is then built
    from the stored layer inputs and the (graph-carrying) output gradients, so it stays differentiable with
    respect to the features and the head. ``autograd.grad`` also leaves no ``.grad`` on the parameters, and the
    ``grad_batch`` attributes are deleted once read.
    """

    name = "backpack"

    def prepare(self, classifier: nn.Module) -> nn.Module:
        from backpack import extend

        return extend(classifier)

    def per_domain(self, classifier, features, labels, domain_sizes, loss="cross_entropy", centered=True,
                   full_covariance=False, logits=None, create_graph=True):
        from backpack import backpack
        from backpack.extensions import BatchGrad

        classifier = self.prepare(classifier)  # idempotent: extend() skips modules already extended
        if not (create_graph and features.requires_grad):
            # The hooks need an input that requires grad; a detached leaf keeps the featurizer out of it.
            features = features.detach().requires_grad_(True)
        params = list(classifier.parameters())
        with torch.enable_grad():
            # A fresh forward: BackPACK reads the layer inputs and outputs stored by this very forward (and
            # deletes them after the pass), so `logits` from an earlier forward cannot be reused.
            fresh_logits = classifier(features)
            summed = per_sample_losses(fresh_logits, labels, loss).sum()
            try:
                with backpack(BatchGrad()):
                    torch.autograd.grad(summed, [features], create_graph=create_graph)
                missing = [i for i, p in enumerate(params) if getattr(p, "grad_batch", None) is None]
                if missing:
                    raise RuntimeError(
                        "BackPACK did not fill grad_batch for every head parameter; is every layer of the head "
                        f"supported by BatchGrad? (head: {classifier})"
                    )
                per_sample = torch.cat([p.grad_batch.flatten(1) for p in params], dim=1)
            finally:
                for p in params:
                    if hasattr(p, "grad_batch"):
                        del p.grad_batch
        result = moments_to_variance(per_sample, domain_sizes, centered, full_covariance, [p.numel() for p in params])
        return result if create_graph else result.detach()


def engine_names() -> list[str]:
    return sorted(ENGINES)

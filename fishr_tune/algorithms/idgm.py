"""IDGM, inter-domain gradient matching (Shi et al. 2021, "Gradient Matching for Domain Generalization"),
optimized directly as their Algorithm 2 does, the objective that Fish approximates to first order:

    loss = ERM loss - gamma * 2 / (S (S - 1)) * sum over domain pairs i < j of G_i . G_j

where G_i is the gradient of domain i's mean cross-entropy with respect to every trainable parameter. The
inner products are differentiated through (second-order backpropagation: the per-domain gradients are taken
with ``create_graph=True``), which costs about S extra backward passes per step and is why Fish exists.
The weight follows IRM's and V-REx's schedule (1.0 until ``idgm_penalty_anneal_iters``, then ``idgm_gamma``,
Adam restarting at the jump); the default anneal of 0 is the paper's objective from the first step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fishr_tune.algorithms.base import register_algorithm
from fishr_tune.algorithms.penalized import AnnealedPenaltyERM
from fishr_tune.space import NON_NEGATIVE, STEPS, HParam, loguniform


def gradient_inner_product(domain_losses: Sequence[torch.Tensor], params: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean over unordered domain pairs of <grad L_i, grad L_j>, differentiable in the parameters (0 for one domain).

    A parameter that a domain's loss does not reach contributes a zero gradient, not an error.
    """
    params = list(params)
    if len(domain_losses) < 2:
        return torch.zeros((), dtype=params[0].dtype, device=params[0].device)
    flat = []
    for loss in domain_losses:
        grads = torch.autograd.grad(loss, params, create_graph=True, retain_graph=True, allow_unused=True)
        flat.append(torch.cat([
            (torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params)
        ]))
    stacked = torch.stack(flat)
    gram = stacked @ stacked.T
    rows, cols = torch.triu_indices(len(flat), len(flat), offset=1)
    return gram[rows, cols].mean()


@register_algorithm("IDGM")
class IDGM(AnnealedPenaltyERM):
    HPARAMS = {
        "idgm_gamma": HParam(0.01, loguniform(-4, -1), "weight of the mean inter-domain gradient inner product (the paper's gamma)",
                             domain=NON_NEGATIVE),
        "idgm_penalty_anneal_iters": HParam(0, loguniform(0, 4, integer=True), "steps with weight 1.0 before gamma; Adam restarts then",
                                            domain=STEPS),
    }
    LAMBDA = "idgm_gamma"
    ANNEAL_ITERS = "idgm_penalty_anneal_iters"

    def penalty(self, domain_logits, domain_labels, domain_losses):
        """Minus the mean gradient inner product: minimizing it aligns the domains' gradients ("penalty" reports it)."""
        params = [p for p in self.network.parameters() if p.requires_grad]
        return -gradient_inner_product(list(domain_losses), params)

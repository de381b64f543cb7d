"""The count likelihoods of the CVAE: negative binomial (optionally zero-inflated) and the
Poisson of softmax means its training uses by default (``cvae.dispersion_fit = "moments"``).

Each takes the non-zero counts of a batch where they were found already
(:func:`._sparse_input.nonzero`: a training step finds them once for the encoder's sparse
input layer and for the likelihood) and visits only those for the terms that vanish at zero.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch.distributions import Distribution, constraints

from ._sparse_input import Nonzero

_EPS = 1e-8


def log_nb(x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Elementwise log-density of NB(mean ``mu``, inverse dispersion ``theta``) at counts ``x``."""
    log_theta_mu = torch.log(theta + mu + _EPS)
    return (
        theta * (torch.log(theta + _EPS) - log_theta_mu)
        + x * (torch.log(mu + _EPS) - log_theta_mu)
        + torch.lgamma(x + theta)
        - torch.lgamma(theta)
        - torch.lgamma(x + 1.0)
    )


def log_poisson_softmax(x: torch.Tensor, logits: torch.Tensor, library: torch.Tensor,
                        found: Nonzero | None = None) -> torch.Tensor:  # fmt: skip
    """Poisson log-likelihood of each cell's counts ``x`` (``(B, n_genes)``) at means
    ``library * softmax(logits)``, from the logits; ``found``: the non-zero counts of ``x`` where
    they were found already (:func:`._sparse_input.nonzero`).

    The means sum to ``library``, so the zeros add ``-library`` in all; only the non-zero
    counts are visited, at ``log mu = log library + log_softmax(logits)`` (exact: no
    logarithm of a mean that underflows). The dense work is one fused ``log_softmax`` and its
    fused backward (1.3 ms forward and backward for 256 x 2,000 on 2 CPU cores, against 2.5 ms
    for ``logits - logsumexp(logits)``).
    """
    rows, k, at = _nonzero(x, found)
    log_mu = at(torch.log_softmax(logits, dim=-1)) + torch.log(library)[rows]
    return (-library).index_add(0, rows, k * log_mu - torch.lgamma(k + 1.0))


def _nonzero(x: torch.Tensor, found: Nonzero | None):
    """``(rows, counts, at)`` of the non-zero entries of ``x``: their rows, their counts, and a
    function that takes a ``(B, G)`` tensor's values there; from ``found`` when given."""
    if found is not None:
        rows, cols, counts = found.rows, found.cols, found.counts
    else:
        rows, cols = (x > 0).nonzero(as_tuple=True)
        counts = x[rows, cols]
    return rows, counts, lambda t: t[rows, cols]


def log_zinb(
    x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor, zi_logits: torch.Tensor
) -> torch.Tensor:
    """Elementwise log-density of the zero-inflated NB; ``sigmoid(zi_logits)`` is the dropout share."""
    softplus_pi = F.softplus(-zi_logits)  # -log(1 - pi)
    theta_log = torch.log(theta + _EPS)
    log_theta_mu = torch.log(theta + mu + _EPS)
    pi_theta_log = -zi_logits + theta * (theta_log - log_theta_mu)
    case_zero = F.softplus(pi_theta_log) - softplus_pi
    case_nonzero = (
        -softplus_pi
        - zi_logits
        + theta * (theta_log - log_theta_mu)
        + x * (torch.log(mu + _EPS) - log_theta_mu)
        + torch.lgamma(x + theta)
        - torch.lgamma(theta)
        - torch.lgamma(x + 1.0)
    )
    return torch.where(x < _EPS, case_zero, case_nonzero)


class NegativeBinomial(Distribution):
    """Negative binomial (optionally zero-inflated) parametrised by mean and inverse dispersion.

    Parameters
    ----------
    mu
        Means, shape ``(B, n_genes)``.
    theta
        Inverse dispersions, broadcastable to ``mu`` (``(n_genes,)`` or ``(B, n_genes)``).
    zi_logits
        Zero-inflation logits (``None``: no zero inflation).
    scale
        The normalised expression ``mu / library`` the mean was built from (kept for callers).
    """

    arg_constraints: ClassVar[dict[str, constraints.Constraint]] = {
        "mu": constraints.nonnegative,
        "theta": constraints.positive,
    }
    support = constraints.nonnegative_integer

    def __init__(
        self,
        mu: torch.Tensor,
        theta: torch.Tensor,
        zi_logits: torch.Tensor | None = None,
        scale: torch.Tensor | None = None,
    ) -> None:
        self.mu = mu
        self.theta = theta  # kept unexpanded: per-gene terms are computed once
        self.zi_logits = zi_logits
        self.scale = scale
        super().__init__(batch_shape=mu.shape, validate_args=False)

    @property
    def mean(self) -> torch.Tensor:
        if self.zi_logits is None:
            return self.mu
        return self.mu * torch.sigmoid(-self.zi_logits)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self.zi_logits is None:
            return log_nb(value, self.mu, self.theta)
        return log_zinb(value, self.mu, self.theta, self.zi_logits)

    def log_prob_cells(self, value: torch.Tensor, found: Nonzero | None = None) -> torch.Tensor:
        """``log_prob(value).sum(-1)`` for counts ``(B, n_genes)``, computed sparsely (``found``:
        the non-zero counts of ``value`` where they were found already).

        Every term but ``theta * log(theta / (theta + mu))`` (and, zero-inflated, the zero
        case) vanishes where the count is 0, so the log-gamma terms, ``log(mu)`` and their
        gradients are evaluated on the non-zero entries only (a tenth or less of single-cell
        counts). Equal to the dense sum up to float rounding; values and gradients are tested.
        """
        mu, theta = self.mu, self.theta
        log_theta_mu = torch.log(theta + mu + _EPS)
        log_p0 = theta * (torch.log(theta + _EPS) - log_theta_mu)  # (B, G): NB's log P(x = 0)
        rows, x, at = _nonzero(value, found)
        th = at(theta.expand_as(mu))
        nonzero = (
            x * (torch.log(at(mu) + _EPS) - at(log_theta_mu))
            + torch.lgamma(x + th)
            - torch.lgamma(th)
            - torch.lgamma(x + 1.0)
        )
        if self.zi_logits is None:
            return log_p0.sum(-1).index_add(0, rows, nonzero)
        # zero: softplus(-zi + log_p0) - softplus(-zi); non-zero: -zi + log_p0 - softplus(-zi) + ...
        shifted = log_p0 - self.zi_logits
        dense = (F.softplus(shifted) - F.softplus(-self.zi_logits)).sum(-1)
        shifted_at = at(shifted)
        return dense.index_add(0, rows, shifted_at - F.softplus(shifted_at) + nonzero)

    @torch.no_grad()
    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:  # noqa: B008
        """Gamma-Poisson draws from torch's global generator (the model draws with numpy instead)."""
        shape = torch.Size(sample_shape) + self.mu.shape
        theta = self.theta.expand(shape)
        rate = torch._standard_gamma(theta) * (self.mu.expand(shape) / theta)
        counts = torch.poisson(rate)
        if self.zi_logits is not None:
            drop = torch.rand(shape, device=counts.device) < torch.sigmoid(self.zi_logits)
            counts = counts.masked_fill(drop, 0.0)
        return counts

"""The reference conditional VAE on PCA features, as a pure torch module (tensors in, tensors out).

Encoder ``q(z | x, y)``: ``concat(x, embed(y))`` through ``Linear -> LayerNorm -> GELU -> Dropout``
blocks to the mean and log-variance of a diagonal Gaussian. Decoder: ``concat(z, embed(y))``
through the mirrored blocks to a point estimate of ``x``. Loss: squared error summed over the
features plus ``kl_weight`` times ``KL(q(z | x, y) || N(0, I))``, both averaged over the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.distributions import Normal

from ._dropout import Dropout

#: log-variance is clamped to this range so ``exp`` cannot overflow early in training
_LOGVAR_RANGE = (-20.0, 15.0)


@dataclass
class LossOutput:
    """Batch-averaged loss terms (scalar tensors); ``loss`` is the one to back-propagate."""

    loss: torch.Tensor  # reconstruction + kl_weight * kl
    reconstruction: torch.Tensor  # squared error summed over features
    kl: torch.Tensor  # KL(q(z|x,y) || N(0, I)) summed over latent dims (unweighted)
    kl_weight: float = 1.0

    @classmethod
    def from_cells(cls, reconst: torch.Tensor, kl: torch.Tensor, kl_weight: float) -> LossOutput:
        """Average per-cell terms ``(B,)`` over the batch and weight the KL."""
        reconst_mean, kl_mean = reconst.mean(), kl.mean()
        return cls(loss=reconst_mean + kl_weight * kl_mean, reconstruction=reconst_mean,
                   kl=kl_mean, kl_weight=float(kl_weight))


def mlp(n_in: int, n_hidden: Sequence[int], dropout_rate: float) -> nn.Sequential:
    """Stacked ``Linear -> LayerNorm -> GELU -> Dropout`` blocks of widths ``n_hidden``."""
    layers: list[nn.Module] = []
    for n_out in n_hidden:
        layers += [nn.Linear(n_in, n_out), nn.LayerNorm(n_out), nn.GELU(), Dropout(dropout_rate)]
        n_in = n_out
    return nn.Sequential(*layers)


class SeedVAEModule(nn.Module):
    """Conditional VAE with a learned class embedding, trained with a squared-error likelihood.

    Parameters
    ----------
    n_input
        Number of input features (PCA components).
    n_labels
        Number of classes (cell types).
    n_embed
        Size of the class embedding fed to encoder and decoder.
    n_hidden
        Encoder widths, first to last; the decoder uses them reversed.
    n_latent
        Latent dimension.
    dropout_rate
        Dropout after every hidden block.
    """

    def __init__(
        self,
        n_input: int,
        n_labels: int,
        n_embed: int = 64,
        n_hidden: Sequence[int] = (2048, 1024, 512, 256),
        n_latent: int = 512,
        dropout_rate: float = 0.25,
    ) -> None:
        super().__init__()
        if not n_hidden:
            raise ValueError("n_hidden needs at least one layer width")
        self.n_input = n_input
        self.n_labels = n_labels
        self.n_latent = n_latent
        self.embed = nn.Embedding(n_labels, n_embed)
        self.encoder = mlp(n_input + n_embed, n_hidden, dropout_rate)
        self.z_mean = nn.Linear(n_hidden[-1], n_latent)
        self.z_logvar = nn.Linear(n_hidden[-1], n_latent)
        self.decoder = mlp(n_latent + n_embed, list(reversed(n_hidden)), dropout_rate)
        self.px_mean = nn.Linear(n_hidden[0], n_input)

    def inference(self, x: torch.Tensor, y: torch.Tensor) -> tuple[Normal, torch.Tensor]:
        """Posterior ``q(z | x, y)`` and a reparameterised sample from it.

        Parameters
        ----------
        x
            Features, shape ``(B, n_input)``.
        y
            Integer class codes, shape ``(B,)``.
        """
        h = self.encoder(torch.cat([x, self.embed(y)], dim=-1))  # (B, n_hidden[-1])
        qz_m = self.z_mean(h)  # (B, n_latent)
        qz_logvar = self.z_logvar(h).clamp(*_LOGVAR_RANGE)  # (B, n_latent)
        qz = Normal(qz_m, torch.exp(0.5 * qz_logvar), validate_args=False)  # NaN: the loop's
        z = qz.rsample()  # (B, n_latent)
        return qz, z

    def generative(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Decoded features for latent ``z`` (``(B, n_latent)``) and classes ``y`` (``(B,)``)."""
        h = self.decoder(torch.cat([z, self.embed(y)], dim=-1))  # (B, n_hidden[0])
        return self.px_mean(h)  # (B, n_input)

    def forward(
        self, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[Normal, torch.Tensor, torch.Tensor]:
        """Encode, sample and decode: returns ``(qz, z, px_mean)``."""
        qz, z = self.inference(x, y)
        px_mean = self.generative(z, y)  # (B, n_input)
        return qz, z, px_mean

    def loss(self, x: torch.Tensor, y: torch.Tensor, kl_weight: float = 1.0) -> LossOutput:
        """Negative ELBO with a squared-error likelihood, averaged over the batch.

        Parameters
        ----------
        x
            Features, shape ``(B, n_input)``.
        y
            Integer class codes, shape ``(B,)``.
        kl_weight
            Weight ``beta`` on the KL term (annealed by the trainer).
        """
        qz, _, px_mean = self(x, y)
        reconst = ((x - px_mean) ** 2).sum(dim=-1)  # (B,)
        # analytic KL(N(mu, sigma^2) || N(0, 1)) summed over latent dims
        var = qz.scale**2  # (B, n_latent)
        kl = 0.5 * (var + qz.loc**2 - 1.0 - torch.log(var)).sum(dim=-1)  # (B,)
        return LossOutput.from_cells(reconst, kl, kl_weight)

    @torch.no_grad()
    def sample(self, y: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Decode prior draws ``z ~ N(0, I)`` for the classes ``y`` (``(B,)``); returns ``(B, n_input)``.

        The noise is drawn on the CPU from ``generator`` and then moved, so a seed gives the
        same draws whatever the device.
        """
        z = torch.randn((y.shape[0], self.n_latent), generator=generator)  # (B, n_latent)
        return self.generative(z.to(y.device), y)  # (B, n_input)

"""What a trained :class:`~.cvae.CVAEModule` holds for generation besides its weights, and the
draws from it.

The caller fits these after training and stores them as buffers: the dispersion, the per-type
gene scale, zero inflation and (type, covariate level) gene scale, the per-type log-normal
library model and the per-type mixture over ``(z, log library)``. The draws take the noise from
the caller, so a seed fixes the output on any device.
"""

from __future__ import annotations

from typing import Any

import torch

PX_R_RANGE = (-12.0, 12.0)  # log inverse dispersion (or log Gaussian scale)


class GenerationBuffers:
    """The ``set_*`` methods and draws of :class:`~.cvae.CVAEModule` (a mixin before
    ``nn.Module``: it reads the module's buffers and its ``prior``)."""


    @torch.no_grad()
    def init_from_data(self, px_bias: torch.Tensor, px_r: torch.Tensor) -> None:
        """Start the decoder at the data's per-gene level and dispersion.

        Parameters
        ----------
        px_bias
            ``(n_input,)`` bias of the output head: log mean expression share (``"nb"``,
            ``"zinb"``) or mean log-normalised value (``"gaussian"``).
        px_r
            Log inverse dispersion (or log Gaussian scale) per gene, ``(n_input,)`` or
            ``(n_labels, n_input)``; broadcast to ``px_r``'s shape.
        """
        self.px_scale_decoder.bias.copy_(px_bias)
        self.px_r.copy_(px_r.expand_as(self.px_r).clamp(*PX_R_RANGE))

    @torch.no_grad()
    def set_dispersion(self, px_r: torch.Tensor) -> None:
        """Set the log inverse dispersion, ``(n_input,)`` or ``(n_labels, n_input)``, broadcast."""
        self.px_r.copy_(px_r.to(self.px_r).expand_as(self.px_r).clamp(*PX_R_RANGE))

    @torch.no_grad()
    def set_gene_scale(self, scale: torch.Tensor) -> None:
        """Set the per-type gene scale of generated NB means, ``(n_labels, n_input)``."""
        self.gene_scale.copy_(scale.to(self.gene_scale).expand_as(self.gene_scale))

    @torch.no_grad()
    def set_zero_inflation(self, pi: torch.Tensor) -> None:
        """Set the per-type zero inflation of generated NB counts, ``(n_labels, n_input)``
        probabilities in ``[0, 1)``; zeros switch it off."""
        if bool(((pi < 0) | (pi >= 1)).any()):
            raise ValueError("zero inflation must lie in [0, 1)")
        self.zero_inflation.copy_(pi.to(self.zero_inflation).expand_as(self.zero_inflation))

    @torch.no_grad()
    def set_level_scale(self, rows: torch.Tensor, table: torch.Tensor) -> None:
        """Set the per (type, covariate level) gene scale of generated NB means: ``rows``
        ``(n_labels, total levels)`` indexes ``table`` ``(R + 1, n_input)``, whose row 0 must
        be ones (no factor)."""
        if rows.shape != self.level_rows.shape or table.ndim != 2 or (
                table.shape[1] != self.n_input) or not bool((table[0] == 1).all()):
            raise ValueError(f"level scale shapes {tuple(rows.shape)}, {tuple(table.shape)} do "
                             f"not fit (n_labels, {self.level_rows.shape[1]}), (R + 1, "
                             f"{self.n_input}) with a first row of ones")  # fmt: skip
        if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= table.shape[0]):
            raise ValueError("level scale rows must index the table")
        self.level_rows.copy_(rows.to(self.level_rows))
        self.level_scale = table.to(self.level_scale.device, torch.float32).clone()

    @torch.no_grad()
    def set_library_model(self, log_mean: torch.Tensor, log_std: torch.Tensor) -> None:
        """Store the per-type mean and sd of ``log(library)`` (each ``(n_labels,)``)."""
        self.library_log_mean.copy_(log_mean)
        self.library_log_std.copy_(log_std)

    @torch.no_grad()
    def set_latent_mixture(
        self, weight: torch.Tensor, mean: torch.Tensor, chol: torch.Tensor
    ) -> None:
        """Store a per-type mixture over ``(z, log library)``: weights ``(n_labels, K)`` (rows
        sum to 1), means ``(n_labels, K, n_latent + 1)`` and lower-triangular scale factors
        ``(n_labels, K, n_latent + 1, n_latent + 1)``; ``K`` may differ from the current one."""
        k, d = weight.shape[-1], self.n_latent + 1
        if (weight.shape != (self.n_labels, k) or mean.shape != (self.n_labels, k, d)
                or chol.shape != (self.n_labels, k, d, d)):  # fmt: skip
            raise ValueError(
                f"mixture shapes {tuple(weight.shape)}, {tuple(mean.shape)}, {tuple(chol.shape)} "
                f"do not fit {self.n_labels} types and {self.n_latent} latent dimensions "
                "(+1 for the log library size)"
            )
        device = self.mixture_mean.device
        self.mixture_weight = weight.to(device, torch.float32)
        self.mixture_mean = mean.to(device, torch.float32)
        self.mixture_chol = chol.to(device, torch.float32)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        """Take the stored mixture's number of components before loading (a training
        checkpoint written after a ``cvae.select = "fidelity"`` check holds a fitted mixture);
        weights saved before the gene scale (zero inflation, level scale) existed load with a
        scale of one (none)."""
        if prefix + "gene_scale" not in state_dict and prefix + "embed.weight" in state_dict:
            state_dict[prefix + "gene_scale"] = torch.ones_like(self.gene_scale)
        if prefix + "zero_inflation" not in state_dict and prefix + "embed.weight" in state_dict:
            state_dict[prefix + "zero_inflation"] = torch.zeros_like(self.zero_inflation)
        if prefix + "level_scale" not in state_dict and prefix + "embed.weight" in state_dict:
            state_dict[prefix + "level_rows"] = torch.zeros_like(self.level_rows)
            state_dict[prefix + "level_scale"] = torch.ones(1, self.n_input)
        elif prefix + "level_scale" in state_dict:  # its number of rows: from the file
            self.level_scale = torch.empty_like(state_dict[prefix + "level_scale"]).to(
                self.level_scale.device)
        keys = [prefix + k for k in ("mixture_weight", "mixture_mean", "mixture_chol")]
        if all(k in state_dict for k in keys) and (
            state_dict[keys[0]].shape != self.mixture_weight.shape
        ):
            self.set_latent_mixture(*(torch.empty_like(state_dict[k]) for k in keys))  # shapes
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def latent_from_noise(self, eps: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Prior draws ``z = mu_y + sigma_y * eps`` from standard-normal ``eps`` (``(B, n_latent)``)."""
        p = self.prior(y)
        return p.loc + p.scale * eps  # (B, n_latent)

    @torch.no_grad()
    def mixture_from_noise(
        self, u: torch.Tensor, eps: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Joint draws of ``z`` and the library size from the per-type mixture: the component by
        uniform ``u`` (``(B,)``), then ``mean + L @ eps`` with standard-normal ``eps``
        (``(B, n_latent + 1)``). Returns ``z`` ``(B, n_latent)`` and the library ``(B,)``."""
        cdf = torch.cumsum(self.mixture_weight[y], dim=-1)  # (B, K)
        k = torch.searchsorted(cdf, u[:, None] * cdf[:, -1:]).clamp_max(cdf.shape[1] - 1)  # (B, 1)
        # the cells of each (type, component) at once: one matmul by its Cholesky factor, not a
        # (B, d, d) gather of every cell's (a tenth of a chunk's decoding at 2,000 genes)
        key = y * cdf.shape[1] + k.squeeze(1)  # (B,): row of the flattened tables
        d = self.mixture_mean.shape[-1]
        means, chols = self.mixture_mean.reshape(-1, d), self.mixture_chol.reshape(-1, d, d)
        order = torch.argsort(key, stable=True)
        keys, counts = torch.unique_consecutive(key[order], return_counts=True)
        draw = torch.empty_like(eps)  # (B, d)
        for row, rows in zip(keys.tolist(), torch.split(order, counts.tolist()), strict=True):
            draw[rows] = torch.addmm(means[row], eps[rows], chols[row].t())
        return draw[:, :-1], torch.exp(draw[:, -1])  # (B, n_latent), (B,)

    @torch.no_grad()
    def library_from_noise(self, eps: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Library sizes ``exp(m_y + s_y * eps)`` from standard-normal ``eps`` (``(B,)``)."""
        return torch.exp(self.library_log_mean[y] + self.library_log_std[y] * eps)  # (B,)

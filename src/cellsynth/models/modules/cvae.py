"""The count-space conditional VAE as a pure torch module (tensors in, distributions out).

Encoder ``q(z | x, y, c)``: ``concat(log1p(x / l * 1e4), embed(y), embed_1(c_1), ...)`` through
``Linear -> LayerNorm -> GELU -> Dropout`` blocks to a diagonal Gaussian. Decoder
``p(x | z, y, c, l)``: ``concat(z, embed(y), embed_1(c_1), ...)`` (``decode_labels=False``:
``p(x | z, c, l)`` without ``embed(y)``) through the mirrored blocks to

- ``"nb"``: a negative binomial with mean ``l * softmax(h)`` and inverse dispersion ``exp(px_r)``;
- ``"zinb"``: the same with a zero-inflation logit per gene and cell;
- ``"gaussian"``: a Normal on ``log1p(x / l * 1e4)`` with scale ``exp(px_r)``.

The covariates ``c`` (donor, condition, batch...: one integer level per covariate) each have an
embedding of their own, so any combination of seen levels can be decoded, also one no training
cell had. The prior is ``p(z | y) = N(mu_y, sigma_y)`` (learned per type) or ``N(0, I)``. For generation
the module also holds (as buffers, fitted by the caller) a per-type log-normal library-size model,
a per-type Gaussian mixture fitted to the aggregate posterior of the training cells, a
per-type gene scale that multiplies the decoded NB means of generated cells (not of training),
so that each type's gene means under the mixture equal the training cells' (``set_gene_scale``),
a gene scale per type and covariate level, so that within each level the type's gene means
equal its training cells' there too (``set_level_scale``), and a per-type zero inflation of
generated NB counts, so that each type's share of zeros per gene does too, its means kept
(``set_zero_inflation``). Those buffers' setters and the draws from them are in
:mod:`._generation`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from typing import ClassVar, Literal

import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Distribution, Normal, kl_divergence

from ._generation import PX_R_RANGE, GenerationBuffers
from ._sparse_input import Nonzero, nonzero, sparse_first_layer
from .likelihoods import NegativeBinomial, log_poisson_softmax
from .seed_vae import LossOutput, mlp

Likelihood = Literal["nb", "zinb", "gaussian"]
Prior = Literal["conditional", "standard"]
Dispersion = Literal["gene", "gene-label"]
DispersionFit = Literal["learned", "moments"]

_LOG_SCALE_RANGE = (-10.0, 7.0)  # latent log-scales; exp cannot overflow early in training


class CVAEModule(GenerationBuffers, nn.Module):
    """Conditional VAE on raw counts with a type-conditional prior and library-size model.

    Parameters
    ----------
    n_input
        Number of genes.
    n_labels
        Number of cell types.
    n_embed
        Size of the type embedding fed to encoder and decoder.
    n_hidden
        Encoder widths, first to last; the decoder uses them reversed.
    n_latent
        Latent dimension.
    dropout_rate
        Dropout after every encoder block.
    decoder_dropout_rate
        Dropout after every decoder block (0: the decoder mean is the same in training and
        generation, so the learned dispersion is not inflated by dropout noise).
    likelihood
        ``"nb"``, ``"zinb"`` or ``"gaussian"`` (on log-normalised values).
    prior
        ``"conditional"``: learned ``N(mu_y, sigma_y)`` per type; ``"standard"``: ``N(0, I)``.
    dispersion
        ``"gene"``: one ``px_r`` per gene; ``"gene-label"``: one per gene and type.
    dispersion_fit
        ``"learned"``: ``px_r`` is trained with the network. ``"moments"`` (``"nb"`` only): the
        network trains on a Poisson likelihood, so every correlated departure from the type's
        mean must be carried by ``z`` instead of being absorbed as independent per-gene
        over-dispersion; ``px_r`` is not trained and is set afterwards by the caller from the
        counts' spread around their decoded means (:meth:`set_dispersion`).
    target_sum
        Counts each cell is scaled to before ``log1p`` (encoder input, Gaussian likelihood).
    n_covariate_levels
        Levels of each categorical covariate the encoder and decoder condition on (none: the
        type alone).
    n_covariate_embed
        Size of each covariate's embedding.
    decode_labels
        Feed the type embedding to the decoder. False (as scVI): ``p(x | z, c, l)``, the type
        lives in ``z`` (its prior and mixture are still per type), so a covariate's effect is
        a function of the cell's state shared by types of similar states, not an interaction
        learned per type: it carries over to a combination no training cell had (issue 18).
    label_dropout
        With ``decode_labels``: the share of training cells whose decoder input has a learned
        "some type" vector (``any_type``) in place of their type's embedding, so that the
        decoder also learns ``p(x | z, c, l)`` without the type; :meth:`generative` with
        ``any_type=True`` decodes that way (the model class does so for combinations no
        training cell had). 0 (the default): no such vector, the module as without it.

    Attributes
    ----------
    compute_dtype
        What the encoder's and decoder's dense layers multiply in (``torch.float32``, the
        default, or ``torch.bfloat16``: mixed precision under :func:`torch.autocast`). Weights,
        the latent Gaussian, the output logits (their bias is added in float32, after the
        matmul) and every likelihood stay float32. Set by the model class from its
        ``precision`` setting; not saved with the weights.
    """

    compute_dtype: torch.dtype = torch.float32
    #: the encoder's first layer reads only the non-zero counts on the CPU in float32
    #: (:mod:`._sparse_input`); False: the dense layer everywhere
    sparse_input: bool = True

    def __init__(
        self,
        n_input: int,
        n_labels: int,
        n_embed: int = 32,
        n_hidden: Sequence[int] = (512, 256),
        n_latent: int = 32,
        dropout_rate: float = 0.1,
        decoder_dropout_rate: float = 0.0,
        likelihood: Likelihood = "nb",
        prior: Prior = "conditional",
        dispersion: Dispersion = "gene",
        dispersion_fit: DispersionFit = "learned",
        target_sum: float = 1e4,
        n_covariate_levels: Sequence[int] = (),
        n_covariate_embed: int = 8,
        decode_labels: bool = True,
        label_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not n_hidden:
            raise ValueError("n_hidden needs at least one layer width")
        if likelihood not in ("nb", "zinb", "gaussian"):
            raise ValueError(f"likelihood must be 'nb', 'zinb' or 'gaussian', got {likelihood!r}")
        if prior not in ("conditional", "standard"):
            raise ValueError(f"prior must be 'conditional' or 'standard', got {prior!r}")
        if dispersion not in ("gene", "gene-label"):
            raise ValueError(f"dispersion must be 'gene' or 'gene-label', got {dispersion!r}")
        if dispersion_fit not in ("learned", "moments"):
            raise ValueError(
                f"dispersion_fit must be 'learned' or 'moments', got {dispersion_fit!r}"
            )
        if dispersion_fit == "moments" and likelihood != "nb":
            raise ValueError(
                f"dispersion_fit='moments' needs likelihood 'nb', got {likelihood!r}"
            )
        self.n_input = n_input
        self.n_labels = n_labels
        self.n_latent = n_latent
        self.likelihood = likelihood
        self.prior_kind = prior
        self.dispersion = dispersion
        self.dispersion_fit = dispersion_fit
        self.log_target_sum = math.log(target_sum)
        self.n_covariate_levels = [int(n) for n in n_covariate_levels]
        n_cond = n_embed + n_covariate_embed * len(self.n_covariate_levels)  # type + covariates
        self.decode_labels = bool(decode_labels)
        # the share of training cells decoded with ``any_type`` in place of their type
        self.label_dropout = float(label_dropout) if decode_labels else 0.0

        self.embed = nn.Embedding(n_labels, n_embed)
        self.encoder = mlp(n_input + n_cond, n_hidden, dropout_rate)
        self.z_mean = nn.Linear(n_hidden[-1], n_latent)
        self.z_log_scale = nn.Linear(n_hidden[-1], n_latent)
        # no dropout in the decoder (as scVI): dropout noise on the mean would be absorbed by a
        # lower inverse dispersion, and generated cells would get too many zeros
        n_dec = n_latent + n_cond - (0 if decode_labels else n_embed)
        self.decoder = mlp(n_dec, list(reversed(n_hidden)), decoder_dropout_rate)
        # softmax logits (nb, zinb) or the Gaussian mean of log-normalised values
        self.px_scale_decoder = nn.Linear(n_hidden[0], n_input)
        self.px_dropout_decoder = nn.Linear(n_hidden[0], n_input) if likelihood == "zinb" else None
        r_shape = (n_input,) if dispersion == "gene" else (n_labels, n_input)
        # log theta (nb, zinb) or log scale; with dispersion_fit "moments" set after training
        self.px_r = nn.Parameter(torch.zeros(r_shape), requires_grad=dispersion_fit == "learned")
        if prior == "conditional":
            self.prior_mean = nn.Parameter(torch.zeros(n_labels, n_latent))
            self.prior_log_scale = nn.Parameter(torch.zeros(n_labels, n_latent))
        # per-type log-library model, fitted by the caller (set_library_model)
        self.register_buffer("library_log_mean", torch.zeros(n_labels))
        self.register_buffer("library_log_std", torch.ones(n_labels))
        # per-type Gaussian mixture over (z, log library), fitted by the caller to the training
        # cells' posteriors and observed library sizes after training (set_latent_mixture):
        # weights, means and lower-triangular scale factors; until then N(0, I) and library 1
        self.register_buffer("mixture_weight", torch.ones(n_labels, 1))
        self.register_buffer("mixture_mean", torch.zeros(n_labels, 1, n_latent + 1))
        self.register_buffer("mixture_chol", torch.eye(n_latent + 1).repeat(n_labels, 1, 1, 1))
        # per-type gene scale of the decoded NB mean when generating (set_gene_scale); ones
        # until fitted, and never applied to the training loss
        self.register_buffer("gene_scale", torch.ones(n_labels, n_input))
        # per-type zero inflation of generated NB counts (set_zero_inflation): zeros until
        # fitted, never in the training loss; the mean is kept (the NB's is raised to match)
        self.register_buffer("zero_inflation", torch.zeros(n_labels, n_input))
        self._inflated_at: tuple | None = None  # the buffer _inflated last read
        self._inflated_any = False
        self._logits: torch.Tensor | None = None  # logit(zero_inflation) (_zero_logits)
        # per (type, covariate level) gene scale of generated NB means (set_level_scale):
        # level_rows[type, offset of the covariate + level] is a row of level_scale, row 0 ones
        # (no factor: levels a type's training cells lacked, and every model without covariates)
        n_levels = sum(int(n) for n in n_covariate_levels)
        self.register_buffer("level_rows", torch.zeros(n_labels, n_levels, dtype=torch.long))
        self.register_buffer("level_scale", torch.ones(1, n_input))
        offsets = [0, *self.n_covariate_levels[:-1]]  # each covariate's first column there
        self.register_buffer("level_offsets", torch.tensor(offsets).cumsum(0), persistent=False)
        # created last: a module without covariates starts from the same random weights as before
        self.covariate_embed = nn.ModuleList(
            nn.Embedding(n, n_covariate_embed) for n in self.n_covariate_levels)
        # the decoder's "some type" input (label dropout): the type then comes from z alone
        self.any_type = nn.Parameter(torch.zeros(n_embed)) if self.label_dropout > 0 else None

    def condition(self, y: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        """The embedded type and covariates, ``(B, n_embed + n_covariate_embed * k)``, from type
        codes ``y`` ``(B,)`` and covariate codes ``c`` ``(B, k)`` (None without covariates)."""
        if not self.covariate_embed:
            return self.embed(y)
        if c is None or c.shape[-1] != len(self.covariate_embed):
            raise ValueError(f"this module conditions on {len(self.covariate_embed)} covariates; "
                             "give their codes as c, shape (B, k)")
        return torch.cat([self.embed(y), *(e(c[:, i]) for i, e in enumerate(self.covariate_embed))],
                         dim=-1)

    # ------------------------------------------------------------------------------------------

    def normalise(self, x: torch.Tensor, library: torch.Tensor) -> torch.Tensor:
        """``log1p(x / library * target_sum)``; ``x`` is ``(B, n_input)``, ``library`` ``(B,)``."""
        return torch.log1p(x * self._size_factor(library)[:, None])  # (B, n_input)

    def sparse_encoding(self, x: torch.Tensor) -> bool:
        """Whether the encoder's first layer may read only the non-zero counts of the batch
        ``x`` (:attr:`sparse_input`, on the CPU, in float32); it still takes the dense layer
        for a batch above ``_sparse_input.MAX_DENSITY`` non-zero."""
        return self.sparse_input and x.device.type == "cpu" and not self._low_precision()

    def _size_factor(self, library: torch.Tensor) -> torch.Tensor:
        """``target_sum / library`` (``(B,)``; a library below 1 counts as 1)."""
        return torch.exp(self.log_target_sum - torch.log(library.clamp_min(1.0)))

    def prior(self, y: torch.Tensor) -> Normal:
        """``p(z | y)`` for integer codes ``y`` (``(B,)``): batch shape ``(B, n_latent)``."""
        if self.prior_kind == "standard":
            zeros = torch.zeros(y.shape[0], self.n_latent, device=y.device)
            return Normal(zeros, torch.ones_like(zeros), validate_args=False)
        log_scale = self.prior_log_scale[y].clamp(*_LOG_SCALE_RANGE)  # (B, n_latent)
        return Normal(self.prior_mean[y], torch.exp(log_scale), validate_args=False)

    def inference(
        self, x: torch.Tensor, y: torch.Tensor, library: torch.Tensor,
        c: torch.Tensor | None = None, *, found: Nonzero | None = None,
    ) -> tuple[Normal, torch.Tensor]:
        """Posterior ``q(z | x, y)`` and a reparameterised sample.

        Parameters
        ----------
        x
            Raw counts, shape ``(B, n_input)``.
        y
            Integer type codes, shape ``(B,)``.
        library
            Total counts per cell, shape ``(B,)``.
        c
            Integer covariate codes, shape ``(B, k)`` (None without covariates).
        found
            The non-zero counts of ``x`` (:func:`._sparse_input.nonzero`) where the caller found
            them already; else the sparse input layer finds them.
        """
        with self._mixed():
            cond = self.condition(y, c)
            first = None
            if self.sparse_encoding(x):
                first = sparse_first_layer(x if found is None else found,
                                           self._size_factor(library), cond, self.encoder[0])  # fmt: skip
            if first is None:
                h = self.encoder(torch.cat([self.normalise(x, library), cond], dim=-1))
            else:  # the same layer, from the non-zero counts only
                h = self.encoder[1:](first)
            qz_m = self.z_mean(h).float()  # (B, n_latent)
            qz_log_scale = self.z_log_scale(h).float().clamp(*_LOG_SCALE_RANGE)  # (B, n_latent)
        # unchecked: weights a diverging fit made NaN give a NaN loss, which the training loop
        # answers (the best finite epoch kept, or what to lower), not torch's ValueError
        qz = Normal(qz_m, torch.exp(qz_log_scale), validate_args=False)
        return qz, qz.rsample()

    def generative(self, z: torch.Tensor, y: torch.Tensor, library: torch.Tensor,
                   c: torch.Tensor | None = None, *, calibrated: bool = True,
                   one_type: bool = False, any_type: bool = False,
                   unseen_level: bool = False) -> Distribution:  # fmt: skip
        """``p(x | z, y, c, library)``: batch shape ``(B, n_input)``.

        For ``"gaussian"`` the distribution is over ``log1p(x / library * target_sum)``. With
        ``calibrated`` (generation) the NB mean is multiplied by the type's ``gene_scale`` and
        the type's ``zero_inflation`` is applied (the mean kept); the training loss decodes
        without them. With ``one_type`` every row
        has type ``y[0]`` (generation and the sampler's fit decode a type at a time): the
        per-type tables are read as one row that broadcasts (``theta`` is ``(1, n_input)``)
        instead of gathered to ``(B, n_input)``; the distribution is the same. With
        ``any_type`` (a module trained with ``label_dropout``) the decoder sees its "some type"
        input instead of the type's embedding: the type comes from ``z``, and a covariate's
        effect is what the decoder learned at that state over every type (a combination no
        training cell had); the per-type tables (dispersion, gene scale) are still ``y``'s.
        With ``unseen_level`` (a covariate level no training cell of the type had) the type's
        zero inflation is left out: it was solved for the shares of zeros of the type's cells
        at their own levels, and a condition that switches genes on or off changes those
        shares (an interferon response: a held-out combination's cells came out closer to
        its real ones without it, with every decoder).
        """
        # generation (no gradient, calibrated): the NB mean in row blocks (:meth:`_nb_rate`)
        fused = (calibrated and self.likelihood != "gaussian" and not torch.is_grad_enabled()
                 and not self._low_precision())
        h, out = self._decode(z, y, c, any_type=any_type, with_head=not fused)
        rows = y[:1] if one_type else y
        if self.dispersion == "gene":
            px_r = torch.exp(self.px_r.clamp(*PX_R_RANGE))  # (n_input,)
        elif one_type or not torch.is_grad_enabled():  # the rows' exp, not the whole table's
            px_r = torch.exp(self.px_r[rows].clamp(*PX_R_RANGE))  # (B | 1, n_input)
        else:  # training: one gather, after the per-type table's exp (its gradient summed so)
            px_r = torch.exp(self.px_r.clamp(*PX_R_RANGE))[rows]  # (B, n_input)
        if self.likelihood == "gaussian":
            return Normal(out, px_r.expand_as(out), validate_args=False)
        zi = self.px_dropout_decoder(h) if self.px_dropout_decoder is not None else None
        if fused:
            factor = self.gene_scale[rows]  # (B | 1, n_input); ones until fitted
            if c is not None and self.level_scale.shape[0] > 1:
                factor = factor * self._level_factor(y, c)  # (B, n_input)
            if zi is None and not unseen_level and self._inflated():  # as below
                pi = self.zero_inflation[rows]
                factor = factor / (1.0 - pi)
                zi = self._zero_logits(rows)
            return NegativeBinomial(self._nb_rate(h, library, factor), px_r, zi_logits=zi)
        px_scale = torch.softmax(out, dim=-1)  # (B, n_input)
        if calibrated:
            px_scale = px_scale * self.gene_scale[rows]  # (B, n_input); ones until fitted
            if c is not None and self.level_scale.shape[0] > 1:
                px_scale = px_scale * self._level_factor(y, c)
        px_rate = library[:, None] * px_scale  # (B, n_input)
        if calibrated and zi is None and not unseen_level and self._inflated():
            # extra zeros with probability pi, the others drawn at mean mu / (1 - pi): the
            # mean stays mu (ones where nothing was fitted: the same draws as without)
            pi = self.zero_inflation[rows]  # (B | 1, n_input)
            px_rate = px_rate / (1.0 - pi)
            zi = self._zero_logits(rows)  # (B | 1, n_input): -inf where pi = 0, no extra zeros
        return NegativeBinomial(px_rate, px_r, zi_logits=zi, scale=px_scale)

    def _inflated(self) -> bool:
        """``zero_inflation.any()``, remembered until the buffer changes (another tensor, or
        written in place: its version): a chunk of generated cells asked it of the whole
        ``(n_labels, n_input)`` table, and generation of many small chunks (a type's cells at
        each of hundreds of donors) spent a quarter of its time there."""
        table = self.zero_inflation
        key = (table.data_ptr(), table._version, table.device, table.shape)
        if self._inflated_at != key:
            self._inflated_at, self._inflated_any = key, bool(table.any())
            self._logits = None
        return self._inflated_any

    def _zero_logits(self, rows: torch.Tensor) -> torch.Tensor:
        """``logit(zero_inflation[rows])``, the table's logits taken once while the buffer is
        unchanged (:meth:`_inflated`, asked first): the logit of a probability of zero (-inf)
        takes a slow path, a hundred times a positive one's, and a type's row of thousands of
        genes without inflation cost a chunk of a few cells 3 ms (a fifth of generation)."""
        self._inflated()
        if self._logits is None:
            self._logits = torch.logit(self.zero_inflation)  # (n_labels, n_input)
        return self._logits[rows]

    #: rows of :meth:`_nb_rate`'s blocks on the CPU: a block's logits (256 x 2,000 genes: 2 MB)
    #: stay in cache through the passes that turn them into means
    RATE_BLOCK_ROWS: ClassVar[int] = 256

    def _nb_rate(self, h: torch.Tensor, library: torch.Tensor,
                 factor: torch.Tensor) -> torch.Tensor:  # fmt: skip
        """``library * softmax(head(h)) * factor``, ``(B, n_input)``, without a gradient.

        On the CPU a block of :attr:`RATE_BLOCK_ROWS` rows at a time goes through the head's
        matmul, the softmax and both scalings in place, so the passes over its logits read the
        cache instead of memory (at 2,000 genes on two cores, as passes over the whole chunk
        they took a third of the decoder's time; in blocks a tenth); the softmax is torch's
        fused kernel (max, exponentials and sum a row at a time: at 2,000 genes, one thread,
        its passes and the scalings took 1.1 µs a cell against 1.9 µs as separate
        operations); a GPU takes every row at once. The same means as the unfused path, to float rounding.
        """
        head = self.px_scale_decoder
        out = torch.empty(len(h), head.out_features, device=h.device)  # (B, n_input)
        step = self.RATE_BLOCK_ROWS if h.device.type == "cpu" else max(len(h), 1)
        weight = head.weight.t()  # (n_hidden, n_input), a view
        for start in range(0, len(h), step):
            block = out[start:start + step]
            torch.addmm(head.bias, h[start:start + step], weight, out=block)
            torch.softmax(block, dim=1, out=block)  # one fused kernel, each row in cache
            block.mul_(library[start:start + step, None])
            block.mul_(factor if factor.shape[0] == 1 else factor[start:start + step])
        return out

    def _level_factor(self, y: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """The product of each covariate level's gene scale for the type, ``(B, n_input)``
        (ones for a level without one: codes below zero, or levels the type's training cells
        lacked)."""
        col = (c.clamp_min(0) + self.level_offsets).long()  # (B, k) columns of level_rows
        idx = torch.where(c >= 0, self.level_rows[y[:, None], col], 0)  # (B, k) table rows
        factor = self.level_scale[idx[:, 0]]
        for j in range(1, idx.shape[1]):
            factor = factor * self.level_scale[idx[:, j]]
        return factor  # (B, n_input)

    def _decode(self, z: torch.Tensor, y: torch.Tensor, c: torch.Tensor | None, *,
                any_type: bool = False, with_head: bool = True,
                ) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
        """The decoder's last hidden layer and its output head (logits for the NB's; None
        without ``with_head``)."""
        cond = self.condition(y, c)  # (B, n_embed + n_covariate_embed * k)
        if self.any_type is not None and (any_type or self.training):
            n = self.embed.embedding_dim
            drop = (torch.ones(len(z), 1, dtype=torch.bool, device=z.device) if any_type else
                    torch.rand(len(z), 1, device=z.device) < self.label_dropout)
            cond = torch.cat([torch.where(drop, self.any_type, cond[:, :n]), cond[:, n:]], -1)
        elif any_type:
            raise ValueError("decoding with any_type needs a module trained with label_dropout")
        if not self.decode_labels:
            cond = cond[:, self.embed.embedding_dim:]  # the covariates only
        if not self._low_precision():
            h = self.decoder(torch.cat([z, cond], dim=-1))  # (B, n_hidden[0])
            return h, self.px_scale_decoder(h) if with_head else None
        head = self.px_scale_decoder
        with self._mixed():
            h = self.decoder(torch.cat([z, cond], dim=-1))
            hw = F.linear(h, head.weight)  # (B, n_input), bfloat16
        # the bias (each gene's level, large) is added in float32: rounded to bfloat16 with the
        # product, the logits lost enough that the training loss of a simulated atlas was 1%
        # higher; this way it matches float32's
        return h.float(), torch.add(hw, head.bias)  # float32 out, one pass

    def _mixed(self) -> contextlib.AbstractContextManager:
        """:func:`torch.autocast` to :attr:`compute_dtype` on this module's device while it
        trains; nothing in float32 or in eval mode."""
        if not self._low_precision():
            return contextlib.nullcontext()
        return torch.autocast(self.px_r.device.type, dtype=self.compute_dtype)

    def _low_precision(self) -> bool:
        """Whether the dense layers multiply in :attr:`compute_dtype` now: in training mode only.
        Generation, the sampler's fit and the selection checks decode in float32: in bfloat16
        each cell's logits carry a rounding noise of their own (seed 0, gene-level two-sample
        AUC of the generated cells, bfloat16 everywhere against training only: kidney 0.593
        against 0.580, pancreas 0.704 against 0.596)."""
        return self.training and self.compute_dtype != torch.float32

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, library: torch.Tensor,
        c: torch.Tensor | None = None,
    ) -> tuple[Normal, torch.Tensor, Distribution]:
        """Encode, sample and decode: returns ``(qz, z, px)``."""
        qz, z = self.inference(x, y, library, c)
        return qz, z, self.generative(z, y, library, c)

    def loss(
        self, x: torch.Tensor, y: torch.Tensor, library: torch.Tensor,
        c: torch.Tensor | None = None, *, kl_weight: float = 1.0,
        csr: sp.csr_matrix | None = None,
    ) -> LossOutput:
        """Negative ELBO averaged over the batch; ``kl_weight`` scales
        ``KL(q(z|x,y,c) || p(z|y))``. The decoder's mean is not calibrated (``gene_scale``
        is for generation only). ``csr``: the same counts as ``x``, as CSR, where the caller
        sliced the batch from CSR (on the CPU its non-zero counts are read from it rather
        than found in ``x``)."""
        # the non-zero counts, found once for the sparse input layer and the count likelihood
        # (the Gaussian one reads every normalised value)
        found = None
        if x.device.type == "cpu" and (self.likelihood != "gaussian" or self.sparse_encoding(x)):
            found = nonzero(x) if csr is None else Nonzero.from_csr(csr)
        qz, z = self.inference(x, y, library, c, found=found)
        if self.dispersion_fit == "moments":  # Poisson at library * softmax: the logits do
            reconst = -log_poisson_softmax(x, self._decode(z, y, c)[1], library, found)  # (B,)
        else:
            px = self.generative(z, y, library, c, calibrated=False)
            if isinstance(px, NegativeBinomial):
                reconst = -px.log_prob_cells(x, found)  # (B,)
            else:  # Gaussian, on the normalised values
                reconst = -px.log_prob(self.normalise(x, library)).sum(dim=-1)
        kl = kl_divergence(qz, self.prior(y)).sum(dim=-1)  # (B,)
        return LossOutput.from_cells(reconst, kl, kl_weight)

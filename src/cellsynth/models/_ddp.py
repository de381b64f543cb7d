"""The process group of a data-parallel CVAE fit (:mod:`.distributed`): which device a rank
uses, joining the others (in bounded time, said), and the collectives the fit needs (gather,
weighted sums, the latent mixture broadcast from rank 0)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from ..config import CVAEConfig
from ..config_rules import fix_hint
from ..errors import CellsynthError, ConfigError
from ..runtime import cpu_cores
from . import _training as tr

logger = logging.getLogger("cellsynth.models.distributed")


def all_gather(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Concatenation of every rank's 1-d tensor (lengths may differ), in rank order."""
    if dist.get_world_size() == 1:
        return t
    size = torch.tensor([len(t)], device=device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    buf = torch.zeros(longest, dtype=t.dtype, device=device)
    buf[: len(t)] = t.to(device)
    parts = [torch.zeros_like(buf) for _ in sizes]
    dist.all_gather(parts, buf)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes, strict=True)]).cpu()


def weighted_sums(values: Sequence[float], device: torch.device) -> list[float]:
    """Sum over ranks of each value (already weighted by the rank's share), equal on all ranks."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    dist.broadcast(t, src=0)  # identical bits everywhere: every rank takes the same stop decision
    return t.cpu().tolist()


def broadcast_mixture(module: nn.Module, device: torch.device) -> None:
    """Give every rank rank 0's latent mixture (its component count may differ from theirs),
    gene scale, zero inflation and NB dispersion (fitted with the mixture when ``dispersion_fit = "moments"``)."""
    if dist.get_world_size() == 1:
        return
    k = torch.tensor([module.mixture_weight.shape[-1]], device=device)
    dist.broadcast(k, src=0)
    n_labels, d = module.n_labels, module.n_latent + 1  # (z, log library)
    weight = module.mixture_weight.to(device)
    mean, chol = module.mixture_mean.to(device), module.mixture_chol.to(device)
    if dist.get_rank() != 0:
        weight = torch.zeros(n_labels, int(k.item()), device=device)
        mean = torch.zeros(n_labels, int(k.item()), d, device=device)
        chol = torch.zeros(n_labels, int(k.item()), d, d, device=device)
    for t in (weight, mean, chol):
        dist.broadcast(t, src=0)
    module.set_latent_mixture(weight, mean, chol)
    # rank 0's dispersion, gene scale (ones where the likelihood has none) and zero inflation
    # (zeros where none was fitted)
    for table, set_table in ((module.px_r, module.set_dispersion),
                             (module.gene_scale, module.set_gene_scale),
                             (module.zero_inflation, module.set_zero_inflation)):
        table = table.detach().to(device).clone()
        dist.broadcast(table, src=0)
        set_table(table)


def rank_device(cfg: CVAEConfig) -> torch.device:
    """CUDA device ``LOCAL_RANK`` when the config resolves to CUDA, else the CPU."""
    device = tr.resolve_device(cfg.device)
    if device.type != "cuda":
        return device
    index = int(os.environ.get("LOCAL_RANK", device.index or 0))
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def check_type_only(cfg: CVAEConfig) -> None:
    """Refuse ``cvae.covariates``: the data-parallel fit conditions on the cell type only, and
    trained without them, saving a model whose config named covariates it had no design for
    (its load then said the file was edited: the training lost)."""
    if cfg.covariates:
        raise ConfigError(f"cvae.covariates = {list(cfg.covariates)} with cvae.distributed: "
                          "the data-parallel fit conditions on the cell type only; set "
                          "cvae.distributed = false to condition on the covariates, or "
                          "cvae.covariates = [] to train data-parallel on the type alone")


def check_processes(cfg: CVAEConfig) -> None:
    """Refuse ``cvae.nproc_per_node`` ranks this machine cannot give one each of: a CUDA
    device (a rank past the last one failed in ``torch.cuda.set_device`` with a traceback), or
    on the CPU more than 4 per core (each a process holding torch and its shard: they filled
    the memory); more than one per core is a WARNING (they share the cores, no faster)."""
    n = cfg.nproc_per_node
    if tr.resolve_device(cfg.device).type == "cuda":
        gpus = torch.cuda.device_count()
        if n > gpus:
            raise ConfigError(f"cvae.nproc_per_node = {n} ranks on {gpus} CUDA device(s): each "
                              f"rank trains on a device of its own; give at most {gpus}: "
                              f"{fix_hint('cvae.nproc_per_node')}")
        return
    cores = cpu_cores()
    if n > 4 * cores:
        raise ConfigError(f"cvae.nproc_per_node = {n} training processes on {cores} cores: "
                          f"each is a process of its own holding torch; give at most {cores} "
                          "(or run torchrun across nodes, docs/SCALING.md): "
                          f"{fix_hint('cvae.nproc_per_node')}")
    if n > cores:
        logger.warning("cvae.nproc_per_node = %d training processes on %d cores: they share "
                       "the cores, no faster than %d", n, cores, cores)


#: seconds a rank waits for the others to join (torch's default is 30 minutes, in silence)
JOIN_SECONDS = 600


def init_process_group(device: torch.device) -> bool:
    """Join (or form) the process group: ``nccl`` on CUDA, ``gloo`` on the CPU.

    Under ``torchrun`` (``WORLD_SIZE`` set) the group comes from the environment; otherwise a
    one-process group is formed in memory. Returns whether this call created it.
    """
    if dist.is_initialized():
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    if "WORLD_SIZE" in os.environ:
        where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
        logger.info("rank %s of %s: joining the others at %s (at most %d s)",
                    os.environ.get("RANK", "?"), os.environ["WORLD_SIZE"], where, JOIN_SECONDS)
        try:
            dist.init_process_group(backend, device_id=device if device.type == "cuda" else None,
                                    timeout=timedelta(seconds=JOIN_SECONDS))
        except (RuntimeError, ValueError) as exc:  # torch's DistStoreError is a RuntimeError
            raise CellsynthError(
                f"rank {os.environ.get('RANK', '?')} could not join the other ranks of "
                f"{os.environ['WORLD_SIZE']} at {where} within {JOIN_SECONDS} s "
                f"({str(exc).splitlines()[0][:160]}): start every rank with the same "
                "MASTER_ADDR and MASTER_PORT (torchrun --nnodes/--nproc-per-node on each node)"
            ) from None
    else:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    return True

r"""Data-parallel VAE training through ``torch.distributed``: ``torchrun --nproc_per_node=N -m
flowvi vae train ...``.

Every rank builds the same model from the same seed and walks the same global batch order;
each takes a contiguous shard of every global batch, and DistributedDataParallel averages the
gradients. Two details make the result equal (to float rounding) to one process training on
the whole global batch:

1. Unequal shards. The loss is a mean over the global batch of ``B`` images, and DDP averages
   the ranks' gradients (sum ÷ N). Rank ``r`` with shard :math:`S_r` therefore minimizes
   :math:`-\frac{N}{B} \sum_{i \in S_r} \mathcal L_i`, whose average over ranks is
   :math:`-\frac1B \sum_i \mathcal L_i` whatever the shard sizes (a plain per-rank mean would
   weight the images of a smaller shard more: the last batch of an epoch, or ``B`` not a
   multiple of ``N``).
2. The same random numbers. Every rank draws the standard-normal noise of the whole global
   batch, ``(samples, B, d)``, from the same generator state (and the dynamic binarization of
   the whole batch), then keeps its shard, so each image meets the noise it would meet in a
   single process (:meth:`flowvi.vae.VAE.terms`, ``noise``).

The backend is gloo on CPU and NCCL on CUDA (each rank on ``cuda:LOCAL_RANK``). Only rank 0
writes the run directory, checkpoints and the progress bar; every rank evaluates the same
validation loss, so all stop together.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from flowvi.vae.model import VAE


def world_size() -> int:
    """The number of processes of a ``torchrun`` launch (``WORLD_SIZE``; 1 outside one).

    Raises:
        ValueError: if ``WORLD_SIZE`` is set but not a positive integer.
    """
    value = os.environ.get("WORLD_SIZE", "1")
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"WORLD_SIZE must be a positive integer, got {value!r}")
    return int(value)


@contextmanager
def _sigint_to_main_thread() -> Iterator[None]:
    """The threads started inside (gloo's I/O and worker threads, the process group's and
    DDP's) block SIGINT, so that a Ctrl-C reaches this process's main thread only.

    A Ctrl-C delivered to a thread of gloo's that waits in a system call interrupts that call,
    and a collective in flight (DDP's gradient all-reduce) then never completes on any rank: a
    hang until torchrun kills the ranks. The main thread sets the flag that stops training at
    the next step (:func:`flowvi.train.train`), which every rank then agrees on.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class _Bound(nn.Module):
    """The per-image training bound of a VAE as one module, so that DDP sees its forward."""

    def __init__(self, vae: VAE) -> None:
        super().__init__()
        self.vae = vae

    def forward(
        self,
        x: Tensor,
        noise: Tensor,
        *,
        objective: str,
        samples: int,
        beta: float | Tensor,
        analytic: bool = True,
    ) -> Tensor:
        if objective == "iwae":
            return self.vae.iwae(x, samples, noise=noise)
        return self.vae.elbo(x, samples=samples, beta=beta, noise=noise, analytic=analytic)


@dataclass
class DataParallel:
    """This process's place in a data-parallel run (see the module's docstring).

    Create it with :meth:`start` before building the model; ``rank``, ``world`` (N) and the
    ``device`` of this rank.
    """

    rank: int
    world: int
    device: torch.device
    owns_group: bool

    @classmethod
    def start(cls, device: torch.device) -> DataParallel:
        """Join (or create) the process group of a ``torchrun`` launch.

        ``device`` is the run's device: CPU ranks use gloo, CUDA ranks NCCL on
        ``cuda:LOCAL_RANK``.

        Raises:
            ValueError: if CUDA is asked for but there are fewer GPUs than local ranks.
        """
        rank = int(os.environ.get("RANK", "0"))
        if device.type == "cuda":
            local = int(os.environ.get("LOCAL_RANK", "0"))
            if local >= torch.cuda.device_count():
                raise ValueError(
                    f"local rank {local} needs a GPU, but only {torch.cuda.device_count()} exist"
                )
            device = torch.device("cuda", local)
            torch.cuda.set_device(device)
        owns = not dist.is_initialized()
        if owns:
            with _sigint_to_main_thread():
                dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(rank=rank, world=dist.get_world_size(), device=device, owns_group=owns)

    @property
    def main(self) -> bool:
        """Whether this is rank 0, the one that writes."""
        return self.rank == 0

    def shard(self, n: int) -> slice:
        """This rank's contiguous share of ``n`` items: sizes differ by at most one, the first
        ``n mod N`` ranks taking the extra item (a rank may get none when ``n < N``)."""
        size, extra = divmod(n, self.world)
        start = self.rank * size + min(self.rank, extra)
        return slice(start, start + size + (self.rank < extra))

    def wrap(self, model: VAE) -> DistributedDataParallel:
        """The model's bound wrapped in DDP (parameters broadcast from rank 0)."""
        ids = [self.device.index] if self.device.type == "cuda" else None
        with _sigint_to_main_thread():
            return DistributedDataParallel(_Bound(model), device_ids=ids)

    def loss(
        self,
        module: DistributedDataParallel,
        x: Tensor,
        *,
        objective: str,
        samples: int,
        beta: float | Tensor,
        analytic: bool = True,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The negative bound of this rank's shard of the global batch ``x: (B, D)``.

        Its gradient, averaged by DDP, is that of the global batch's mean negative bound; its
        value is that global mean itself (one all-reduce of a scalar), so that the training
        trace, the progress bar and the NaN guard agree on every rank.
        """
        n, d = len(x), module.module.vae.d
        part = self.shard(n)
        noise = torch.randn(samples, n, d, dtype=x.dtype, device=x.device)[:, part]
        options = {"objective": objective, "samples": samples, "beta": beta, "analytic": analytic}
        bound = module(x[part], noise, **options)
        local = -bound.sum() * (self.world / n)
        total = local.detach().clone()
        dist.all_reduce(total)
        total = total / self.world
        return local + (total - local.detach()), {"bound per image (this rank)": bound}

    def barrier(self) -> None:
        """Wait for every rank (e.g. before reading what rank 0 wrote)."""
        dist.barrier()

    def close(self) -> None:
        """Leave the process group if :meth:`start` created it."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()

"""Reverse-KL fitting of a flow to an unnormalized density: the free energy, with annealing."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from flowvi._checks import check_dim
from flowvi.flows import NormalizingFlow
from flowvi.fused import BatchLoss
from flowvi.objectives import beta_schedule, free_energy
from flowvi.targets import Target, as_target
from flowvi.train import DropPolicy, train


def fit(
    flow: NormalizingFlow,
    target: Target | Callable[[Tensor], Tensor],
    *,
    iters: int = 10_000,
    batch_size: int = 256,
    lr: float = 3e-3,
    optimizer: str = "adam",
    schedule: str = "constant",
    anneal: float = 0.0,
    beta0: float = 0.01,
    directory: str | Path | None = None,
    resume: bool = False,
    checkpoint_every: int = 1000,
    progress: bool = True,
    compile: bool = False,
    drop: DropPolicy | None = None,
    threads: int | None = None,
) -> Tensor:
    r"""Fit ``flow`` to ``target`` by minimizing the (annealed) free energy, the reverse KL.

    At iteration :math:`t` the loss is :math:`F_t = E_q[\ln q(z) - \beta_t \ln \tilde p(z)]` on
    ``batch_size`` reparameterized samples; :math:`-F` is the ELBO when :math:`\beta_t = 1`.
    With ``anneal > 0``, :math:`\beta_t = \min(1, \beta_0 + t/T)` with
    :math:`T = \mathrm{anneal} \cdot \mathrm{iters}` (Rezende & Mohamed 2015, Eq. 20, with the
    :math:`\beta_t` their printed equation drops), so β reaches 1 within the run, by
    construction. ``flowvi fit`` anneals over half the run for the energies U1–U4 (the paper's
    protocol: planar K = 32 then fits U1 to KL(q‖p) ≈ 0.01–0.03 nats on every seed tried);
    the default here is no annealing, which real posteriors need: a q spread by a small β
    wanders where a model's log density is undefined (see ``benchmarks/RESULTS.md``).

    ``schedule``: the learning rate stays ``lr`` (``"constant"``) or decays to 0 along a
    cosine (``"cosine"``, :func:`flowvi.train.train`): with a subsampled model's noisy
    gradients, the decay lets q settle into a posterior far narrower than the steps of a
    constant rate.

    ``target`` is a :class:`flowvi.targets.Target`, a Pyro model's
    (:func:`flowvi.pyro.target`), or any function ``log_p(z: (batch, d)) -> (batch,)`` giving
    an unnormalized log density in nats (its dimension is the flow's).

    Samples whose target or flow log density is NaN or infinite (outside the target's support,
    an overflow) are left out of that step's estimate, their gradient zeroed, and counted; the
    fit stops with :class:`flowvi.train.NonFiniteLossError` only when a whole batch is
    non-finite, or more than half of it for 100 iterations in a row (``drop``, a
    :class:`flowvi.train.DropPolicy`, sets the limits; after the fit its ``dropped`` holds the
    count per iteration, and a warning gives the total). This keeps a fit alive through
    occasional bad samples; it cannot pull q back from a region where the target is undefined
    (the samples there carry no gradient), so a q that moves into one stops at those limits.

    ``compile=True`` (Adam only) runs each step, from the samples to the parameter update, as
    one compiled graph (:class:`flowvi.fused.FusedAdamStep`): 4.6× faster steps for planar
    K = 32, after a compile of about a minute and a half on a CPU (seconds when inductor's
    cache holds the graph, e.g. for another seed), so it pays off for long or repeated fits. The
    samples then come from inductor's generator: reproducible under ``torch.manual_seed``,
    but not the eager run's. Flows that cannot be one graph train eagerly, with a warning.

    ``threads``: CPU threads while fitting (default :func:`flowvi.threads.get_num_threads`,
    one; see :mod:`flowvi.threads`).

    Returns:
        the loss trace :math:`F_t`, shape ``(iters,)``, in nats.

    Raises:
        ValueError: for a target whose dimension differs from the flow's, ``anneal`` outside
            ``[0, 1)``, or other invalid settings.
        flowvi.train.NonFiniteLossError: when the samples' log densities are non-finite beyond
            the limits above; the message names the iteration.

    Example:
        >>> import torch, flowvi
        >>> _ = torch.manual_seed(0)
        >>> flow = flowvi.flows.build("affine", 2)
        >>> trace = flowvi.fit(flow, lambda z: -0.5 * (z - 1).pow(2).sum(-1), iters=500,
        ...                    lr=0.05, progress=False)
        >>> flow.sample((4000,)).mean(0).sub(1).abs().max().item() < 0.1
        True
    """
    d = flow.event_shape[-1]
    target = as_target(target, dim=d)
    if target.dim != d:
        raise ValueError(f"target {target.name} is {target.dim}-dimensional but the flow is {d}-D")
    check_dim(batch_size, "batch_size")
    anneal_iters = annealing_iters(anneal, iters)
    beta_schedule(0, beta0=beta0, anneal_iters=anneal_iters)  # validates the schedule
    drop = DropPolicy() if drop is None else drop

    def inverse_temperature(t: int) -> Tensor:  # a tensor: a compiled step takes it as input
        beta = beta_schedule(t, beta0=beta0, anneal_iters=anneal_iters)
        return torch.tensor(beta, dtype=torch.float64)

    def loss(beta: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        x, log_q = flow.rsample_and_log_prob((batch_size,))
        log_p = target.log_prob(finite_gradient(x))
        kept = torch.isfinite(log_p) & torch.isfinite(log_q)
        return free_energy(log_q, log_p, beta, kept=kept), {
            "target log density": log_p,
            "flow log density": log_q,
            "kept": kept,
        }

    trace = train(
        flow,
        BatchLoss(inverse_temperature, loss),
        iters=iters,
        lr=lr,
        optimizer=optimizer,
        schedule=schedule,
        directory=directory,
        resume=resume,
        checkpoint_every=checkpoint_every,
        progress=progress,
        desc=f"fit {target.name}",
        label="F_beta" if anneal_iters else "F",
        compile=compile,
        drop=drop,
        threads=threads,
    )
    total = int(drop.dropped.sum())
    if total:
        warnings.warn(
            f"{total} of {iters * batch_size} samples had a non-finite log density and were "
            f"left out of the estimates (at most {int(drop.dropped.max())} of {batch_size} "
            "in one iteration)",
            RuntimeWarning,
            stacklevel=2,
        )
    return trace


def annealing_iters(anneal: float, iters: int) -> int:
    """The length :math:`T` of the β schedule: ``anneal`` of ``iters``, rounded.

    Raises:
        ValueError: if ``anneal`` is outside ``[0, 1)`` (β must reach 1 before the end).
    """
    if not 0 <= anneal < 1:
        raise ValueError(
            f"anneal is the share of the iterations over which β rises to 1, in [0, 1); "
            f"got {anneal}"
        )
    return round(anneal * iters)


class _FiniteGradient(torch.autograd.Function):
    """The identity, whose backward zeroes the rows of the gradient that are not finite."""

    @staticmethod
    def forward(x: Tensor) -> Tensor:
        return x.clone()

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        pass

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return torch.where(torch.isfinite(grad).all(-1, keepdim=True), grad, 0)


def finite_gradient(x: Tensor) -> Tensor:
    """``x: (batch, d)`` unchanged, but a row of its gradient with a NaN or inf becomes 0.

    A sample left out of a loss (weight 0) still backpropagates ``0 · ∂ln p/∂x``, which is NaN
    where the target's derivative is infinite (``ln 0``): zeroing the row keeps the other
    samples' gradient. A sample kept in the loss with an infinite gradient loses it too.
    """
    return _FiniteGradient.apply(x)

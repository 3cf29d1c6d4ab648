"""Maximum-likelihood (forward-KL) fitting of a flow to data, with a validation split."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from flowvi._checks import check_dim
from flowvi.flows import NormalizingFlow
from flowvi.fused import BatchLoss
from flowvi.objectives import negative_log_likelihood
from flowvi.train import EarlyStopping, train

Augment = Callable[[Tensor], Tensor]


def check_data(x: Tensor, d: int, name: str = "data") -> None:
    """Raise ``ValueError`` unless ``x`` is a non-empty ``(n, d)`` floating tensor of finite values,
    naming the first bad row (0-based) and column."""
    if x.dim() != 2 or x.shape[1] != d or x.shape[0] == 0:
        raise ValueError(f"{name} must have shape (n >= 1, {d}), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {x.dtype}")
    bad = ~torch.isfinite(x)
    if bad.any():
        row, col = (int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"{name} has {int(bad.any(1).sum())} rows with NaN or inf; the first is row {row} "
            f"(column {col}: {x[row, col].item()})"
        )


@torch.no_grad()
def mean_nll(flow: NormalizingFlow, x: Tensor, *, batch_size: int = 10_000) -> Tensor:
    r""":math:`-\frac1n \sum_i \ln q(x_i)` in nats per example, in batches; a scalar tensor."""
    total = sum(-flow.log_prob(chunk).sum() for chunk in x.split(batch_size))
    return total / x.shape[0]


def fit_density(
    flow: NormalizingFlow,
    x_train: Tensor,
    x_valid: Tensor | None = None,
    *,
    iters: int = 5_000,
    batch_size: int = 256,
    lr: float = 1e-3,
    optimizer: str = "adam",
    schedule: str = "cosine",
    valid_every: int = 100,
    patience: int = 20,
    augment: Augment | None = None,
    directory: str | Path | None = None,
    resume: bool = False,
    checkpoint_every: int = 1000,
    progress: bool = True,
    compile: bool = False,
) -> tuple[Tensor, EarlyStopping | None]:
    r"""Fit ``flow`` to data by maximum likelihood: minimize the minibatch NLL
    :math:`-\frac1B \sum_{i \in \text{batch}} \ln q(x_i)` (the forward KL up to the data entropy).

    Minibatches are drawn uniformly with replacement; with ``batch_size >= n`` every iteration
    uses all the training data (full-batch, deterministic gradient descent). With ``x_valid``,
    the mean validation NLL is evaluated every ``valid_every`` iterations; training stops after
    ``patience`` evaluations without improvement and the flow keeps its best-validation parameters
    (:class:`flowvi.train.EarlyStopping`).

    Args:
        flow: the model, event shape ``(d,)``, mapping base samples to data space.
        x_train: ``(n, d)`` training data. ``x_valid``: ``(m, d)`` validation data.
        schedule: learning-rate schedule, ``"cosine"`` (decays to 0 at ``iters``: a lower
            final NLL than a constant rate at the same budget) or ``"constant"``
            (see :func:`flowvi.train.train`).
        augment: applied to each training minibatch ``(B, d)`` before ``log_prob``, e.g.
            uniform dequantization of integer pixel levels.
        compile: run each step (log density, gradient, NaN guard, Adam update) as one
            graph compiled by ``torch.compile`` (:class:`flowvi.fused.FusedAdamStep`): fewer, larger
            operations per step, which is what small flows are bound by. The first step then
            takes the compile time (tens of seconds on a CPU); worth it for long runs. Adam
            only. Falls back to eager execution, with a warning, where compiling fails (e.g. no
            C++ compiler for a CPU build).

    Returns:
        ``(trace, stopper)``: the training NLL per iteration in nats per example, shape
        ``(iters,)``, NaN after an early stop; and the early-stopping state (``None`` without
        validation data), whose ``trace`` lists ``(iteration, validation NLL)``.

    Raises:
        ValueError: for data of the wrong shape or with NaN/inf (naming the row), or invalid
            settings.
        flowvi.train.NonFiniteLossError: if the loss or a gradient turns NaN or inf.
    """
    d = flow.event_shape[-1]
    check_data(x_train, d, "training data")
    check_dim(batch_size, "batch_size")
    stopper = None
    if x_valid is not None:
        check_data(x_valid, d, "validation data")
        stopper = EarlyStopping(
            lambda: mean_nll(flow, x_valid), every=valid_every, patience=patience
        )
    n = x_train.shape[0]

    def batch(t: int) -> Tensor:
        x = x_train
        if batch_size < n:
            x = x_train[torch.randint(n, (batch_size,), device=x_train.device)]
        return x if augment is None else augment(x)

    def nll(x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        log_q = flow(validate_args=False).log_prob(x)  # the data were checked up front
        return negative_log_likelihood(log_q), {"flow log density of the batch": log_q}

    trace = train(
        flow,
        BatchLoss(batch, nll),
        iters=iters,
        lr=lr,
        optimizer=optimizer,
        schedule=schedule,
        directory=directory,
        resume=resume,
        checkpoint_every=checkpoint_every,
        progress=progress,
        desc="density",
        label="NLL",
        early_stopping=stopper,
        compile=compile,
    )
    return trace, stopper

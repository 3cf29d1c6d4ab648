r"""The inference gap of a VAE, split as in Cremer, Li & Duvenaud (2018).

.. math::
    \underbrace{\ln p(x) - \mathcal L[q]}_{\text{inference gap}}
    = \underbrace{\ln p(x) - \mathcal L[q^*]}_{\text{approximation gap}}
    + \underbrace{\mathcal L[q^*] - \mathcal L[q]}_{\text{amortization gap}}

:math:`q = q(z \mid x)` is the amortized posterior (the encoder's output); :math:`q^*` the best
member of the same family for each ``x`` alone, found by :func:`fit_local` with the decoder
frozen; :math:`\ln p(x)` is estimated by AIS (:func:`ais_log_likelihood`), whose accuracy
bidirectional Monte Carlo (:func:`bdmc`) certifies on data simulated from the model.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from flowvi._checks import check_choice, check_dim
from flowvi.ais import ANNEALING_SCHEDULES, AISResult, ais, reverse_ais
from flowvi.flows import NormalizingFlow
from flowvi.flows.base import ParametricLayer
from flowvi.flows.flow import FlowDistribution
from flowvi.vae.evaluate import mean_and_se
from flowvi.vae.model import VAE
from flowvi.vae.posterior import GaussianBase

GAP_JSON = "gap.json"


def ais_log_likelihood(
    model: VAE,
    x: Tensor,
    *,
    chains: int = 100,
    steps: int = 1000,
    kind: str = "linear",
    leapfrog: int = 10,
    step_size: float = 0.05,
    batch_size: int = 100,
    progress: bool = False,
) -> AISResult:
    r""":math:`\ln p(x_i)` by AIS along :math:`p(z) p(x_i \mid z)^\beta` (see
    :mod:`flowvi.ais`), ``chains`` HMC chains per datapoint, all datapoints of a batch at once.

    Args:
        model: the VAE (its decoder and prior; the encoder is not used). x: ``(n, D)``.
        chains: chains per datapoint. steps: intermediate distributions ``T``. kind:
            ``linear`` or ``sigmoid`` schedule. leapfrog, step_size: HMC settings (the step
            size adapts toward acceptance 0.65). batch_size: datapoints per run.
        progress: progress bars (tqdm) over the batches and each batch's transitions.

    Returns:
        an :class:`flowvi.ais.AISResult`: ``log_Z, se, acceptance: (n,)`` (float64 nats, a
        stochastic lower bound), ``log_w, step_size: (chains, n)``, ``z: (chains, n, d)``.

    Raises:
        ValueError: for a bad number of chains, steps or batch size.
    """
    check_dim(chains, "number of AIS chains")
    check_dim(batch_size, "batch size")
    parts = []
    batches = tqdm(x.split(batch_size), desc="ln p(x) by AIS", unit="batch", disable=not progress)
    for xb in batches:
        z0 = model.prior().sample((chains, len(xb)))
        parts.append(
            ais(
                z0,
                lambda z: model.prior().log_prob(z),
                lambda z, xb=xb: model.decoder(z).log_prob(xb),
                steps=steps,
                kind=kind,
                leapfrog=leapfrog,
                step_size=step_size,
                progress=progress,
            )
        )
    return _cat(parts)


def _cat(parts: list[AISResult]) -> AISResult:
    """Join per-batch results along the datapoint dimension."""
    per_point = ("log_Z", "se", "acceptance")  # (n,); the rest are (chains, n, ...)
    names = (*per_point, "log_w", "step_size", "z")
    return AISResult(
        **{k: torch.cat([getattr(p, k) for p in parts], 0 if k in per_point else 1) for k in names}
    )


@torch.no_grad()
def simulate(model: VAE, n: int) -> tuple[Tensor, Tensor]:
    r"""``(z, x)``: :math:`z_i \sim p(z)`, :math:`x_i \sim p(x \mid z_i)`, shapes ``(n, d)``
    and ``(n, D)``. Each :math:`z_i` is then an exact draw from :math:`p(z \mid x_i)`."""
    check_dim(n, "number of simulated datapoints")
    z = model.prior().sample((n,))
    return z, model.decoder(z).sample()


def bdmc(
    model: VAE,
    n: int = 10,
    *,
    chains: int = 100,
    steps: int = 1000,
    kind: str = "linear",
    leapfrog: int = 10,
    step_size: float = 0.05,
) -> dict[str, Tensor]:
    r"""Bidirectional Monte Carlo (Grosse et al. 2015; Wu et al. 2017) on ``n`` datapoints
    simulated from the model: forward AIS gives a stochastic lower bound on :math:`\ln p(x_i)`,
    reverse AIS from the latent that generated :math:`x_i` an upper bound.

    Returns:
        ``lower, upper, lower_se, upper_se, gap = upper - lower``, each ``(n,)`` float64 nats,
        and the simulated ``z: (n, d)``, ``x: (n, D)``. A gap near zero certifies that AIS
        with these settings estimates :math:`\ln p(x)` of data like these to that accuracy.
    """
    check_dim(chains, "number of AIS chains")
    z, x = simulate(model, n)
    options = {"steps": steps, "kind": kind, "leapfrog": leapfrog, "step_size": step_size}
    forward = ais_log_likelihood(model, x, chains=chains, batch_size=n, **options)
    backward = reverse_ais(
        z.expand(chains, *z.shape).clone(),
        lambda v: model.prior().log_prob(v),
        lambda v: model.decoder(v).log_prob(x),
        **options,
    )
    return {
        "lower": forward.log_Z,
        "lower_se": forward.se,
        "upper": backward.log_Z,
        "upper_se": backward.se,
        "gap": backward.log_Z - forward.log_Z,
        "z": z,
        "x": x,
    }


class LocalPosterior(nn.Module):
    r"""One free member of a VAE's posterior family per datapoint: the amortized posterior's
    per-datapoint parameters, made free ``nn.Parameter`` s (first dimension ``n``) and started
    at the encoder's output for ``x`` (so it starts at :math:`q(z \mid x)` exactly).

    - base: mean and raw scale of :class:`flowvi.vae.GaussianBase` (:math:`\sigma =
      \mathrm{softplus}(s) + 10^{-5}`), ``(n, d)`` each;
    - amortized :class:`flowvi.flows.ParametricLayer` s (planar, radial, Sylvester): their full raw
      parameter sets, ``(n, *shape)``: exactly the family's members;
    - context-reading networks (IAF's MADE): a free context per datapoint and layer,
      ``(n, c)``, through the frozen network: a sub-family, so :math:`\mathcal L[q^*]` is then
      a lower estimate of the family's optimum (and the approximation gap an upper one).

    ``forward()`` returns the :class:`flowvi.flows.FlowDistribution` with batch shape ``(n,)``.
    The model's own parameters are not registered here (they stay frozen).

    Raises:
        ValueError: if the posterior's base is not a :class:`flowvi.vae.GaussianBase`.
    """

    def __init__(self, model: VAE, x: Tensor) -> None:
        super().__init__()
        posterior: NormalizingFlow = model.posterior
        if not isinstance(posterior.base, GaussianBase):
            raise ValueError(
                "local q* needs the amortized Gaussian base of flowvi.vae.make_posterior, got "
                f"{type(posterior.base).__name__}"
            )
        with torch.no_grad():
            h = model.encoder(x)
            self.mean = nn.Parameter(posterior.base.mean(h).clone())
            self.scale = nn.Parameter(posterior.base.scale(h).clone())
            h = posterior.layer_context(h)  # what the layers read
            self.raw = nn.ModuleList()
            self.kinds: list[str] = []
            for layer in posterior.layers:
                params = nn.ParameterDict()
                if isinstance(layer, ParametricLayer) and layer.context_dim is not None:
                    params.update({k: nn.Parameter(v.clone()) for k, v in layer.raw(h).items()})
                    self.kinds.append("raw")
                elif getattr(layer, "context_dim", None) is not None:
                    params["context"] = nn.Parameter(h.clone())
                    self.kinds.append("context")
                else:
                    self.kinds.append("shared")
                self.raw.append(params)
        self._layers = tuple(posterior.layers)  # a tuple: not registered, not optimized

    def forward(self) -> FlowDistribution:
        sigma = nn.functional.softplus(self.scale) + 1e-5
        base = torch.distributions.Independent(torch.distributions.Normal(self.mean, sigma), 1)
        transforms = []
        for layer, kind, params in zip(self._layers, self.kinds, self.raw, strict=True):
            if kind == "raw":
                transforms.append(layer.transform(**dict(params)))
            elif kind == "context":
                transforms.append(layer(params["context"]))
            else:
                transforms.append(layer())
        return FlowDistribution(base, transforms)


def elbo_crn(
    model: VAE, q: FlowDistribution, x: Tensor, eps: Tensor, *, chunk: int = 100
) -> Tensor:
    r"""The ELBO per datapoint ``(n,)`` (float64 nats) of ``q`` (batch shape ``(n,)``) from
    the given standard-normal draws ``eps: (S, n, d)``: :math:`z_0 = \mu + \sigma \odot
    \epsilon`, :math:`z = f(z_0)`, averaged over ``S`` in chunks of ``chunk``.

    The same ``eps`` for two posteriors gives common random numbers: their difference is far
    less noisy than two independent estimates.
    """
    base = q.base_dist
    total = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    prior = model.prior()
    for e in eps.split(chunk):
        z0 = base.mean + base.stddev * e
        z, ladj = q.flow.call_and_ladj(z0)
        log_q = base.log_prob(z0) - ladj
        total = total + (model.decoder(z).log_prob(x) + prior.log_prob(z) - log_q).double().sum(0)
    return total / eps.shape[0]


@dataclass(frozen=True)
class LocalFit:
    """The outcome of :func:`fit_local`: the local posterior and its per-datapoint record."""

    posterior: LocalPosterior
    iterations: Tensor  # (n,) steps taken per datapoint
    converged: Tensor  # (n,) bool: stopped by the rule, not by max_iters
    start: Tensor  # (n,) fixed-noise ELBO at the amortized start
    best: Tensor  # (n,) fixed-noise ELBO at the returned parameters


def fit_local(
    model: VAE,
    x: Tensor,
    *,
    max_iters: int = 5000,
    lr: float = 1e-3,
    samples: int = 10,
    check_every: int = 100,
    check_samples: int = 100,
    tol: float = 0.01,
    patience: int = 1,
) -> LocalFit:
    r"""The per-datapoint optimum :math:`q^*` of the posterior family, decoder and encoder
    frozen (Cremer et al. 2018), every datapoint optimized at once (vectorized).

    Start: :class:`LocalPosterior` at the amortized :math:`q(z \mid x)`. Steps: Adam on the
    summed negative ELBO (``samples`` reparameterized draws per datapoint; Adam's elementwise
    updates keep the datapoints independent). Stopping rule (REFERENCE.md names none; this one
    is flowvi's): every ``check_every`` steps each datapoint's ELBO is measured on the *same*
    ``check_samples`` standard-normal draws (common random numbers, so successive checks differ
    by the change of the parameters, not by noise); a datapoint whose check value rose by less
    than ``tol`` nats since its previous check, ``patience`` checks in a row, stops and keeps
    its best-checked parameters; all
    stop at ``max_iters``. Because the start is a checked candidate, the returned parameters'
    check value is never below the amortized one's.

    Args:
        model: the trained VAE. x: ``(n, D)``. max_iters: step limit. lr: Adam's rate.
        samples: draws per step. check_every, check_samples, tol, patience: the stopping
            rule (with ``patience = 1`` and ``lr = 0.05`` a diagonal q* on the linear-Gaussian
            model stops 0–0.1 nats short of the exact optimum; ``patience = 3``, closer).

    Returns:
        a :class:`LocalFit`.

    Raises:
        ValueError: for a bad count or a non-positive ``lr`` or ``tol``.
    """
    for value, name in (
        (max_iters, "max_iters"),
        (samples, "samples"),
        (check_every, "check_every"),
        (check_samples, "check_samples"),
        (patience, "patience"),
    ):
        check_dim(value, name)
    if not lr > 0 or not tol > 0:
        raise ValueError(f"lr and tol must be positive, got lr={lr}, tol={tol}")
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(requires_grad=False)
    try:
        return _fit_local(
            model, x, max_iters, lr, samples, check_every, check_samples, tol, patience
        )
    finally:
        for p in frozen:
            p.requires_grad_(requires_grad=True)


def _fit_local(
    model, x, max_iters, lr, samples, check_every, check_samples, tol, patience
) -> LocalFit:
    local = LocalPosterior(model, x)
    params = list(local.parameters())
    n = len(x)
    eps = torch.randn(check_samples, n, model.d, dtype=x.dtype, device=x.device)

    def check() -> Tensor:
        with torch.no_grad():
            return elbo_crn(model, local(), x, eps)

    start = best = last = check()
    best_params = [p.detach().clone() for p in params]
    active = torch.ones(n, dtype=torch.bool, device=x.device)
    iterations = torch.zeros(n, dtype=torch.long, device=x.device)
    stalled = torch.zeros(n, dtype=torch.long, device=x.device)
    prior = model.prior()
    optimizer = torch.optim.Adam(params, lr=lr)
    for t in range(1, max_iters + 1):
        z, log_q = local().rsample_and_log_prob((samples,))
        bound = (model.decoder(z).log_prob(x) + prior.log_prob(z) - log_q).mean(0)
        optimizer.zero_grad(set_to_none=True)
        (-(bound * active).sum()).backward()
        optimizer.step()
        iterations += active
        if t % check_every and t < max_iters:
            continue
        value = check()
        improved = active & (value > best)
        with torch.no_grad():
            for p, b in zip(params, best_params, strict=True):
                mask = improved.view(n, *([1] * (p.dim() - 1)))
                b.copy_(torch.where(mask, p, b))
        best = torch.where(improved, value, best)
        stalled = torch.where(value - last >= tol, 0, stalled + 1)
        active = active & (stalled < patience)
        last = value
        with torch.no_grad():  # stopped datapoints go back to their best parameters
            for p, b in zip(params, best_params, strict=True):
                mask = active.view(n, *([1] * (p.dim() - 1)))
                p.copy_(torch.where(mask, p, b))
        if not bool(active.any()):
            break
    converged = ~active
    with torch.no_grad():
        for p, b in zip(params, best_params, strict=True):
            p.copy_(b)
    return LocalFit(local, iterations, converged, start, best)


@dataclass(frozen=True)
class GapSettings:
    """The estimators' settings of :func:`inference_gap` (defaults: Cremer et al.'s AIS
    chains and leapfrog steps, fewer temperatures; check them with :func:`bdmc`)."""

    chains: int = 100
    steps: int = 1000
    kind: str = "linear"
    leapfrog: int = 10
    step_size: float = 0.05
    local_iters: int = 5000
    local_lr: float = 1e-3
    local_samples: int = 10
    tol: float = 0.01
    elbo_samples: int = 1000
    batch_size: int = 100

    def validate(self) -> None:
        """Raises ValueError naming the first impossible setting, before any work starts."""
        for name in ("chains", "steps", "leapfrog", "local_iters", "local_samples"):
            check_dim(getattr(self, name), name)
        check_dim(self.elbo_samples, "elbo_samples")
        check_dim(self.batch_size, "batch_size")
        check_choice(self.kind, ANNEALING_SCHEDULES, "AIS schedule")
        for name in ("step_size", "local_lr", "tol"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


def inference_gap(
    model: VAE, x: Tensor, settings: GapSettings = GapSettings(), *, progress: bool = False
) -> dict[str, Any]:
    r"""Cremer et al.'s decomposition for the datapoints ``x: (n, D)``, in nats.

    :math:`\ln p(x)` by :func:`ais_log_likelihood`; :math:`\mathcal L[q]` and
    :math:`\mathcal L[q^*]` (after :func:`fit_local`) on the same ``elbo_samples`` draws
    (common random numbers). Per datapoint, ``inference = approximation + amortization``
    holds exactly by construction. ``progress``: progress bars (tqdm) for both stages.

    Returns:
        ``per_point`` (lists of length ``n``: ``log_px``, ``log_px_se``, ``L_qstar``, ``L_q``,
        ``approximation``, ``amortization``, ``inference``, ``local_iterations``), ``summary``
        (``{name: {"mean": ..., "se": ...}}`` over the datapoints: the standard error of the
        mean across datapoints), ``seconds`` (per stage), ``seconds_per_point`` and
        ``ais_acceptance`` (the mean HMC acceptance probability).
    """
    settings.validate()
    model.eval()
    n = len(x)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    result = ais_log_likelihood(
        model,
        x,
        chains=settings.chains,
        steps=settings.steps,
        kind=settings.kind,
        leapfrog=settings.leapfrog,
        step_size=settings.step_size,
        batch_size=settings.batch_size,
        progress=progress,
    )
    seconds["ais"] = time.perf_counter() - start
    start = time.perf_counter()
    l_q, l_star, iters = [], [], []
    batches = tqdm(
        x.split(settings.batch_size), desc="local q*", unit="batch", disable=not progress
    )
    for xb in batches:
        fit = fit_local(
            model,
            xb,
            max_iters=settings.local_iters,
            lr=settings.local_lr,
            samples=settings.local_samples,
            tol=settings.tol,
        )
        eps = torch.randn(settings.elbo_samples, len(xb), model.d, dtype=xb.dtype, device=xb.device)
        with torch.no_grad():
            amortized = elbo_crn(model, model.q(xb), xb, eps)
            local = elbo_crn(model, fit.posterior(), xb, eps)
        l_q.append(amortized)
        l_star.append(local)
        iters.append(fit.iterations)
    seconds["local"] = time.perf_counter() - start
    log_px, l_q, l_star = result.log_Z, torch.cat(l_q), torch.cat(l_star)
    per_point = {
        "log_px": log_px,
        "log_px_se": result.se,
        "L_qstar": l_star,
        "L_q": l_q,
        "approximation": log_px - l_star,
        "amortization": l_star - l_q,
        "inference": log_px - l_q,
    }
    summary = {}
    for name, values in per_point.items():
        if name != "log_px_se":
            mean, se = mean_and_se(values.cpu())
            summary[name] = {"mean": mean, "se": se}
    out = {name: values.tolist() for name, values in per_point.items()}
    out["local_iterations"] = torch.cat(iters).tolist()
    total = sum(seconds.values())
    return {
        "per_point": out,
        "summary": summary,
        "seconds": seconds,
        "seconds_per_point": total / n,
        "ais_acceptance": float(result.acceptance.mean()),
        "n": n,
        "settings": asdict(settings),
        "units": "nats per datapoint; se = standard error of the mean over datapoints",
    }

r"""Black-box variational inference: score-function and pathwise gradients of the ELBO.

The model is any log joint density ``log_joint(z: (S, d)) -> (S,)`` (nats, up to a constant);
the guide is a mean-field product :math:`q(z) = \prod_j q_j(z_j; \lambda_j)` of scalar factors
(:class:`NormalFactors` for continuous latents, :class:`CategoricalFactors` and
:class:`BernoulliFactors` for discrete ones), packed side by side in ``z``.

Estimators of :math:`\nabla_\lambda \mathcal L`, :math:`\mathcal L = E_q[\ln p(x, z) - \ln q(z)]`:

- ``"score"`` (Ranganath, Gerrish & Blei 2014, Eq. 3): :math:`\frac1S \sum_s \nabla_\lambda
  \ln q(z_s) (\ln p(x, z_s) - \ln q(z_s))`, any guide, discrete latents included; with

  - Rao-Blackwellization per factor (their Eq. 6): factor :math:`j`'s gradient keeps only
    :math:`\ln p_j - \ln q_j(z_j)`, where :math:`\ln p_j` are the terms of the log joint that
    involve :math:`z_j` (its Markov blanket, given by the model as ``local``), or the whole
    log joint when the model gives none (the other factors' :math:`\ln q_k` still drop out);
  - control variates (their Eq. 8-9): :math:`\hat g_c = \frac1S \sum_s (f_{sc} - a_c h_{sc})`
    with :math:`h = \nabla_\lambda \ln q` (mean zero) and the optimal per-component scale
    :math:`a_c = \mathrm{Cov}(f_c, h_c) / \mathrm{Var}(h_c) = E[f_c h_c] / E[h_c^2]` (their
    Eq. 10, per component). flowvi estimates :math:`a_c` for sample :math:`s` from the *other*
    :math:`S - 1` samples (leave-one-out), which keeps the estimator exactly unbiased (the
    paper's same-sample estimate has an :math:`O(1/S)` bias), and uses the known zero mean of
    :math:`h` instead of centring, which keeps :math:`a_c` bounded (see ``_control_variate``).

- ``"reparam"`` (Kingma & Welling 2014; Rezende et al. 2014): :math:`z = \mu + \sigma \odot
  \epsilon`, :math:`\frac1S\sum_s \nabla_\lambda [\ln p(x, z_s(\lambda)) - \ln q(z_s(\lambda);
  \lambda)]`, for reparameterizable factors;
- ``"stl"``, sticking the landing (Roeder, Wu & Duvenaud 2017, Eq. 8): the same with the
  parameters in :math:`\ln q` held fixed, :math:`\ln q(z_s(\lambda); \bot(\lambda))`: it drops
  the score term, whose mean is zero, and has zero variance when :math:`q = p`.

With ``"reparam"`` or ``"stl"``, discrete factors (which no reparameterization reaches) still
take the score-function estimator, so one call serves a model with both kinds of latents, e.g.
the Gaussian mixture's means and assignments (:class:`GaussianMixtureModel`).

Every estimator is computed per sample (the parameters are expanded to one copy per sample and
differentiated once), so that control variates, the variance studies of
:mod:`flowvi.inference.estimators` and the training loss share one code path.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Bernoulli, Categorical, Distribution, Normal
from torch.func import functional_call

from flowvi._checks import check_choice, check_dim
from flowvi.train import train

LogJoint = Callable[[Tensor], Tensor]
ESTIMATORS = ("score", "reparam", "stl")


class Factors(nn.Module):
    """A block of ``n`` independent scalar factors of one family (one column of ``z`` each).

    Subclasses hold their raw (unconstrained) parameters as ``nn.Parameter`` s whose first
    dimension is ``n``, and implement :meth:`distribution`. Any raw values give a valid
    distribution.
    """

    reparameterizable = False

    def __init__(self, n: int) -> None:
        super().__init__()
        check_dim(n, "number of factors n")
        self.n = n

    def raw(self) -> dict[str, Tensor]:
        """The raw parameters by name, each of shape ``(n, ...)``."""
        return dict(self.named_parameters(recurse=False))

    def distribution(self, params: dict[str, Tensor]) -> Distribution:
        """The factors' distribution: batch shape ``(*batch, n)`` for params ``(*batch, n, ...)``.

        Raises:
            NotImplementedError: in this base class.
        """
        raise NotImplementedError

    def encode(self, value: Tensor, like: Tensor) -> Tensor:
        """A sample as columns of ``z`` (floats of ``like`` 's dtype)."""
        return value.to(like.dtype)

    def decode(self, columns: Tensor) -> Tensor:
        """Columns of ``z`` as values for ``log_prob``."""
        return columns


class NormalFactors(Factors):
    r"""``n`` independent :math:`\mathcal N(\mu_j, \sigma_j^2)`, :math:`\sigma_j = e^{\ell_j}`.

    Args:
        n: number of continuous latents.
        loc: initial means, shape ``(n,)`` (default 0).
        scale: initial standard deviation (default 1).
    """

    reparameterizable = True

    def __init__(self, n: int, *, loc: Tensor | None = None, scale: float = 1.0) -> None:
        super().__init__(n)
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale}")
        loc = torch.zeros(n) if loc is None else torch.as_tensor(loc, dtype=torch.float32)
        if loc.shape != (n,):
            raise ValueError(f"loc must have shape ({n},), got {tuple(loc.shape)}")
        self.loc = nn.Parameter(loc.clone())
        self.log_scale = nn.Parameter(torch.full((n,), math.log(scale)))

    def distribution(self, params: dict[str, Tensor]) -> Distribution:
        return Normal(params["loc"], torch.exp(params["log_scale"]))


class CategoricalFactors(Factors):
    r"""``n`` independent categorical variables on :math:`\{0, \dots, k-1\}`,
    :math:`q(c_j = m) \propto e^{\eta_{jm}}`; ``z`` holds the category index as a float.

    Args:
        n: number of discrete latents.
        k: number of categories.
        logits: initial :math:`\eta`, shape ``(n, k)`` (default 0: uniform).
    """

    def __init__(self, n: int, k: int, *, logits: Tensor | None = None) -> None:
        super().__init__(n)
        check_dim(k, "number of categories k")
        logits = torch.zeros(n, k) if logits is None else torch.as_tensor(logits).float()
        if logits.shape != (n, k):
            raise ValueError(f"logits must have shape ({n}, {k}), got {tuple(logits.shape)}")
        self.k = k
        self.logits = nn.Parameter(logits.clone())

    def distribution(self, params: dict[str, Tensor]) -> Distribution:
        return Categorical(logits=params["logits"])

    def decode(self, columns: Tensor) -> Tensor:
        return columns.round().long()


class BernoulliFactors(Factors):
    r"""``n`` independent Bernoulli variables, :math:`q(b_j = 1) = \sigma(\eta_j)`.

    Args:
        n: number of binary latents.
        logits: initial :math:`\eta`, shape ``(n,)`` (default 0: probability 1/2).
    """

    def __init__(self, n: int, *, logits: Tensor | None = None) -> None:
        super().__init__(n)
        logits = torch.zeros(n) if logits is None else torch.as_tensor(logits).float()
        if logits.shape != (n,):
            raise ValueError(f"logits must have shape ({n},), got {tuple(logits.shape)}")
        self.logits = nn.Parameter(logits.clone())

    def distribution(self, params: dict[str, Tensor]) -> Distribution:
        return Bernoulli(logits=params["logits"])


class MeanField(nn.Module):
    r"""The mean-field guide :math:`q(z) = \prod_j q_j(z_j)`, blocks of factors side by side.

    ``z: (*batch, d)`` with ``d = sum(block.n)``; block ``b`` owns columns
    ``slices[b]``. Like a flow, it offers ``sample``, ``log_prob`` and, when every factor is
    reparameterizable, ``rsample`` and ``rsample_and_log_prob`` (so :func:`flowvi.evaluate`
    accepts a Gaussian mean-field guide).

    Args:
        blocks: the factor blocks, e.g. ``[NormalFactors(6), CategoricalFactors(500, 3)]``.

    Example:
        >>> from flowvi.inference import BernoulliFactors, MeanField, NormalFactors
        >>> q = MeanField([NormalFactors(2), BernoulliFactors(3)])
        >>> z = q.sample((64,))              # (64, 5); columns 2-4 hold 0.0 or 1.0
        >>> q.log_prob_terms(z).shape         # one ln q_j per column, nats
        torch.Size([64, 5])
    """

    def __init__(self, blocks: Sequence[Factors]) -> None:
        super().__init__()
        if not blocks or not all(isinstance(b, Factors) for b in blocks):
            raise ValueError("MeanField needs one or more Factors blocks")
        self.blocks = nn.ModuleList(blocks)
        edges = [0]
        for block in blocks:
            edges.append(edges[-1] + block.n)
        self.slices = [slice(a, b) for a, b in itertools.pairwise(edges)]
        self.dim = edges[-1]

    @property
    def reparameterizable(self) -> bool:
        return all(block.reparameterizable for block in self.blocks)

    def _like(self) -> Tensor:
        return next(self.parameters())

    @torch.no_grad()
    def sample(self, sample_shape: Sequence[int] = ()) -> Tensor:
        """Samples ``z: (*sample_shape, d)`` (no gradient)."""
        like = self._like()
        cols = [
            b.encode(b.distribution(b.raw()).sample(torch.Size(sample_shape)), like)
            for b in self.blocks
        ]
        return torch.cat(cols, -1)

    def rsample(self, sample_shape: Sequence[int] = ()) -> Tensor:
        """Reparameterized samples ``z: (*sample_shape, d)``.

        Raises:
            ValueError: if a block is discrete.
        """
        self._check_reparameterizable()
        return torch.cat(
            [b.distribution(b.raw()).rsample(torch.Size(sample_shape)) for b in self.blocks], -1
        )

    def log_prob_terms(self, z: Tensor) -> Tensor:
        r""":math:`\ln q_j(z_j)` for every column, shape ``(*batch, d)`` for ``z: (*batch, d)``."""
        if z.shape[-1:] != (self.dim,):
            raise ValueError(f"expected z of shape (*batch, {self.dim}), got {tuple(z.shape)}")
        return torch.cat(
            [b.distribution(b.raw()).log_prob(b.decode(z[..., s])) for b, s in self._pairs()], -1
        )

    def log_prob(self, z: Tensor) -> Tensor:
        r""":math:`\ln q(z)` in nats, shape ``(*batch,)``."""
        return self.log_prob_terms(z).sum(-1)

    def rsample_and_log_prob(self, sample_shape: Sequence[int] = ()) -> tuple[Tensor, Tensor]:
        z = self.rsample(sample_shape)
        return z, self.log_prob(z)

    def forward(self, z: Tensor) -> Tensor:
        return self.log_prob(z)

    def _pairs(self):
        return zip(self.blocks, self.slices, strict=True)

    def _check_reparameterizable(self) -> None:
        if not self.reparameterizable:
            raise ValueError(
                "this guide has discrete factors, which cannot be reparameterized: use the "
                "score-function estimator for them (estimator='score', or 'reparam'/'stl', which "
                "fall back to it for discrete factors)"
            )


def elbo_gradient(
    guide: MeanField,
    log_joint: LogJoint,
    *,
    samples: int,
    repeats: int | None = None,
    estimator: str = "score",
    rao_blackwell: bool = True,
    control_variates: bool = True,
    local: LogJoint | None = None,
    entropy: bool = True,
) -> tuple[dict[str, Tensor], Tensor]:
    r"""Monte Carlo estimates of :math:`\nabla_\lambda \mathcal L` (ascent), per parameter.

    Args:
        guide: the mean-field guide.
        log_joint: :math:`\ln p(x, z)`, ``(S, d) -> (S,)`` in nats (a :class:`flowvi.targets.Target`
            or any function).
        samples: :math:`S`, samples per estimate (at least 3 with control variates: the
            leave-one-out scale needs two others).
        repeats: if given, ``repeats`` independent estimates at once (for variance studies);
            every returned tensor then gains a leading dimension of that size.
        estimator: ``"score"``, ``"reparam"`` or ``"stl"`` (see the module docstring); discrete
            factors use the score function whatever is chosen.
        rao_blackwell: for score-function factors, use each factor's own learning signal
            :math:`\ln p_j - \ln q_j` instead of :math:`\ln p - \ln q`.
        control_variates: for score-function factors, subtract :math:`a_c h_c` with the
            optimal per-component :math:`a_c` (leave-one-out).
        local: the Markov-blanket terms of the log joint, ``(S, d) -> (S, d)``: column ``j``
            sums the terms that involve :math:`z_j` (Ranganath et al. 2014, Eq. 6). Only used
            with ``rao_blackwell``.
        entropy: ``False`` estimates :math:`\nabla_\lambda E_q[f(z)]` for ``f = log_joint``
            instead (no :math:`-\ln q` term), as in the curriculum's :math:`\nabla_\mu
            E_{N(\mu, 1)}[X^2]`.

    Returns:
        ``(gradients, elbo_terms)``: ``gradients[name]`` has the shape of the guide's parameter
        ``name`` (``(repeats, *shape)`` with ``repeats``), and ``elbo_terms`` holds
        :math:`\ln p(x, z_s) - \ln q(z_s)` (or :math:`f(z_s)`), shape ``(samples,)`` or
        ``(repeats, samples)``, detached.

    Raises:
        ValueError: for an unknown estimator, ``samples < 3`` with control variates, or a log
            joint (or ``local``) returning the wrong shape.
    """
    check_choice(estimator, ESTIMATORS, "estimator")
    check_dim(samples, "samples")
    if repeats is not None:
        check_dim(repeats, "repeats")
    if control_variates and samples < 3:
        raise ValueError(f"control variates need samples >= 3, got {samples}")
    r = 1 if repeats is None else repeats
    grads, terms = _per_sample(
        guide,
        log_joint,
        (r, samples),
        estimator=estimator,
        rao_blackwell=rao_blackwell,
        control_variates=control_variates,
        local=local,
        entropy=entropy,
    )
    means = {name: g.mean(1) for name, g in grads.items()}
    if repeats is None:
        return {name: g[0] for name, g in means.items()}, terms[0]
    return means, terms


def _per_sample(
    guide: MeanField,
    log_joint: LogJoint,
    shape: tuple[int, int],
    *,
    estimator: str,
    rao_blackwell: bool,
    control_variates: bool,
    local: LogJoint | None,
    entropy: bool,
) -> tuple[dict[str, Tensor], Tensor]:
    """Per-sample gradient contributions ``(R, S, *param.shape)`` and ELBO terms ``(R, S)``.

    1. Every raw parameter is expanded to one copy per sample, ``(R, S, n, ...)``, so that one
       backward pass gives per-sample gradients.
    2. Pathwise blocks draw ``z`` by ``rsample`` through their copies; score blocks draw it
       without gradient and differentiate :math:`\\ln q_j` alone (the score :math:`h`).
    3. Score contributions are :math:`f = h \\cdot` signal, less :math:`a h` with control
       variates; pathwise ones are the per-sample gradients of :math:`\\ln p - \\ln q`.
    """
    path = [estimator != "score" and b.reparameterizable for b in guide.blocks]
    copies = [
        {
            k: v.detach().expand(*shape, *v.shape).clone().requires_grad_()
            for k, v in b.raw().items()
        }
        for b in guide.blocks
    ]
    like = guide._like()
    columns, log_q = [], []
    for block, params, pathwise in zip(guide.blocks, copies, path, strict=True):
        dist = block.distribution(params)
        value = dist.rsample() if pathwise else block.encode(dist.sample(), like)
        if pathwise and estimator == "stl":  # Roeder et al. (2017): ln q with λ held fixed
            dist = block.distribution({k: v.detach() for k, v in params.items()})
        columns.append(value)
        log_q.append(dist.log_prob(block.decode(value)))
    z = torch.cat(columns, -1)
    log_q_terms = torch.cat(log_q, -1)  # (R, S, d)
    log_p = _call(log_joint, z, shape, "log_joint")
    q_sum = log_q_terms.sum(-1) if entropy else torch.zeros_like(log_p)
    out: dict[str, Tensor] = {}
    names = [name for name, _ in guide.named_parameters()]
    flat = [(b, s, p, pw) for (b, s), p, pw in zip(guide._pairs(), copies, path, strict=True)]
    if any(path):  # pathwise: d/dλ [ln p(z(λ)) - ln q(z(λ))] sample by sample
        wrt = [v for _, _, p, pw in flat if pw for v in p.values()]
        found = torch.autograd.grad((log_p - q_sum).sum(), wrt, allow_unused=True)
        it = iter(found)
        for _, _, p, pw in flat:
            if pw:
                for v in p.values():
                    g = next(it)
                    out[id(v)] = torch.zeros_like(v) if g is None else g
    if not all(path):  # score function for the other blocks
        wrt = [v for _, _, p, pw in flat if not pw for v in p.values()]
        score_q = sum(lq.sum() for lq, pw in zip(log_q, path, strict=True) if not pw)
        h_all = torch.autograd.grad(score_q, wrt)
        signal = _signals(
            log_p.detach(),
            log_q_terms.detach() if entropy else torch.zeros_like(log_q_terms),
            z.detach(),
            shape,
            rao_blackwell=rao_blackwell,
            local=local,
        )  # (R, S, d)
        it = iter(h_all)
        for _, s, p, pw in flat:
            if pw:
                continue
            for v in p.values():
                h = next(it)
                sig = signal[..., s].reshape(*signal.shape[:2], -1, *([1] * (h.dim() - 3)))
                f = h * sig
                out[id(v)] = _control_variate(f, h) if control_variates else f
    ordered = [v for p in copies for v in p.values()]
    grads = {name: out[id(v)].detach() for name, v in zip(names, ordered, strict=True)}
    return grads, (log_p - q_sum).detach()


def _signals(log_p, log_q_terms, z, shape, *, rao_blackwell: bool, local) -> Tensor:
    """Learning signal per column ``(R, S, d)``: the full :math:`\\ln p - \\ln q`, or with
    Rao-Blackwellization :math:`\\ln p_j - \\ln q_j` (``ln p_j``: ``local``, else ``ln p``)."""
    if not rao_blackwell:
        return (log_p - log_q_terms.sum(-1))[..., None].expand_as(log_q_terms)
    if local is None:
        return log_p[..., None] - log_q_terms
    d = z.shape[-1]
    out = local(z.reshape(-1, d))
    if out.shape != (shape[0] * shape[1], d):
        raise ValueError(f"local must map (S, {d}) to (S, {d}); it returned {tuple(out.shape)}")
    return out.reshape(*shape, d).detach() - log_q_terms


def _call(fn: LogJoint, z: Tensor, shape: tuple[int, int], what: str) -> Tensor:
    out = fn(z.reshape(-1, z.shape[-1]))
    if out.shape != (shape[0] * shape[1],):
        raise ValueError(
            f"{what} must map z of shape (S, d) to (S,); it returned {tuple(out.shape)} "
            f"for S = {shape[0] * shape[1]}"
        )
    return out.reshape(shape)


def _control_variate(f: Tensor, h: Tensor) -> Tensor:
    r""":math:`f_s - a_{-s} h_s` per component, with the optimal scale
    :math:`a^* = \mathrm{Cov}(f, h) / \mathrm{Var}(h)` estimated from the samples other than
    ``s`` (axis 1 of ``(R, S, ...)``).

    The score has mean exactly zero, so :math:`\mathrm{Cov}(f, h) = E[fh]` and
    :math:`\mathrm{Var}(h) = E[h^2]`, estimated without centring:
    :math:`a_{-s} = \sum_{j \ne s} f_j h_j / \sum_{j \ne s} h_j^2`. For
    :math:`f = h \cdot \text{signal}` this is a weighted mean of the other samples' signals,
    so it stays bounded when the other scores are nearly equal (a concentrated categorical
    factor), where the centred ratio divides by a variance near zero and can multiply the
    estimator's variance by orders of magnitude. Because :math:`a_{-s}` is independent of
    :math:`h_s` and :math:`E[h_s] = 0`, the mean of :math:`a_{-s} h_s` is exactly zero: the
    estimator stays unbiased for any :math:`S \ge 2` (flowvi asks for 3).
    """
    fh, hh = f * h, h * h
    sfh = fh.sum(1, keepdim=True) - fh  # leave-one-out sums
    shh = hh.sum(1, keepdim=True) - hh
    a = torch.where(shh > 0, sfh / torch.where(shh > 0, shh, 1.0), 0.0)
    return f - a * h


def elbo_loss(
    guide: nn.Module,
    log_joint: LogJoint,
    *,
    samples: int,
    estimator: str = "score",
    rao_blackwell: bool = True,
    control_variates: bool = True,
    local: LogJoint | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    r"""A loss for :func:`flowvi.train.train`: value :math:`-\hat{\mathcal L}` (nats), gradient
    :math:`-\hat g` of the chosen estimator.

    For a :class:`MeanField` guide every estimator of :func:`elbo_gradient` is available; the
    loss is :math:`-\hat{\mathcal L} + \sum_p \langle -\hat g_p, \lambda_p -
    \bot(\lambda_p)\rangle`.
    For any other guide with ``rsample_and_log_prob`` (a :class:`flowvi.NormalizingFlow`, a
    full-rank Gaussian) ``"reparam"`` is the usual pathwise loss and ``"stl"`` evaluates
    :math:`\ln q` of the samples with the parameters detached (an extra inverse pass).

    Returns:
        ``(loss, parts)``, ``parts`` naming the per-sample log densities for error messages.

    Raises:
        ValueError: for ``"score"`` with a guide that is not mean-field.
    """
    check_choice(estimator, ESTIMATORS, "estimator")
    if isinstance(guide, MeanField):
        grads, terms = elbo_gradient(
            guide,
            log_joint,
            samples=samples,
            estimator=estimator,
            rao_blackwell=rao_blackwell,
            control_variates=control_variates,
            local=local,
        )
        surrogate = sum((-grads[name] * p).sum() for name, p in guide.named_parameters())
        loss = -terms.mean() + surrogate - surrogate.detach()
        return loss, {"ELBO terms": terms}
    if estimator == "score":
        raise ValueError("the score-function estimator is implemented for MeanField guides")
    x, log_q = guide.rsample_and_log_prob((samples,))
    if estimator == "stl":
        frozen = {k: v.detach() for k, v in guide.named_parameters()}
        log_q = functional_call(guide, frozen, ()).log_prob(x)
    log_p = log_joint(x)
    return (log_q - log_p).mean(), {"log joint": log_p, "guide log density": log_q}


def fit_bbvi(
    guide: nn.Module,
    log_joint: LogJoint,
    *,
    iters: int = 2000,
    samples: int = 64,
    lr: float = 1e-2,
    optimizer: str = "adam",
    estimator: str = "score",
    rao_blackwell: bool = True,
    control_variates: bool = True,
    local: LogJoint | None = None,
    progress: bool = False,
) -> Tensor:
    """Fit ``guide`` by stochastic ascent on the ELBO with flowvi's training loop.

    See :func:`elbo_loss` for the arguments; ``iters``, ``lr`` and ``optimizer`` go to
    :func:`flowvi.train.train`. (For reparameterized flow guides without STL,
    :func:`flowvi.fit` does the same with β annealing.)

    Returns:
        the trace of :math:`-\\hat{\\mathcal L}` per iteration, shape ``(iters,)``, nats.
    """
    check_choice(estimator, ESTIMATORS, "estimator")
    if control_variates and samples < 3:
        raise ValueError(f"control variates need samples >= 3, got {samples}")

    def loss_fn(t: int) -> tuple[Tensor, dict[str, Tensor]]:
        return elbo_loss(
            guide,
            log_joint,
            samples=samples,
            estimator=estimator,
            rao_blackwell=rao_blackwell,
            control_variates=control_variates,
            local=local,
        )

    return train(
        guide,
        loss_fn,
        iters=iters,
        lr=lr,
        optimizer=optimizer,
        progress=progress,
        desc="bbvi",
        label="-ELBO",
    )


@torch.no_grad()
def guide_elbo(
    guide: nn.Module, log_joint: LogJoint, *, samples: int = 10_000
) -> tuple[float, float]:
    r"""Monte Carlo :math:`\mathcal L = E_q[\ln p(x, z) - \ln q(z)]` and its standard error
    (nats), from ``samples`` draws of the guide."""
    check_dim(samples, "samples")
    if isinstance(guide, MeanField):
        z = guide.sample((samples,))
        log_q = guide.log_prob(z)
    else:
        z, log_q = guide.rsample_and_log_prob((samples,))
    terms = (log_joint(z) - log_q).double()
    return float(terms.mean()), float(terms.std() / math.sqrt(samples))


class GaussianMixtureModel:
    r"""The Bayesian mixture of unit-variance Gaussians (Blei, Kucukelbir & McAuliffe 2017, §3)
    as a log joint over means *and assignments*, for BBVI.

    :math:`\mu_k \sim \mathcal N(0, \sigma^2 I_d)`, :math:`c_i \sim \mathrm{Cat}(1/K)`,
    :math:`x_i | c_i, \mu \sim \mathcal N(\mu_{c_i}, I_d)`. The latent vector is
    ``z = (μ_1, …, μ_K, c_1, …, c_N)``, shape ``(S, K d + N)``, the assignments as float indices.

    Args:
        x: data, shape ``(N, d)``.
        k: number of components :math:`K`.
        prior_sd: :math:`\sigma`.

    Raises:
        ValueError: if ``x`` is not a 2-D tensor or ``k``, ``prior_sd`` are invalid.
    """

    def __init__(self, x: Tensor, *, k: int, prior_sd: float = 5.0) -> None:
        if x.dim() != 2:
            raise ValueError(f"x must have shape (N, d), got {tuple(x.shape)}")
        check_dim(k, "number of components k")
        if not prior_sd > 0:
            raise ValueError(f"prior_sd must be positive, got {prior_sd}")
        self.x, self.k, self.prior_sd = x, k, prior_sd
        self.n, self.d = x.shape
        self.dim = k * self.d + self.n

    def unpack(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """``(mu: (S, K, d), c: (S, N) long)`` from ``z: (S, K d + N)``."""
        kd = self.k * self.d
        return z[:, :kd].reshape(-1, self.k, self.d), z[:, kd:].round().long()

    def _parts(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        mu, c = self.unpack(z)
        x = self.x.to(z)
        log_prior_mu = -0.5 * (mu / self.prior_sd) ** 2 - math.log(
            self.prior_sd * math.sqrt(2 * math.pi)
        )  # (S, K, d)
        centres = torch.gather(mu, 1, c[..., None].expand(-1, -1, self.d))  # (S, N, d)
        log_lik = -0.5 * ((x - centres) ** 2).sum(-1) - 0.5 * self.d * math.log(2 * math.pi)
        return log_prior_mu, log_lik - math.log(self.k), c  # log_lik includes ln p(c_i)

    def log_joint(self, z: Tensor) -> Tensor:
        r""":math:`\ln p(x, \mu, c)`, shape ``(S,)`` for ``z: (S, K d + N)``, nats."""
        log_prior_mu, log_lik, _ = self._parts(z)
        return log_prior_mu.sum((1, 2)) + log_lik.sum(1)

    def local(self, z: Tensor) -> Tensor:
        r"""Markov-blanket terms, shape ``(S, K d + N)``: for :math:`\mu_{kj}`,
        :math:`\ln p(\mu_{kj}) + \sum_{i: c_i = k} \ln p(x_i | \mu_k)`; for :math:`c_i`,
        :math:`\ln p(c_i) + \ln p(x_i | c_i, \mu)`."""
        log_prior_mu, log_lik, c = self._parts(z)
        per_component = torch.zeros(len(z), self.k, dtype=z.dtype, device=z.device)
        per_component = per_component.scatter_add(1, c, log_lik + math.log(self.k))
        mu_terms = log_prior_mu + per_component[..., None]
        return torch.cat([mu_terms.reshape(len(z), -1), log_lik], -1)

    def guide(self, *, generator: torch.Generator | None = None) -> MeanField:
        """A mean-field guide: :math:`q(\\mu_{kj}) = \\mathcal N` (means at random data points,
        to break the symmetry), :math:`q(c_i) = \\mathrm{Cat}(\\varphi_i)` uniform."""
        if self.k > self.n:
            raise ValueError(f"k = {self.k} components need at least k data points, got {self.n}")
        pick = torch.randperm(self.n, generator=generator)[: self.k]
        loc = self.x[pick].reshape(-1).float().cpu()
        return MeanField(
            [NormalFactors(self.k * self.d, loc=loc), CategoricalFactors(self.n, self.k)]
        )

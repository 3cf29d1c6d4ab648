r"""Coordinate-ascent variational inference (CAVI) for the Bayesian mixture of unit-variance
Gaussians of Blei, Kucukelbir & McAuliffe (2017, Section 3), in any dimension ``d`` with ``K``
components.

Model: :math:`\mu_k \sim \mathcal N(0, \sigma^2 I_d)`, :math:`c_i \sim \mathrm{Cat}(1/K)`,
:math:`x_i \mid c_i, \mu \sim \mathcal N(\mu_{c_i}, I_d)`, :math:`i = 1, \dots, N`. Mean-field
family: :math:`q(\mu_k) = \mathcal N(m_k, s_k^2 I_d)`, :math:`q(c_i) = \mathrm{Cat}(\varphi_i)`.

Updates (their Eq. 21-23, written for ``d`` dimensions), with
:math:`E_k = \mathbb E_q\|\mu_k\|^2 = d s_k^2 + \|m_k\|^2`:

1. local: :math:`\varphi_{ik} \propto \exp(x_i^\top m_k - \tfrac12 E_k)`;
2. global: :math:`s_k^2 = 1 / (1/\sigma^2 + n_k)`, :math:`m_k = s_k^2 \sum_i \varphi_{ik} x_i`,
   with :math:`n_k = \sum_i \varphi_{ik}`.

The ELBO, every constant kept (nats), with :math:`S_k = \sum_i \varphi_{ik} x_i` and
:math:`T = \sum_i \|x_i\|^2`:

.. math::

    \mathcal L = \sum_k \Big[ -\tfrac d2 \ln(2\pi\sigma^2) - \frac{E_k}{2\sigma^2} \Big]
    - N \ln K
    + \Big[ -\tfrac{Nd}2 \ln 2\pi - \tfrac12 T + \sum_k S_k^\top m_k
    - \tfrac12 \sum_k n_k E_k \Big]
    - \sum_{ik} \varphi_{ik} \ln\varphi_{ik}
    + \sum_k \tfrac d2 \big(\ln(2\pi s_k^2) + 1\big),

the expected log prior of the means, of the assignments, the expected log likelihood, and the
entropies of :math:`q(c)` and :math:`q(\mu)`. It depends on the data only through
:math:`(n_k, S_k, T)` and the entropy, so after the global update it costs :math:`O(NK)`, not
another pass of :math:`O(NKd)`. Each update maximizes the ELBO in its block, so the trace never
decreases.

Held-out log predictive density of a new point under the fit:
:math:`\ln \hat p(x^*) = \ln \frac1K \sum_k \mathcal N(x^*; m_k, (1 + s_k^2) I)`
(the predictive :math:`\mathbb E_{q(\mu)} p(x^* \mid \mu)`, exact for this family).

References:
    Blei, Kucukelbir & McAuliffe, "Variational inference: a review for statisticians", JASA
    (2017), Section 3 and Algorithm 2.
    Arthur & Vassilvitskii, "k-means++: the advantages of careful seeding", SODA (2007)
    (the default initialization).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.distributions import Independent, Normal

from flowvi._checks import check_choice, check_dim

LOG_2PI = math.log(2 * math.pi)
INITS = ("kmeans++", "data", "random")


# ----------------------------------------------------------------------------- checks


def check_data(x: Tensor) -> Tensor:
    """``x`` as float64 on its device, after checking it is a finite ``(N, d)`` table.

    Raises:
        ValueError: naming the problem (not 2-D, empty, NaN or infinite values).
    """
    if not isinstance(x, Tensor):
        raise ValueError(f"data must be a torch.Tensor of shape (N, d), got {type(x).__name__}")
    if x.dim() != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"data must have shape (N, d) with N, d >= 1, got {tuple(x.shape)}")
    if x.is_complex():
        raise ValueError("data must be real")
    x = x.to(torch.float64)
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).any(1).sum())
        raise ValueError(f"data hold NaN or infinite values ({bad} rows)")
    return x


def check_prior_std(prior_std: float) -> float:
    """Raise ``ValueError`` unless ``prior_std`` (σ) is a positive finite number."""
    if isinstance(prior_std, bool) or not isinstance(prior_std, (int, float)):
        raise ValueError(f"prior_std must be a positive number, got {prior_std!r}")
    if not (math.isfinite(prior_std) and prior_std > 0):
        raise ValueError(f"prior_std must be a positive finite number, got {prior_std!r}")
    return float(prior_std)


# ----------------------------------------------------------------------------- the updates


def update_locals(x: Tensor, means: Tensor, variances: Tensor) -> Tensor:
    r"""The local CAVI step: :math:`\ln\varphi_{ik} = x_i^\top m_k - \tfrac12 E_k - \ln Z_i`.

    Args:
        x: data, shape ``(N, d)``.
        means: :math:`m`, shape ``(K, d)``.
        variances: :math:`s^2`, shape ``(K,)``.

    Returns:
        log responsibilities :math:`\ln\varphi`, shape ``(N, K)``, each row normalized.
    """
    _, shifted, log_norm = local_step(x, means, variances)
    return (shifted - log_norm).T


def local_step(x: Tensor, means: Tensor, variances: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    r"""The local step in the ``(K, N)`` layout, where the normalization over ``K`` is ``K - 1``
    elementwise operations on rows of length ``N`` (a softmax over a short last axis is several
    times slower).

    Returns:
        ``(resp, shifted, log_norm)``: :math:`\varphi^\top` ``(K, N)``; the logits minus their
        column maximum ``(K, N)``; and ``ln Σ_k exp(shifted)`` ``(N,)``, so that
        :math:`\ln\varphi^\top` = ``shifted - log_norm``.
    """
    second = x.shape[1] * variances + means.square().sum(-1)  # E_k = E‖μ_k‖², (K,)
    logits = torch.addmm(second.mul(-0.5)[:, None], means, x.T)  # x_iᵀm_k − ½E_k, one GEMM
    shifted = logits.sub_(logits.amax(0))
    resp = shifted.exp()
    norm = resp.sum(0)
    return resp.div_(norm), shifted, norm.log()


def update_globals(x: Tensor, resp: Tensor, *, prior_std: float) -> tuple[Tensor, Tensor]:
    r"""The global CAVI step: :math:`s_k^2 = 1/(1/\sigma^2 + n_k)`,
    :math:`m_k = s_k^2 \sum_i \varphi_{ik} x_i`.

    Args:
        x: data, shape ``(N, d)``.
        resp: responsibilities :math:`\varphi \ge 0`, shape ``(N, K)`` (rows need not sum to
            one: an initialization may weight only a few points).
        prior_std: :math:`\sigma`.

    Returns:
        ``(means, variances)``, shapes ``(K, d)`` and ``(K,)``.
    """
    return _globals(resp.sum(0), resp.T @ x, prior_std**2)


def _globals(counts: Tensor, sums: Tensor, prior_var: float) -> tuple[Tensor, Tensor]:
    variances = 1 / (counts + 1 / prior_var)
    return sums * variances[:, None], variances


# ----------------------------------------------------------------------------- the ELBO


def mixture_elbo(
    x: Tensor,
    means: Tensor,
    variances: Tensor,
    *,
    prior_std: float,
    log_resp: Tensor | None = None,
) -> Tensor:
    r"""The full ELBO :math:`\mathcal L(q)` of the module docstring, every constant kept, nats.

    Args:
        x: data, shape ``(N, d)``.
        means, variances: :math:`q(\mu_k) = \mathcal N(m_k, s_k^2 I)`, shapes ``(K, d)``,
            ``(K,)``.
        prior_std: :math:`\sigma`.
        log_resp: :math:`\ln\varphi`, shape ``(N, K)``, rows normalized; ``None``: the optimal
            local factors for these global ones (:func:`update_locals`), which makes the value
            :math:`\max_\varphi \mathcal L`, a function of :math:`q(\mu)` alone: the one formula
            by which fits from different programs can be compared.

    Returns:
        a scalar tensor (the total over the data; divide by ``N`` for per datum).
    """
    x = check_data(x)
    means, variances = means.to(x), variances.to(x)
    if log_resp is None:
        resp, shifted, log_norm = local_step(x, means, variances)  # φᵀ, (K, N)
        neg_entropy = torch.dot(resp.reshape(-1), shifted.reshape(-1)) - log_norm.sum()
    else:
        if log_resp.shape != (x.shape[0], means.shape[0]):
            raise ValueError(
                f"log_resp must have shape (N, K) = {(x.shape[0], means.shape[0])}, "
                f"got {tuple(log_resp.shape)}"
            )
        log_resp = log_resp.to(x)
        resp = log_resp.exp().T
        neg_entropy = torch.where(resp > 0, resp * log_resp.T, 0).sum()  # 0 ln 0 = 0
    return _elbo(
        n=x.shape[0],
        sq_norms=x.square().sum(),
        counts=resp.sum(1),
        sums=resp @ x,
        neg_entropy=neg_entropy,
        means=means,
        variances=variances,
        prior_var=prior_std**2,
    )


def _elbo(
    *,
    n: int,
    sq_norms: Tensor,
    counts: Tensor,
    sums: Tensor,
    neg_entropy: Tensor,
    means: Tensor,
    variances: Tensor,
    prior_var: float,
) -> Tensor:
    """The ELBO from the sufficient statistics (n_k = counts, S = sums, T = sq_norms)."""
    k, d = means.shape
    second = d * variances + means.square().sum(-1)  # E_k
    log_prior_means = -0.5 * d * k * (LOG_2PI + math.log(prior_var)) - second.sum() / (
        2 * prior_var
    )
    log_prior_assign = -n * math.log(k)
    log_lik = (
        -0.5 * n * d * LOG_2PI
        - 0.5 * sq_norms
        + (sums * means).sum()
        - 0.5 * (counts * second).sum()
    )
    entropy_means = 0.5 * d * (LOG_2PI + 1 + variances.log()).sum()
    return log_prior_means + log_prior_assign + log_lik - neg_entropy + entropy_means


def log_predictive(x: Tensor, means: Tensor, variances: Tensor) -> Tensor:
    r"""The log predictive density :math:`\ln \frac1K \sum_k \mathcal N(x; m_k, (1 + s_k^2)
    I)` of each point, nats.

    Args:
        x: points, shape ``(n, d)``.
        means, variances: shapes ``(K, d)``, ``(K,)``.

    Returns:
        shape ``(n,)``.
    """
    x = check_data(x)
    means, variances = means.to(x), variances.to(x)
    k, d = means.shape
    var = 1 + variances  # (K,)
    sq = (x.square().sum(-1, keepdim=True) - 2 * x @ means.T + means.square().sum(-1)).clamp_min(0)
    log_comp = -0.5 * d * (LOG_2PI + var.log()) - sq / (2 * var)
    return torch.logsumexp(log_comp, dim=-1) - math.log(k)


# ----------------------------------------------------------------------------- initialization


def initial_responsibilities(
    x: Tensor, k: int, *, init: str = "kmeans++", generator: torch.Generator | None = None
) -> Tensor:
    r"""Starting responsibilities :math:`\varphi^{(0)}`, shape ``(N, K)``; CAVI starts with the
    global step from them.

    - ``"kmeans++"``: ``K`` points by D² sampling (Arthur & Vassilvitskii 2007), one-hot rows
      at those points and zero rows elsewhere, so that :math:`m_k^{(0)}` sits at point ``k``
      (shrunk by :math:`\sigma^2/(1+\sigma^2)`);
    - ``"data"``: the same with ``K`` distinct points drawn uniformly;
    - ``"random"``: uniform(0, 1) rows, normalized (every component starts near the data mean).

    These are the responsibilities scikit-learn's ``init_params`` ``"k-means++"``,
    ``"random_from_data"`` and ``"random"`` start from.

    Args:
        x: data, shape ``(N, d)``.
        k: number of components ``K`` (``K <= N`` for the point-based inits).
        init: one of :data:`INITS`.
        generator: random numbers (on ``x``'s device); ``None``: torch's global generator.

    Raises:
        ValueError: for an unknown ``init`` or ``K > N`` with a point-based one.
    """
    check_choice(init, INITS, "init")
    check_dim(k, "number of components K")
    n = x.shape[0]
    opts = {"dtype": x.dtype, "device": x.device}
    if init == "random":
        resp = torch.rand(n, k, generator=generator, **opts)
        return resp / resp.sum(-1, keepdim=True)
    if k > n:
        raise ValueError(f"init {init!r} needs K <= N distinct points, got K = {k} > N = {n}")
    if init == "data":
        index = torch.randperm(n, generator=generator, device=x.device)[:k]
    else:
        index = _kmeans_plus_plus(x, k, generator)
    resp = torch.zeros(n, k, **opts)
    resp[index, torch.arange(k, device=x.device)] = 1
    return resp


def _kmeans_plus_plus(x: Tensor, k: int, generator: torch.Generator | None) -> Tensor:
    """Indices of ``k`` seeds: the first uniform, each next with probability ∝ its squared
    distance to the nearest seed so far (a loop over seeds, vectorized over points)."""
    n = x.shape[0]
    index = torch.empty(k, dtype=torch.long, device=x.device)
    index[0] = torch.randint(n, (1,), generator=generator, device=x.device)[0]
    d2 = (x - x[index[0]]).square().sum(-1)
    for j in range(1, k):
        weights = d2 if bool(d2.sum() > 0) else torch.ones_like(d2)  # all points coincide
        index[j] = torch.multinomial(weights, 1, generator=generator)[0]
        d2 = torch.minimum(d2, (x - x[index[j]]).square().sum(-1))
    return index


# ----------------------------------------------------------------------------- the algorithm


@dataclass
class CAVIResult:
    r"""A CAVI fit: :math:`q(\mu_k) = \mathcal N(m_k, s_k^2 I)` and :math:`q(c_i) =
    \mathrm{Cat}(\varphi_i)` of the best restart.

    Attributes:
        means: :math:`m`, shape ``(K, d)``, float64.
        variances: :math:`s^2`, shape ``(K,)``.
        log_resp: :math:`\ln\varphi` of the training data, shape ``(N, K)``.
        elbo: the final ELBO, total nats.
        trace: the ELBO after each iteration, shape ``(iterations,)``, nats.
        iterations: CAVI sweeps (local + global step) run.
        converged: whether the relative ELBO change fell below ``tol``.
        prior_std: :math:`\sigma`.
        restart_elbos, restart_iterations: final ELBO and sweeps of every restart, in order.
        best_restart: index of the restart kept (the highest ELBO).
    """

    means: Tensor
    variances: Tensor
    log_resp: Tensor
    elbo: float
    trace: Tensor
    iterations: int
    converged: bool
    prior_std: float
    restart_elbos: list[float] = field(default_factory=list)
    restart_iterations: list[int] = field(default_factory=list)
    best_restart: int = 0

    @property
    def n(self) -> int:
        """Number of training points ``N``."""
        return self.log_resp.shape[0]

    @property
    def elbo_per_datum(self) -> float:
        """``elbo / N``, nats."""
        return self.elbo / self.n

    def log_predictive(self, x: Tensor) -> Tensor:
        """Log predictive density of each row of ``x`` (``(n, d)``), shape ``(n,)``, nats."""
        return log_predictive(x, self.means, self.variances)

    def responsibilities(self, x: Tensor) -> Tensor:
        r""":math:`\varphi` of new points ``x`` (``(n, d)``) under the fit, shape ``(n, K)``."""
        return update_locals(check_data(x), self.means, self.variances).exp()

    def q_means(self) -> Independent:
        r""":math:`q(\mu)` as a distribution with batch shape ``(K,)``, event ``(d,)``."""
        scale = self.variances.sqrt()[:, None].expand_as(self.means)
        return Independent(Normal(self.means, scale), 1)


def cavi(
    x: Tensor,
    k: int,
    *,
    prior_std: float = 5.0,
    init: str | Tensor = "kmeans++",
    restarts: int = 1,
    tol: float = 1e-8,
    max_iter: int = 1000,
    seed: int = 0,
) -> CAVIResult:
    r"""Fit the mixture by CAVI (Blei et al. 2017, Algorithm 2), keeping the best of
    ``restarts`` random initializations.

    Each sweep is the local step for all :math:`\varphi_i` at once, then the global step for all
    :math:`(m_k, s_k^2)`, then the ELBO (from the sufficient statistics of the sweep). A restart
    stops when :math:`|\mathcal L_t - \mathcal L_{t-1}| < \mathrm{tol} \cdot |\mathcal L_t|`
    or after ``max_iter`` sweeps. Computed in float64 on ``x``'s device; ``O(NKd)`` per sweep
    (two matrix products), no loop over points.

    Args:
        x: data, shape ``(N, d)`` (converted to float64).
        k: number of components ``K``.
        prior_std: :math:`\sigma`, the prior standard deviation of the component means (in the
            data's units; the components have unit variance).
        init: one of :data:`INITS` (see :func:`initial_responsibilities`), or the starting
            responsibilities themselves, shape ``(N, K)`` (then ``restarts`` must be 1).
        restarts: number of random initializations; the one with the highest final ELBO is kept.
        tol: relative ELBO change for convergence (0: run ``max_iter`` sweeps).
        max_iter: maximum sweeps per restart.
        seed: seed of the initializations (restart ``r`` continues the same generator).

    Returns:
        a :class:`CAVIResult`.

    Example:
        >>> from flowvi.inference.cavi import cavi, simulate
        >>> sample = simulate(1000, 3, 2, prior_std=5.0, seed=0)
        >>> fit = cavi(sample.x, 3, prior_std=5.0, restarts=5)
        >>> fit.elbo_per_datum, fit.iterations  # doctest: +SKIP

    Raises:
        ValueError: for invalid data (see :func:`check_data`), ``K``, ``prior_std``, ``init``,
            ``tol < 0``, ``max_iter < 1``, ``restarts < 1``, or a given ``init`` of the wrong
            shape or with negative or non-finite entries.
    """
    x = check_data(x)
    check_dim(k, "number of components K")
    prior_std = check_prior_std(prior_std)
    check_dim(restarts, "restarts")
    check_dim(max_iter, "max_iter")
    if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
    if isinstance(init, Tensor):
        if restarts != 1:
            raise ValueError("given starting responsibilities, restarts must be 1")
        init = init.to(x)
        if init.shape != (x.shape[0], k):
            raise ValueError(
                f"init responsibilities must have shape (N, K) = {(x.shape[0], k)}, "
                f"got {tuple(init.shape)}"
            )
        if not (torch.isfinite(init).all() and (init >= 0).all()):
            raise ValueError("init responsibilities must be finite and non-negative")
        starts = [init]
    else:
        check_choice(init, INITS, "init")
        if init != "random" and k > x.shape[0]:
            raise ValueError(f"K = {k} components need at least K data points, got N = {len(x)}")
        starts = None
    generator = torch.Generator(device=x.device).manual_seed(seed)
    best = None
    elbos, iters = [], []
    for r in range(restarts):
        resp0 = (
            starts[0]
            if starts is not None
            else initial_responsibilities(x, k, init=init, generator=generator)
        )
        fit = _run(x, resp0, prior_std=prior_std, tol=tol, max_iter=max_iter)
        elbos.append(fit.elbo)
        iters.append(fit.iterations)
        if best is None or fit.elbo > best.elbo:
            best, fit.best_restart = fit, r
    best.restart_elbos, best.restart_iterations = elbos, iters
    return best


def _run(x: Tensor, resp0: Tensor, *, prior_std: float, tol: float, max_iter: int) -> CAVIResult:
    """One CAVI restart from the responsibilities ``resp0``."""
    n, prior_var = x.shape[0], prior_std**2
    sq_norms = x.square().sum()
    means, variances = update_globals(x, resp0, prior_std=prior_std)
    trace: list[float] = []
    converged = False
    for _ in range(max_iter):
        # 1. local step: φ from the current q(μ), in the (K, N) layout
        resp, shifted, log_norm = local_step(x, means, variances)
        # 2. global step: q(μ) from the sufficient statistics of φ
        counts, sums = resp.sum(1), resp @ x
        means, variances = _globals(counts, sums, prior_var)
        # 3. the ELBO at (φ, q(μ)) from the same statistics; Σ φ ln φ = Σ φ·shifted − Σ ln Z_i
        # as each row of φ sums to one
        neg_entropy = torch.dot(resp.reshape(-1), shifted.reshape(-1)) - log_norm.sum()
        value = _elbo(
            n=n,
            sq_norms=sq_norms,
            counts=counts,
            sums=sums,
            neg_entropy=neg_entropy,
            means=means,
            variances=variances,
            prior_var=prior_var,
        ).item()
        trace.append(value)
        if len(trace) > 1 and abs(value - trace[-2]) < tol * abs(value):
            converged = True
            break
    log_resp = (shifted - log_norm).T.contiguous()
    return CAVIResult(
        means=means,
        variances=variances,
        log_resp=log_resp,
        elbo=trace[-1],
        trace=torch.tensor(trace, dtype=torch.float64),
        iterations=len(trace),
        converged=converged,
        prior_std=prior_std,
    )


# ----------------------------------------------------------------------------- simulated data


@dataclass
class MixtureSample:
    """Draws from the model: ``x`` ``(n, d)`` float64, ``labels`` ``(n,)`` (the :math:`c_i`),
    ``means`` ``(K, d)`` (the :math:`\\mu_k`)."""

    x: Tensor
    labels: Tensor
    means: Tensor


def simulate(n: int, k: int, d: int, *, prior_std: float = 5.0, seed: int = 0) -> MixtureSample:
    r"""Draw ``n`` points from the model: :math:`\mu_k \sim \mathcal N(0, \sigma^2 I)`,
    :math:`c_i` uniform, :math:`x_i \sim \mathcal N(\mu_{c_i}, I)`; reproducible from ``seed``.

    Raises:
        ValueError: for non-positive ``n``, ``k``, ``d`` or ``prior_std``.
    """
    for value, name in ((n, "n"), (k, "number of components K"), (d, "dimension d")):
        check_dim(value, name)
    prior_std = check_prior_std(prior_std)
    g = torch.Generator().manual_seed(seed)
    means = prior_std * torch.randn(k, d, generator=g, dtype=torch.float64)
    labels = torch.randint(k, (n,), generator=g)
    x = means[labels] + torch.randn(n, d, generator=g, dtype=torch.float64)
    return MixtureSample(x=x, labels=labels, means=means)

"""Benchmark: flowvi's guides against Pyro's and zuko's on four real Bayesian posteriors.

Does ``flowvi.fit``, run as a new user runs it, fit real posteriors: without failures, with an
ELBO and posterior-sd error at least as good as the best peer, in no more wall time? The same
records decide ``flowvi.fit``'s defaults, so every fitting option of flowvi can be varied from
the command line and is written into each record.

Models, each a ``flowvi.targets.Target`` on the unconstrained space (with named ``sites``) and
a Pyro model over the same coordinates (checked to agree to a constant on a few points, printed
and recorded as ``check``):

1. ``eight-schools``: non-centered, d = 10, ``(mu, log tau, theta_t)``; reference: arviz's NUTS
   draws (``EightSchools.reference()``).
2. ``logistic``: breast_cancer logistic regression, d = 31; reference: the HMC of
   ``benchmarks/bbvi.py`` (32 chains, 500 warm-up, 1000 draws each), its means, sds, split
   R-hat and bulk ESS cached in ``results/posteriors_logistic_hmc.npy``.
3. ``brownian``: inference-gym's Brownian motion with known scales and the middle ten of 30
   observations missing, d = 30 (the 30 locations); reference: the gym's ground-truth means and
   sds (Stan, 50,000 draws).
4. ``irt``: inference-gym's synthetic item response theory (1PL: 400 students, 100 questions,
   30,012 answers), d = 501 ``(mean_student_ability, centered_student_ability[400],
   question_difficulty[100])``; reference: the gym's ground truth.

The log densities are written in torch from the gym's bundled data (TensorFlow Probability's
numpy substrate, no TensorFlow, is used only to read the data and the ground truth, and to
check the torch densities against the gym's own). Every reference is in the unconstrained
coordinates the targets use (the gym's two models have no constrained parameters).

Guides (``--guides``), the same number of gradient steps (``--steps``), samples per step
(``--batch-size``) and learning rate (``--lr``) for all, float32, one thread:

- flowvi: ``mean-field``, ``full-rank``, ``iaf``, ``realnvp``, ``nsf`` of
  ``flowvi.inference.guides.GUIDES``, fitted by ``flowvi.fit``. Every hyperparameter of
  ``flowvi.fit``'s signature (``optimizer``, ``beta0``, ``anneal_iters``, ... whatever it has)
  is passed explicitly: its signature default unless ``--anneal-iters``, ``--beta0`` or
  ``--fit-option KEY=VALUE`` says otherwise; ``--init-scale s`` starts the Gaussian part (the
  affine layer, or the flow's diagonal base) at location 0 and scale s instead of the guide's
  own initialization. ``--lr`` and ``--batch-size`` default to ``flowvi.fit``'s defaults.
- Pyro: ``pyro-normal``, ``pyro-mvn``, ``pyro-iaf`` (``AutoNormal``, ``AutoMultivariateNormal``,
  ``AutoIAFNormal``, their defaults) with ``SVI``, ``Trace_ELBO(num_particles=batch,
  vectorize_particles=True)`` and ``pyro.optim.Adam`` at the same lr;
- zuko: ``zuko-iaf``, the transforms of ``zuko.flows.MAF(d, transforms=3,
  hidden_features=(64, 64))`` inverted by ``zuko.flows.LazyInverse`` (an IAF: one network
  pass per sample; sampling the MAF itself inverts a d-pass autoregression, 30× slower per
  step at d = 31), fitted here by Adam on the reverse KL from ``rsample_and_log_prob``;
  ``zuko-maf`` is the MAF itself (two coupling passes, ``passes=2``, for d > 64).

Scores per (model, guide, settings, seed), from ``--eval-draws`` draws of the fitted guide:
the ELBO (mean of ln p̃ − ln q, nats, with its standard error; ln p̃ is the target's normalized
log joint, so the ELBOs of all guides compare), the PSIS k̂ (``flowvi.metrics.psis_khat``), the
mean over coordinates of |sd_q − sd_ref| / sd_ref, the median of sd_q / sd_ref, the mean of
|mean_q − mean_ref| / sd_ref, and the fit's wall time. A fit that raises (e.g. flowvi's
``NonFiniteLossError``), or a peer whose loss turns non-finite, is recorded with the exception
text and the run goes on.

Records: JSON Lines in ``results/posteriors.jsonl`` (git commit, library versions, the machine);
a record already there (same model, guide, seed and settings) is skipped, so an interrupted run
resumes and several processes can share the file.

    pip install -e ".[dev,bench]"
    python -m benchmarks.posteriors --summary                  # fit's defaults, all peers
    python -m benchmarks.posteriors --libraries flowvi --lr 0.01 --init-scale 1 --summary
    python -m benchmarks.posteriors --libraries flowvi --fit-option anneal=0.5 --summary
    python -m benchmarks.posteriors --smoke --markdown         # tiny budgets, a minute

(``python benchmarks/posteriors.py`` works too. To fit with another tree of flowvi, e.g. an
older commit's, put its ``src`` first: ``PYTHONPATH=/tmp/flowvi_old/src python -m ...``.)
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import inspect
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # also as a plain script
import flowvi
from benchmarks.common import finite, fmt, one_thread
from flowvi.inference.guides import GUIDES as FLOWVI_GUIDES
from flowvi.inference.guides import build_guide
from flowvi.metrics import psis_khat
from flowvi.targets import Site, Target

RESULTS = Path(__file__).parent / "results"
MODELS = ["eight-schools", "logistic", "brownian", "irt"]
PYRO_GUIDES = {
    "pyro-normal": "AutoNormal",
    "pyro-mvn": "AutoMultivariateNormal",
    "pyro-iaf": "AutoIAFNormal",
}
GUIDES = [*FLOWVI_GUIDES, *PYRO_GUIDES, "zuko-iaf", "zuko-maf"]
DEFAULT_GUIDES = ["mean-field", "full-rank", "iaf", *PYRO_GUIDES, "zuko-iaf"]
# flowvi.fit's arguments that are not fitting hyperparameters
NOT_OPTIONS = {
    "flow",
    "target",
    "iters",
    "directory",
    "resume",
    "checkpoint_every",
    "progress",
    "compile",
}
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def library(guide: str) -> str:
    return "pyro" if guide in PYRO_GUIDES else "zuko" if guide.startswith("zuko") else "flowvi"


# ----------------------------------------------------------------------------------- models
class Model:
    """A posterior: the target, a Pyro model over the same coordinates, the reference moments
    ``(d,)`` of each coordinate and a description of where they come from."""

    def __init__(
        self,
        target: Target,
        pyro_model: Callable[[], None],
        mean: Tensor,
        sd: Tensor,
        reference: dict,
    ) -> None:
        self.target, self.pyro_model = target, pyro_model
        self.mean, self.sd, self.reference = mean.double(), sd.double(), reference
        self.check: dict = {}
        self.gym: Callable[[Tensor], float] | None = None  # the gym's own log density, a check


def _normal(x: Tensor, loc: Tensor | float, scale: Tensor | float) -> Tensor:
    """ln N(x; loc, scale²), elementwise."""
    scale = torch.as_tensor(scale, dtype=x.dtype)
    return -0.5 * ((x - loc) / scale) ** 2 - torch.log(scale) - _LOG_SQRT_2PI


def eight_schools() -> Model:
    import pyro
    import pyro.distributions as dist

    from flowvi.targets.bayes import EightSchools

    target = flowvi.targets.get("eight-schools")
    y, sigma = target.y.float(), target.sigma.float()

    def model() -> None:
        mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
        tau = pyro.sample("tau", dist.HalfCauchy(5.0))
        with pyro.plate("schools", 8):
            theta_t = pyro.sample("theta_t", dist.Normal(0.0, 1.0))
            pyro.sample("obs", dist.Normal(mu + tau * theta_t, sigma), obs=y)

    draws = EightSchools.reference()
    return Model(
        target,
        model,
        draws.mean(0),
        draws.std(0),
        {"source": "arviz non_centered_eight NUTS draws", "draws": len(draws)},
    )


def logistic() -> Model:
    import pyro
    import pyro.distributions as dist

    target = flowvi.targets.get("logistic-regression")
    x, labels = target.features.float(), target.labels.float()
    s = float(target.prior_sd)

    def model() -> None:
        b = pyro.sample("intercept", dist.Normal(0.0, s))
        w = pyro.sample("w", dist.Normal(0.0, s).expand([x.shape[1]]).to_event(1))
        # likelihoods as one event: no plate, so the particle dimension broadcasts (as elsewhere)
        pyro.sample("obs", dist.Bernoulli(logits=b[..., None] + w @ x.T).to_event(1), obs=labels)

    cache = RESULTS / "posteriors_logistic_hmc.npy"
    chains, warmup, draws = 32, 500, 1000
    if not cache.exists():
        from benchmarks.bbvi import hmc_reference

        settings = argparse.Namespace(hmc_chains=chains, hmc_warmup=warmup, hmc_draws=draws)
        start = time.perf_counter()
        ref, info = hmc_reference(target, settings)
        print(f"logistic HMC reference ({time.perf_counter() - start:.0f} s): {info}", flush=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import arviz

            ds = arviz.convert_to_dataset({"w": ref.reshape(chains, draws, -1).numpy()})
            rhat, ess = arviz.rhat(ds)["w"].values, arviz.ess(ds)["w"].values
        moments = np.stack([ref.mean(0).numpy(), ref.std(0).numpy(), rhat, ess])
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, moments)
    moments = torch.as_tensor(np.load(cache))
    return Model(
        target,
        model,
        moments[0],
        moments[1],
        {
            "source": "HMC of benchmarks/bbvi.py (dense mass matrix, 16 leapfrog steps)",
            "chains": chains,
            "warmup": warmup,
            "draws": draws,
            "rhat_max": float(moments[2].max()),
            "ess_bulk_min": float(moments[3].min()),
        },
    )


def _gym():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from inference_gym import using_numpy as gym
        from inference_gym.dynamic.backend_numpy.internal import data
    return gym, data


class Brownian(Target):
    r"""Brownian motion with known scales, observations 10–19 of 30 missing (inference-gym's
    ``BrownianMotionMissingMiddleObservations``), in the 30 locations :math:`x`:

    .. math::
        x_0 \sim \mathcal N(0, \sigma_i^2),\quad x_t \sim \mathcal N(x_{t-1}, \sigma_i^2),\quad
        y_t \sim \mathcal N(x_t, \sigma_o^2)\ (t \text{ observed}),

    :math:`\sigma_i = 0.1`, :math:`\sigma_o = 0.15`."""

    def __init__(self, observed: Tensor, innovation: float, observation: float) -> None:
        super().__init__(len(observed), name="brownian", sites=(Site("x", (len(observed),)),))
        seen = ~torch.isnan(observed)
        self.register_buffer("index", torch.nonzero(seen).flatten())
        self.register_buffer("y", observed[seen].double())
        self.innovation, self.observation = innovation, observation

    def _log_prob(self, z: Tensor) -> Tensor:
        steps = torch.cat([z[..., :1], z[..., 1:] - z[..., :-1]], -1)
        prior = _normal(steps, 0.0, self.innovation).sum(-1)
        lik = _normal(self.y.to(z), z[..., self.index], self.observation).sum(-1)
        return prior + lik


def brownian() -> Model:
    import pyro
    import pyro.distributions as dist

    gym, data = _gym()
    raw = data.brownian_motion_missing_middle_observations()
    observed = torch.as_tensor(np.asarray(raw["observed_locs"], dtype=np.float64))
    scale_i, scale_o = float(raw["innovation_noise_scale"]), float(raw["observation_noise_scale"])
    target = Brownian(observed, scale_i, scale_o)
    n = len(observed)
    # the random walk's covariance: Cov(x_s, x_t) = σ_i² (min(s, t) + 1)
    t = torch.arange(n, dtype=torch.float32)
    cov = scale_i**2 * (torch.minimum(t[:, None], t[None, :]) + 1)
    index, y = target.index, target.y.float()

    def model() -> None:
        x = pyro.sample("x", dist.MultivariateNormal(torch.zeros(n), covariance_matrix=cov))
        pyro.sample("obs", dist.Normal(x[..., index], scale_o).to_event(1), obs=y)

    gym_model = gym.targets.BrownianMotionMissingMiddleObservations()
    truth = gym_model.sample_transformations["identity"]
    model_ = Model(
        target,
        model,
        torch.as_tensor(truth.ground_truth_mean),
        torch.as_tensor(truth.ground_truth_standard_deviation),
        {"source": "inference-gym ground truth (Stan)"},
    )
    model_.gym = lambda z: float(gym_model.unnormalized_log_prob(list(z.numpy())))
    return model_


class ItemResponse(Target):
    r"""1PL item response theory (inference-gym's ``SyntheticItemResponseTheory``) in
    ``(mean_student_ability, centered_student_ability[S], question_difficulty[Q])``:

    .. math::
        \delta \sim \mathcal N(0.75, 1),\ \alpha_s \sim \mathcal N(0, 1),\
        \beta_q \sim \mathcal N(0, 1),\quad
        y_{sq} \sim \mathrm{Bernoulli}(\sigma(\delta + \alpha_s - \beta_q))

    over the observed (student, question) pairs, with
    :math:`\ln p(y | \eta) = y\eta - \mathrm{softplus}(\eta)`, summed over the dense
    ``(S, Q)`` grid with a mask (three quarters of the pairs are observed; the dense sum is
    faster than gathering the pairs)."""

    def __init__(self, students: Tensor, questions: Tensor, correct: Tensor) -> None:
        s, q = int(students.max()) + 1, int(questions.max()) + 1
        sites = (Site("mean_student_ability"), Site("centered_student_ability", (s,)),
                 Site("question_difficulty", (q,)))  # fmt: skip
        super().__init__(1 + s + q, name="irt", sites=sites)
        self.students, self.questions = s, q
        observed = torch.zeros(s, q, dtype=torch.float64)
        observed[students, questions] = 1.0
        answers = torch.zeros(s, q, dtype=torch.float64)
        answers[students, questions] = correct.double()
        self.register_buffer("observed", observed)
        self.register_buffer("answers", answers)

    def logits(self, z: Tensor) -> Tensor:
        r""":math:`\eta_{sq}`, shape ``(*batch, S, Q)``."""
        delta, alpha, beta = z[..., :1], z[..., 1 : 1 + self.students], z[..., 1 + self.students :]
        return delta[..., None] + alpha[..., :, None] - beta[..., None, :]

    def _log_prob(self, z: Tensor) -> Tensor:
        eta = self.logits(z)
        terms = self.answers.to(z) * eta - self.observed.to(z) * torch.nn.functional.softplus(eta)
        prior = _normal(z[..., 0], 0.75, 1.0) + _normal(z[..., 1:], 0.0, 1.0).sum(-1)
        return terms.sum((-1, -2)) + prior


def irt() -> Model:
    import pyro
    import pyro.distributions as dist

    gym, data = _gym()
    raw = data.synthetic_item_response_theory()
    target = ItemResponse(
        *(torch.as_tensor(raw[f"train_{k}"]) for k in ("student_ids", "question_ids", "correct"))
    )
    s, q = target.students, target.questions
    answers, observed = target.answers.float(), target.observed.bool()

    def model() -> None:
        delta = pyro.sample("mean_student_ability", dist.Normal(0.75, 1.0))
        alpha = pyro.sample(
            "centered_student_ability", dist.Normal(0.0, 1.0).expand([s]).to_event(1)
        )
        beta = pyro.sample("question_difficulty", dist.Normal(0.0, 1.0).expand([q]).to_event(1))
        eta = delta[..., None, None] + alpha[..., :, None] - beta[..., None, :]
        # the same dense, masked grid as the target (unobserved pairs contribute nothing)
        pyro.sample("obs", dist.Bernoulli(logits=eta).mask(observed).to_event(2), obs=answers)

    gym_model = gym.targets.SyntheticItemResponseTheory()
    truth = gym_model.sample_transformations["identity"]
    names = [site.name for site in target.sites]
    mean = torch.cat([torch.as_tensor(truth.ground_truth_mean[n]).reshape(-1) for n in names])
    sd = torch.cat(
        [torch.as_tensor(truth.ground_truth_standard_deviation[n]).reshape(-1) for n in names]
    )
    model_ = Model(target, model, mean, sd, {"source": "inference-gym ground truth (Stan)"})

    def gym_log_prob(z: Tensor) -> float:
        parts = flowvi.targets.sites.split(target.sites, z[None])
        values = {site.name: piece[0].numpy().astype(np.float32) for site, piece in parts}
        return float(gym_model.unnormalized_log_prob(values))

    model_.gym = gym_log_prob
    return model_


BUILDERS = {"eight-schools": eight_schools, "logistic": logistic, "brownian": brownian, "irt": irt}


def pyro_log_joint(model: Model, z: Tensor) -> float:
    """The Pyro model's log joint at the unconstrained point ``z: (d,)``, with the log-Jacobians
    of the sites' transforms: the density ``model.target`` should equal."""
    import pyro.poutine as poutine

    values, ladj = {}, 0.0
    # split a batch of one: sites.split fails on an unbatched z for a scalar site
    for site, piece in flowvi.targets.sites.split(model.target.sites, z[None]):
        piece = piece[0]
        value = site.transform(piece)
        values[site.name] = value
        ladj += float(site.transform.log_abs_det_jacobian(piece, value).sum())
    trace = poutine.trace(poutine.condition(model.pyro_model, data=values)).get_trace()
    return float(trace.log_prob_sum()) + ladj


def check_model(model: Model, points: int = 4) -> dict:
    """Target vs Pyro model (vs the gym's density): the differences at ``points`` points near the
    reference (mean + N(0, sd²) draws, float32); they must not vary (a constant is allowed)."""
    gen = torch.Generator().manual_seed(0)
    z = (model.mean + model.sd * torch.randn(points, len(model.mean), generator=gen)).float()
    ours = model.target.log_prob(z).double()
    out = {}
    others = {"pyro": lambda p: pyro_log_joint(model, p)}
    if model.gym is not None:
        others["gym"] = model.gym
    for name, fn in others.items():
        diff = torch.tensor([fn(p) for p in z], dtype=torch.float64) - ours
        out[name] = {
            "offset": float(diff.mean()),
            "spread": float(diff.max() - diff.min()),
            "log_prob": ours.tolist(),
        }
        tol = 1e-4 * float(ours.abs().max()) + 1e-3
        if out[name]["spread"] > tol:
            raise AssertionError(f"{model.target.name}: target and {name} disagree: {out[name]}")
    return out


# ----------------------------------------------------------------------------------- fitting
class NonFiniteLoss(FloatingPointError):
    """A peer library's loss turned NaN or infinite (the peers raise nothing themselves)."""


def fit_options(s: argparse.Namespace) -> tuple[dict, dict]:
    """``flowvi.fit``'s hyperparameters as passed (signature defaults unless overridden) and its
    signature defaults."""
    defaults = {
        name: p.default
        for name, p in inspect.signature(flowvi.fit).parameters.items()
        if name not in NOT_OPTIONS and p.default is not inspect.Parameter.empty
    }
    options = dict(defaults)
    for name in ("lr", "batch_size", "anneal_iters", "beta0"):
        if getattr(s, name) is not None:
            if name not in defaults:
                raise SystemExit(f"flowvi.fit has no option {name!r}; its options: {defaults}")
            options[name] = getattr(s, name)
    for item in s.fit_option:
        key, _, value = item.partition("=")
        if key not in defaults:
            raise SystemExit(f"flowvi.fit has no option {key!r}; its options: {defaults}")
        kind = type(defaults[key])
        options[key] = (
            value == "True"
            if kind is bool
            else value
            if kind is str
            else float(value)
            if defaults[key] is None
            else kind(value)
        )
    return options, defaults


def init_gaussian(guide: torch.nn.Module, scale: float) -> None:
    """Location 0 and scale ``scale`` for the guide's Gaussian part: the affine or triangular
    layer of a Gaussian guide, else the flow's diagonal base (by
    ``flowvi.inference.guides.initialize`` where flowvi has it, else by the parameters' names
    of flowvi at 685760a)."""
    try:
        from flowvi.inference.guides import initialize
    except ImportError:
        initialize = None
    if initialize is not None:
        if not initialize(guide, scale=scale):
            raise ValueError(f"no Gaussian part to initialize in {type(guide).__name__}")
        return
    params = dict(guide.named_parameters())
    with torch.no_grad():
        if "layers.0.params.log_scale" in params:  # mean-field
            params["layers.0.params.loc"].zero_()
            params["layers.0.params.log_scale"].fill_(math.log(scale))
        elif "layers.0.params.matrix" in params:  # full-rank: raw diagonal is ln of L's
            params["layers.0.params.loc"].zero_()
            matrix = params["layers.0.params.matrix"]
            matrix.zero_()
            matrix.diagonal().fill_(math.log(scale))
        elif "base.log_scale" in params:
            params["base.loc"].zero_()
            params["base.log_scale"].fill_(math.log(scale))
        else:
            raise ValueError(f"no Gaussian part to initialize in {sorted(params)[:4]}...")


class _Sampler:
    """A fitted peer guide as ``rsample_and_log_prob`` over the unconstrained vector."""

    def __init__(self, distribution) -> None:
        self.distribution = distribution

    def rsample_and_log_prob(self, shape):
        x = self.distribution.rsample(shape)
        return x, self.distribution.log_prob(x)


def fit_flowvi(name: str, model: Model, s: argparse.Namespace, options: dict):
    guide = build_guide(name, model.target.dim)
    if s.init_scale is not None:
        init_gaussian(guide, s.init_scale)
    with torch.no_grad():
        guide.initial_sd = float(guide.sample((1000,)).std(0).median())
    flowvi.fit(guide, model.target, iters=s.steps, progress=False, **options)
    return guide


def fit_pyro(name: str, model: Model, s: argparse.Namespace):
    import pyro
    import pyro.distributions as dist
    from pyro.infer import SVI, Trace_ELBO, autoguide

    pyro.clear_param_store()
    guide = getattr(autoguide, PYRO_GUIDES[name])(model.pyro_model)
    elbo = Trace_ELBO(num_particles=s.batch, vectorize_particles=True, max_plate_nesting=1)
    svi = SVI(model.pyro_model, guide, pyro.optim.Adam({"lr": s.peer_lr}), elbo)
    for step in range(s.steps):
        loss = svi.step()
        if not math.isfinite(loss):
            raise NonFiniteLoss(f"Pyro SVI loss {loss} at step {step}")
    if name == "pyro-normal":  # one Normal per site: concatenated in the sites' order
        with torch.no_grad():
            loc = torch.cat(
                [getattr(guide.locs, site.name).reshape(-1) for site in model.target.sites]
            )
            scale = torch.cat(
                [getattr(guide.scales, site.name).reshape(-1) for site in model.target.sites]
            )
        return _Sampler(dist.Normal(loc, scale).to_event(1))
    return _Sampler(guide.get_posterior())


def fit_zuko(name: str, model: Model, s: argparse.Namespace):
    import zuko

    d = model.target.dim
    passes = 2 if name == "zuko-maf" and d > 64 else None
    maf = zuko.flows.MAF(d, transforms=3, hidden_features=(64, 64), passes=passes)
    flow = maf
    if name == "zuko-iaf":  # the same transforms inverted: one network pass per sample
        layers = [zuko.flows.LazyInverse(t) for t in reversed(list(maf.transform.transforms))]
        flow = zuko.flows.Flow(layers, maf.base)
    optimizer = torch.optim.Adam(flow.parameters(), lr=s.peer_lr)
    for step in range(s.steps):
        x, log_q = flow().rsample_and_log_prob((s.batch,))
        loss = (log_q - model.target.log_prob(x)).mean()
        if not torch.isfinite(loss):
            raise NonFiniteLoss(f"zuko reverse-KL loss {float(loss)} at step {step}")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return _Sampler(flow())


@torch.no_grad()
def score(guide, model: Model, draws: int, chunk: int = 250) -> dict:
    xs, log_ws = [], []
    for start in range(0, draws, chunk):
        x, log_q = guide.rsample_and_log_prob((min(chunk, draws - start),))
        xs.append(x.double())
        log_ws.append(model.target.log_prob(x).double() - log_q.double())
    x, log_w = torch.cat(xs), torch.cat(log_ws)
    ok = torch.isfinite(log_w) & torch.isfinite(x).all(-1)
    x, lw = x[ok], log_w[ok]
    sd_ratio = x.std(0) / model.sd
    mean_error = (x.mean(0) - model.mean) / model.sd
    return {
        "elbo": float(log_w.mean()),
        "elbo_se": float(log_w.std() / math.sqrt(draws)),
        "nonfinite_draws": int((~ok).sum()),
        "khat": float(psis_khat(lw)),
        "sd_error": float((sd_ratio - 1).abs().mean()),
        "sd_ratio_median": float(sd_ratio.median()),
        "sd_ratio_min": float(sd_ratio.min()),
        "sd_ratio_max": float(sd_ratio.max()),
        "mean_error": float(mean_error.abs().mean()),
        "mean_error_max": float(mean_error.abs().max()),
    }


def settings_of(
    model: str, guide: str, seed: int, s: argparse.Namespace, options: dict, code: str
) -> dict:
    out = {
        "model": model,
        "guide": guide,
        "library": library(guide),
        "seed": seed,
        "steps": s.steps,
        "draws": s.eval_draws,
    }
    if library(guide) == "flowvi":
        return out | {"fit_options": options, "init_scale": s.init_scale, "flowvi_code": code}
    return out | {"batch_size": s.batch, "lr": s.peer_lr}


def run_one(model: Model, settings: dict, s: argparse.Namespace, options: dict) -> dict:
    guide_name, seed = settings["guide"], settings["seed"]
    torch.manual_seed(seed)
    record: dict = {}
    start = time.perf_counter()
    try:
        if library(guide_name) == "flowvi":
            guide = fit_flowvi(guide_name, model, s, options)
        elif library(guide_name) == "pyro":
            import pyro

            pyro.set_rng_seed(seed)
            guide = fit_pyro(guide_name, model, s)
        else:
            guide = fit_zuko(guide_name, model, s)
    except Exception as error:  # any failure is a result: recorded verbatim, the run goes on
        record["seconds"] = time.perf_counter() - start
        record["failure"] = f"{type(error).__name__}: {error}"
        return record
    record["seconds"] = time.perf_counter() - start
    record["failure"] = None
    if hasattr(guide, "initial_sd"):
        record["initial_sd_median"] = guide.initial_sd
    torch.manual_seed(seed + 1000)
    try:
        record |= score(guide, model, s.eval_draws)
    except Exception as error:
        record["failure"] = f"scoring: {type(error).__name__}: {error}"
    return record


# ------------------------------------------------------------------------------ bookkeeping
# the files of flowvi that decide how a guide is built and fitted
FITTING_CODE = ("fitting.py", "train.py", "objectives.py", "fused.py", "distributions.py",
                "inference/guides.py", "flows", "transforms")  # fmt: skip


def _git(*args: str) -> subprocess.CompletedProcess:
    root = Path(__file__).resolve().parent.parent
    return subprocess.run(["git", *args], cwd=root, capture_output=True, check=False)


def flowvi_code() -> dict:
    """Which flowvi fits: a hash of the fitting code as imported (``FITTING_CODE``) and whether
    it is the repository HEAD's (the fits may run on uncommitted changes or another tree)."""
    package = Path(flowvi.__file__).parent
    files = sorted(
        f.relative_to(package).as_posix()
        for entry in FITTING_CODE
        for f in ([package / entry] if entry.endswith(".py") else (package / entry).rglob("*.py"))
    )
    here, head = hashlib.sha1(), hashlib.sha1()
    for rel in files:
        here.update(rel.encode() + (package / rel).read_bytes())
        shown = _git("show", f"HEAD:src/flowvi/{rel}")
        head.update(rel.encode() + (shown.stdout if shown.returncode == 0 else b"missing"))
    return {"sha": here.hexdigest()[:12], "is_head": here.hexdigest() == head.hexdigest()}


def environment() -> dict:
    shown = _git("rev-parse", "--short", "HEAD")
    commit = shown.stdout.decode().strip() if shown.returncode == 0 else None
    versions = {"flowvi": flowvi.__version__, "torch": torch.__version__}
    for package in ("pyro-ppl", "zuko", "inference-gym", "tensorflow-probability"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    machine = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.machine(),
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
    }
    return {"commit": commit, "flowvi_code": flowvi_code(), "versions": versions,
            "machine": machine}  # fmt: skip


def load(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append(path: Path, record: dict) -> None:
    """One line, appended in one write (processes sharing the file do not interleave)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(finite(record), allow_nan=False, sort_keys=True) + "\n"
    with open(path, "a") as f:
        f.write(line)


def key(settings: dict) -> str:
    return json.dumps(settings, sort_keys=True)


def label(settings: dict, budget: int | None = None) -> str:
    """A short name for a record's fitting settings; the samples per step are left out when they
    are ``budget``, the peers'."""
    if settings["library"] != "flowvi":
        return (
            f"lr {settings['lr']:g}"
            if budget
            else f"S {settings['batch_size']}, lr {settings['lr']:g}"
        )
    o = settings["fit_options"]
    parts = []
    if "anneal_iters" in o:
        parts.append(
            "no anneal"
            if not o["anneal_iters"]
            else f"anneal {o['anneal_iters']} from {o.get('beta0', '?')}"
        )
    if "anneal" in o:
        parts.append(
            f"anneal {o['anneal']:g} from {o.get('beta0')}" if o["anneal"] else "no anneal"
        )
    if o.get("batch_size") != budget:
        parts.append(f"S {o.get('batch_size')}")
    parts.append(f"lr {o.get('lr'):g}")
    if o.get("schedule", "constant") != "constant":
        parts.append(f"{o['schedule']} rate")
    if o.get("optimizer", "adam") != "adam":
        parts.append(o["optimizer"])
    if settings.get("init_scale") is not None:
        parts.append(f"init sd {settings['init_scale']:g}")
    parts.append(f"code {settings.get('flowvi_code')}")
    return ", ".join(parts)


def _median(values: list) -> float:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.median(values) if values else math.nan


def markdown(records: list[dict]) -> str:
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        st = r["settings"]
        groups.setdefault((st["model"], st["guide"], label(st), st["steps"]), []).append(r)
    out = [
        "| model | guide | settings | steps | fits (failed) | ELBO | ± se | PSIS k̂ "
        "| mean abs sd err | median sd ratio | mean abs mean err | s/fit |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    order = {m: i for i, m in enumerate(MODELS)}
    gorder = {g: i for i, g in enumerate(GUIDES)}
    for (model, guide, lab, steps), group in sorted(
        groups.items(), key=lambda kv: (order.get(kv[0][0], 99), gorder.get(kv[0][1], 99), kv[0])
    ):
        ok = [r for r in group if r["failure"] is None]
        cells = [
            fmt(_median([r.get("elbo") for r in ok]), ".2f"),
            fmt(_median([r.get("elbo_se") for r in ok]), ".2f"),
            fmt(_median([r.get("khat") for r in ok]), ".2f"),
            fmt(_median([r.get("sd_error") for r in ok]), ".3f"),
            fmt(_median([r.get("sd_ratio_median") for r in ok]), ".3f"),
            fmt(_median([r.get("mean_error") for r in ok]), ".3f"),
            fmt(_median([r.get("seconds") for r in group]), ".1f"),
        ]
        out.append(
            f"| {model} | {guide} | {lab} | {steps} | {len(group)} "
            f"({len(group) - len(ok)}) | " + " | ".join(cells) + " |"
        )
    failures = sorted(
        {
            (r["settings"]["model"], r["settings"]["guide"], label(r["settings"]), r["failure"])
            for r in records
            if r["failure"]
        }
    )
    if failures:
        out.append("\nFailures:\n")
        out += [f"- {m} / {g} ({lab}): `{text}`" for m, g, lab, text in failures]
    return "\n".join(out)


def summary(records: list[dict]) -> str:
    """One row per (guide, settings), one column per model: the medians over seeds of
    ELBO / mean |sd err| / seconds per fit, and the failures. Samples per step are named only
    where they differ from the peers' on that model."""
    models = [m for m in MODELS if any(r["settings"]["model"] == m for r in records)]
    budget = {r["settings"]["model"]: r["settings"]["batch_size"] for r in records
              if r["settings"]["library"] != "flowvi"}  # fmt: skip
    rows: dict[tuple, dict[str, list[dict]]] = {}
    for r in records:
        st = r["settings"]
        lab = label(st, budget.get(st["model"]))
        rows.setdefault((st["guide"], lab), {}).setdefault(st["model"], []).append(r)
    gorder = {g: i for i, g in enumerate(GUIDES)}
    out = [
        "| guide | settings | " + " | ".join(models) + " |",
        "|---|---|" + "---:|" * len(models),
    ]
    for (guide, lab), by_model in sorted(rows.items(), key=lambda kv: (gorder[kv[0][0]], kv[0])):
        cells = []
        for m in models:
            group = by_model.get(m, [])
            ok = [r for r in group if r["failure"] is None]
            if not group:
                cells.append("")
                continue
            cell = (
                f"{fmt(_median([r.get('elbo') for r in ok]), '.2f')} / "
                f"{fmt(_median([r.get('sd_error') for r in ok]), '.3f')} / "
                f"{fmt(_median([r.get('seconds') for r in group]), '.0f')} s"
            )
            if len(ok) < len(group):
                cell += f" ({len(group) - len(ok)} of {len(group)} failed)"
            cells.append(cell)
        out.append(f"| {guide} | {lab} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    parser.add_argument("--guides", nargs="+", default=DEFAULT_GUIDES, choices=GUIDES)
    parser.add_argument(
        "--libraries",
        nargs="+",
        default=["flowvi", "pyro", "zuko"],
        choices=["flowvi", "pyro", "zuko"],
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=3000, help="gradient steps, every guide")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="samples per step, every guide (default: flowvi.fit's)",
    )
    parser.add_argument(
        "--lr",
        type=float,
        default=None,
        help="Adam learning rate, every guide (default: flowvi.fit's)",
    )
    parser.add_argument(
        "--anneal-iters",
        type=int,
        default=None,
        help="flowvi.fit's anneal_iters (default: its own)",
    )
    parser.add_argument("--beta0", type=float, default=None, help="flowvi.fit's beta0")
    parser.add_argument(
        "--fit-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other option of flowvi.fit (repeatable)",
    )
    parser.add_argument(
        "--init-scale",
        type=float,
        default=None,
        help="start flowvi's Gaussian part at location 0 and this scale",
    )
    parser.add_argument("--eval-draws", type=int, default=10_000)
    parser.add_argument("--smoke", action="store_true", help="tiny budgets; results not saved")
    parser.add_argument("--out", type=Path, default=RESULTS / "posteriors.jsonl")
    parser.add_argument("--markdown", action="store_true", help="print the table of all records")
    parser.add_argument(
        "--summary",
        action="store_true",
        help="print one row per guide and settings, one column per model: "
        "ELBO / mean |sd err| / seconds (medians over seeds)",
    )
    parser.add_argument("--table-only", action="store_true", help="fit nothing")
    args = parser.parse_args(argv)
    if args.smoke:
        args.seeds, args.steps, args.eval_draws = [0], 20, 1000
        args.batch_size = args.batch_size or 32
    return args


def main(argv=None) -> None:
    one_thread()
    torch.set_default_dtype(torch.float32)
    s = parse_args(argv)
    options, defaults = fit_options(s)
    # the peers take the same budget: flowvi's samples per step and learning rate as passed
    s.batch, s.peer_lr = options.get("batch_size", 256), options.get("lr", 3e-3)
    records = [] if s.smoke else load(s.out)
    done = {key(r["settings"]) for r in records}
    env = environment()
    guides = [g for g in s.guides if library(g) in s.libraries]
    for name in [] if s.table_only else s.models:
        model = None
        for guide in guides:
            for seed in s.seeds:
                settings = settings_of(name, guide, seed, s, options, env["flowvi_code"]["sha"])
                if not s.smoke and key(settings) in done:
                    continue
                if model is None:
                    model = BUILDERS[name]()
                    model.check = check_model(model)
                    print(
                        f"{name}: d = {model.target.dim}, check {json.dumps(model.check)}",
                        flush=True,
                    )
                result = run_one(model, settings, s, options)
                record = {
                    "settings": settings,
                    **result,
                    "check": model.check,
                    "reference": model.reference,
                    "fit_defaults": defaults,
                    "load_average": os.getloadavg()[0],
                    **env,
                }
                print(
                    f"{name} {guide} seed {seed} [{label(settings)}]: "
                    + ", ".join(
                        f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                        for k, v in result.items()
                    ),
                    flush=True,
                )
                if s.smoke:
                    records.append(record)
                else:
                    append(s.out, record)
                    records.append(record)
    if s.markdown:
        print(markdown(records))
    if s.summary:
        print(summary(records))


if __name__ == "__main__":
    main()

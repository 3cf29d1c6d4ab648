"""Benchmark: BBVI variance reduction, and Gaussian and flow guides against reference posteriors.

Three parts, each a list of records in ``benchmarks/results/bbvi.jsonl`` (records already there
are skipped, so an interrupted run resumes):

1. ``variance``: the variance of ELBO-gradient estimators (trace of the covariance over every
   guide parameter, ``--repeats`` independent estimates of S samples) on

   - ``eight-schools``: a mean-field Gaussian guide fitted first (1500 STL steps), every
     estimator of ``flowvi.inference.bbvi`` (Rao-Blackwellized with the model's Markov blankets);
   - ``gmm-assignments``: the Bayesian mixture (K = 3, d = 2, N = 200 simulated points, σ = 5)
     with discrete assignments, a mean-field guide after 100 score-function steps; score
     function plain / Rao-Blackwellized / control variates / both, and ``reparam`` (pathwise
     for the means, score function for the assignments);

   reduction = plain score-function variance ÷ the estimator's.
2. ``guides``: fits to the non-centered eight-schools posterior, scored against the 2000 NUTS
   draws that ship with arviz: per-coordinate mean and sd errors in units of the NUTS posterior
   sd (max and RMS over the 10 coordinates μ, ln τ, θ̃_1..8) and the PSIS k̂ of 20,000 draws;
   flowvi's mean-field, full-rank, IAF (4 layers, hidden 32-32), RealNVP (6), NSF (4), and
   an IAF matched to Pyro's default (1 layer, hidden 3d + 1 = 31, standard normal base), all
   fitted by ``flowvi.fit``, beside Pyro's ``AutoIAFNormal`` (its defaults) fitted by Pyro's
   ``SVI`` with ``Trace_ELBO`` (vectorized particles). Same budget for all: ``--iters`` Adam
   steps (lr ``--lr``) of ``--batch`` samples (particles), float32, one thread; seconds = the
   fit's wall time after an untimed 20-step warm-up of each method.
3. ``logistic``: the same guides (not Pyro) on Bayesian logistic regression for breast_cancer
   (standardized features, N(0, 1) prior on the 31 weights), against a reference from a long
   run of HMC written here (64 chains, 1000 warm-up iterations adapting one step size per chain
   to acceptance 0.8 and a dense mass matrix, then 2000 draws each, 16 leapfrog steps); its
   split R-hat and bulk ESS (arviz) are recorded.

    pip install -e ".[dev,bench]"
    python -m benchmarks.bbvi --markdown
    python -m benchmarks.bbvi --smoke --markdown    # tiny budgets, a minute: checks the script
"""

from __future__ import annotations

import argparse
import math
import os
import time
import warnings
from pathlib import Path

import torch

import flowvi
from benchmarks.common import (
    RESULTS,
    fmt,
    load_records,
    median,
    one_thread,
    provenance,
    save_records,
)
from flowvi.flows import build
from flowvi.inference.bbvi import (
    GaussianMixtureModel,
    MeanField,
    NormalFactors,
    fit_bbvi,
)
from flowvi.inference.cavi import simulate
from flowvi.inference.estimators import model_study
from flowvi.inference.guides import assess, build_guide
from flowvi.targets import EightSchools, LogisticRegression

GUIDES = ["mean-field", "full-rank", "iaf", "realnvp", "nsf", "iaf-pyro-size", "pyro-autoiaf"]
VARIANCE_ESTIMATORS = {
    "eight-schools": ["score", "score-rb", "score-cv", "score-rb-cv", "reparam", "stl"],
    "gmm-assignments": ["score", "score-rb", "score-cv", "score-rb-cv", "reparam"],
}


# ----------------------------------------------------------------------------- variance part
def variance_records(problem: str, s: argparse.Namespace) -> list[dict]:
    torch.manual_seed(0)
    if problem == "eight-schools":
        target = EightSchools()
        guide = MeanField([NormalFactors(10)]).double()
        fit_bbvi(guide, target, iters=s.fit_iters, samples=32, lr=1e-2, estimator="stl")
        log_joint, local = target, target.local
    else:
        data = simulate(200, 3, 2, seed=0)
        model = GaussianMixtureModel(data.x, k=3)
        guide = model.guide(generator=torch.Generator().manual_seed(0)).double()
        fit_bbvi(guide, model.log_joint, iters=100, samples=16, lr=0.1, local=model.local)
        log_joint, local = model.log_joint, model.local
    rows = model_study(
        log_joint,
        guide,
        s.samples,
        repeats=s.repeats,
        local=local,
        estimators=VARIANCE_ESTIMATORS[problem],
        problem=problem,
    )
    return [{"part": "variance", "repeats": s.repeats, **row} for row in rows]


# ------------------------------------------------------------------------------ guides part
def flowvi_guide(name: str, d: int):
    if name == "iaf-pyro-size":
        return build("iaf", d, length=1, hidden=(3 * d + 1,))
    return build_guide(name, d)


def fit_flowvi(name: str, target, iters: int, s: argparse.Namespace):
    guide = flowvi_guide(name, target.dim)
    flowvi.fit(guide, target, iters=iters, batch_size=s.batch, lr=s.lr,
               progress=False)  # fmt: skip
    return guide


class _PyroGuide:
    """Pyro's fitted AutoIAFNormal as something ``assess`` can score: samples of the
    unconstrained latent vector (μ, ln τ, θ̃) with their exact ln q (Pyro's transformed
    distribution scores the samples it just drew)."""

    def __init__(self, guide) -> None:
        self.posterior = guide.get_posterior()

    def rsample_and_log_prob(self, shape):
        x = self.posterior.rsample(shape)
        return x, self.posterior.log_prob(x)


def fit_pyro(iters: int, s: argparse.Namespace):
    import pyro
    import pyro.distributions as dist
    from pyro.infer import SVI, Trace_ELBO
    from pyro.infer.autoguide import AutoIAFNormal

    target = EightSchools()
    y, sigma = target.y.float(), target.sigma.float()

    def model():
        mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
        tau = pyro.sample("tau", dist.HalfCauchy(5.0))
        with pyro.plate("schools", 8):
            theta_t = pyro.sample("theta_t", dist.Normal(0.0, 1.0))
            pyro.sample("obs", dist.Normal(mu + tau * theta_t, sigma), obs=y)

    pyro.clear_param_store()
    guide = AutoIAFNormal(model)
    elbo = Trace_ELBO(num_particles=s.batch, vectorize_particles=True, max_plate_nesting=1)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": s.lr}), elbo)
    for _ in range(iters):
        svi.step()
    return _PyroGuide(guide)


def guide_record(part: str, name: str, seed: int, s: argparse.Namespace, target, ref) -> dict:
    def fit(iters):
        torch.manual_seed(seed)
        if name == "pyro-autoiaf":
            import pyro

            pyro.set_rng_seed(seed)
            return fit_pyro(iters, s)
        return fit_flowvi(name, target, iters, s)

    fit(20)  # warm-up: lazy imports, first optimizer steps
    start = time.perf_counter()
    guide = fit(s.iters)
    seconds = time.perf_counter() - start
    torch.manual_seed(seed + 1000)
    scores = assess(guide, target, ref, samples=s.eval_samples)
    return {
        "part": part,
        "guide": name,
        "seed": seed,
        "iters": s.iters,
        "batch": s.batch,
        "lr": s.lr,
        "seconds": seconds,
        "ms_per_iter": 1e3 * seconds / s.iters,
        "load_average": os.getloadavg()[0],
        **scores,
    }


# --------------------------------------------------------------------- HMC reference (logistic)
def hmc_reference(target, s: argparse.Namespace) -> tuple[torch.Tensor, dict]:
    """Vectorized HMC on ``target`` (float64): draws ``(chains * draws, d)`` and diagnostics.

    Exact (every proposal passes a Metropolis test). Warm-up: one step size per chain adapted
    toward acceptance 0.8; at half of the warm-up, the chains are preconditioned by the mean
    ``m`` and Cholesky factor ``L`` of the second quarter's draws (HMC on ``u`` with
    ``z = m + L u``, i.e. a dense mass matrix), which the collinear breast-cancer features need.
    """
    torch.manual_seed(0)
    chains, d, leapfrog, warm = s.hmc_chains, target.dim, 16, s.hmc_warmup
    m = torch.zeros(d, dtype=torch.float64)
    chol = torch.eye(d, dtype=torch.float64)

    def grad_log_p(u):  # log density of u (up to the constant ln|det L|) and its gradient
        u = u.detach().requires_grad_()
        lp = target.log_prob(m + u @ chol.T)
        (g,) = torch.autograd.grad(lp.sum(), u)
        return lp.detach(), g

    u = 0.1 * torch.randn(chains, d, dtype=torch.float64)
    step = torch.full((chains, 1), 0.02, dtype=torch.float64)
    lp, g = grad_log_p(u)
    kept, window, accepted = [], [], 0.0
    for t in range(warm + s.hmc_draws):
        p = torch.randn(chains, d, dtype=torch.float64)
        u_new, p_new = u, p + 0.5 * step * g
        for k in range(leapfrog):
            u_new = u_new + step * p_new
            lp_new, g_new = grad_log_p(u_new)
            p_new = p_new + (step if k < leapfrog - 1 else 0.5 * step) * g_new
        log_ratio = (lp_new - 0.5 * (p_new * p_new).sum(-1)) - (lp - 0.5 * (p * p).sum(-1))
        accept_prob = torch.exp(torch.clamp(log_ratio, max=0.0)).nan_to_num(0.0)
        accept = torch.rand(chains, dtype=torch.float64) < accept_prob
        u = torch.where(accept[:, None], u_new, u)
        lp = torch.where(accept, lp_new, lp)
        g = torch.where(accept[:, None], g_new, g)
        if t < warm:  # Robbins-Monro step-size adaptation toward acceptance 0.8, per chain
            step = step * torch.exp((accept_prob - 0.8)[:, None] / math.sqrt(t % (warm // 2) + 10))
            if t >= warm // 4:
                window.append(m + u @ chol.T)
            if t == warm // 2 - 1:  # precondition by the draws' mean and covariance
                z = m + u @ chol.T
                draws = torch.cat(window)
                m, chol = draws.mean(0), torch.linalg.cholesky(torch.cov(draws.T))
                u = torch.linalg.solve_triangular(chol, (z - m).T, upper=False).T
                lp, g = grad_log_p(u)
                step.fill_(0.3)
        else:
            kept.append(m + u @ chol.T)
            accepted += float(accept_prob.mean())
    draws = torch.stack(kept, 1)  # (chains, draws, d)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import arviz

        dataset = arviz.convert_to_dataset({"w": draws.numpy()})
        rhat = float(arviz.rhat(dataset)["w"].max())
        ess = float(arviz.ess(dataset)["w"].min())
    info = {"rhat_max": rhat, "ess_bulk_min": ess, "accept": accepted / s.hmc_draws}
    return draws.reshape(-1, d), info


def reference_for(part: str, s: argparse.Namespace, cache: dict):
    if part not in cache:
        if part == "guides":
            cache[part] = (EightSchools(), EightSchools.reference(), {})
        else:
            target = LogisticRegression.breast_cancer()
            start = time.perf_counter()
            draws, info = hmc_reference(target, s)
            info["seconds"] = time.perf_counter() - start
            print(f"HMC reference: {info}", flush=True)
            cache[part] = (target, draws, info)
    return cache[part]


# ------------------------------------------------------------------------------ tables
def markdown(records: list[dict]) -> str:
    out = []
    var = [r for r in records if r["part"] == "variance"]
    for problem in VARIANCE_ESTIMATORS:
        rows = [r for r in var if r["problem"] == problem]
        if not rows:
            continue
        sizes = sorted({r["samples"] for r in rows})
        out.append(f"\n{problem}: variance of the gradient estimate (reduction vs plain score)\n")
        out.append("| estimator | " + " | ".join(f"S = {n}" for n in sizes) + " |")
        out.append("|---|" + "---:|" * len(sizes))
        for name in VARIANCE_ESTIMATORS[problem]:
            cells = []
            for n in sizes:
                r = next(r for r in rows if r["estimator"] == name and r["samples"] == n)
                cells.append(f"{r['variance']:.3g} ({r['reduction']:.3g}×)")
            out.append(f"| {name} | " + " | ".join(cells) + " |")
    for part, title in (("guides", "eight schools vs NUTS"), ("logistic", "logistic vs HMC")):
        rows = [r for r in records if r["part"] == part]
        if not rows:
            continue
        out.append(f"\n{title}: medians over seeds (errors in reference posterior sd)\n")
        out.append(
            "| guide | seeds | max mean err | RMS mean err | max sd err | RMS sd err | PSIS k̂ "
            "| ELBO | s/fit | ms/iter |"
        )
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for name in GUIDES:
            group = [r for r in rows if r["guide"] == name]
            if not group:
                continue
            cells = [
                fmt(median(group, "max_abs_mean_error"), ".3f"),
                fmt(median(group, "rms_mean_error"), ".3f"),
                fmt(median(group, "max_abs_sd_error"), ".3f"),
                fmt(median(group, "rms_sd_error"), ".3f"),
                fmt(median(group, "khat"), ".2f"),
                fmt(median(group, "elbo"), ".3f"),
                fmt(median(group, "seconds"), ".1f"),
                fmt(median(group, "ms_per_iter"), ".2f"),
            ]
            out.append(f"| {name} | {len(group)} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--parts", nargs="+", default=["variance", "guides", "logistic"])
    parser.add_argument("--guides", nargs="+", default=GUIDES, choices=GUIDES)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--iters", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=256, help="samples (particles) per step")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--eval-samples", type=int, default=20_000)
    parser.add_argument("--samples", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--repeats", type=int, default=1000)
    parser.add_argument("--fit-iters", type=int, default=1500)
    parser.add_argument("--hmc-chains", type=int, default=64)
    parser.add_argument("--hmc-warmup", type=int, default=1000)
    parser.add_argument("--hmc-draws", type=int, default=2000)
    parser.add_argument("--smoke", action="store_true", help="tiny budgets; results not saved")
    parser.add_argument("--out", type=Path, default=RESULTS / "bbvi.jsonl")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    if args.smoke:
        args.seeds, args.iters, args.eval_samples = [0], 30, 2000
        args.samples, args.repeats, args.fit_iters = [16], 50, 50
        args.hmc_chains, args.hmc_warmup, args.hmc_draws = 8, 40, 40
    return args


def main(argv=None) -> None:
    one_thread()
    torch.set_default_dtype(torch.float32)
    s = parse_args(argv)
    records = [] if s.smoke else load_records(s.out)
    made = provenance("pyro-ppl")
    if "variance" in s.parts:
        for problem in VARIANCE_ESTIMATORS:
            if any(r["part"] == "variance" and r["problem"] == problem for r in records):
                continue
            print(f"variance: {problem}", flush=True)
            records += [r | made for r in variance_records(problem, s)]
            if not s.smoke:
                save_records(s.out, records)
    cache: dict = {}
    for part in ("guides", "logistic"):
        if part not in s.parts:
            continue
        for name in s.guides:
            if part == "logistic" and name == "pyro-autoiaf":
                continue
            for seed in s.seeds:
                key = (part, name, seed, s.iters, s.batch, s.lr)
                if any((r["part"], r.get("guide"), r.get("seed"), r.get("iters"), r.get("batch"),
                        r.get("lr")) == key for r in records):  # fmt: skip
                    continue
                target, ref, info = reference_for(part, s, cache)
                print(f"{part}: {name} seed {seed}", flush=True)
                record = guide_record(part, name, seed, s, target, ref)
                records.append(record | {"reference": info} | made)
                if not s.smoke:
                    save_records(s.out, records)
    if s.markdown:
        print(markdown(records))


if __name__ == "__main__":
    main()

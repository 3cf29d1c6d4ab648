r"""Variance of gradient estimators against the number of samples (the studies behind
``flowvi estimators``, :mod:`flowvi.app.estimators`).

Two problems, each estimated ``repeats`` times independently at every sample size :math:`S`:

1. The curriculum's exercise :math:`\nabla_\mu E_{\mathcal N(\mu, 1)}[X^2] = 2\mu`. With
   :math:`Y = X - \mu`, the per-sample variances are, in closed form,

   - score function :math:`X^2 Y`: :math:`15 + 14\mu^2 + \mu^4`;
   - with the optimal control variate :math:`a^* h`, :math:`h = Y`, :math:`a^* = 3 + \mu^2`:
     :math:`X^2 Y - a^* Y = Y^3 - 3Y + 2\mu Y^2`, variance :math:`6 + 8\mu^2`;
   - reparameterization :math:`2(\mu + Y)`: :math:`4`;

   so the estimator's variance is that over :math:`S` (the table gives the theory beside the
   measurement; the control variate's scale is estimated, so it is slightly above theory at
   small :math:`S`). One factor: Rao-Blackwellization changes nothing here.
2. The ELBO of the non-centered eight-schools posterior (:class:`flowvi.targets.EightSchools`)
   for a mean-field Gaussian guide fitted first (the gradient at the optimum is pure noise):
   every estimator of :func:`flowvi.inference.bbvi.elbo_gradient`, Rao-Blackwellized with the
   model's Markov-blanket terms. Variance is the trace of the estimator's covariance (summed
   over the 20 guide parameters). These gradients are heavy-tailed (:math:`\tau = e^{\ln\tau}`
   under a Gaussian guide is log-normal): two independent sets of 400 repeats gave variances
   differing by up to 3×, hence the default of 1000 repeats; read factors, not digits.

"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from flowvi.inference.bbvi import MeanField, NormalFactors, elbo_gradient

ESTIMATOR_SETTINGS = {
    "score": {"estimator": "score", "rao_blackwell": False, "control_variates": False},
    "score-rb": {"estimator": "score", "rao_blackwell": True, "control_variates": False},
    "score-cv": {"estimator": "score", "rao_blackwell": False, "control_variates": True},
    "score-rb-cv": {"estimator": "score", "rao_blackwell": True, "control_variates": True},
    "reparam": {"estimator": "reparam", "rao_blackwell": True, "control_variates": False},
    "stl": {"estimator": "stl", "rao_blackwell": True, "control_variates": False},
}
TOY_ESTIMATORS = ("score", "score-cv", "reparam")
COLUMNS = (
    "problem",
    "estimator",
    "samples",
    "variance",
    "variance_theory",
    "reduction",
    "max_z",
)


def toy_theory(mu: float) -> dict[str, float]:
    """Closed-form per-sample variances of the three estimators of d/dμ E[X²] (module doc)."""
    return {"score": 15 + 14 * mu**2 + mu**4, "score-cv": 6 + 8 * mu**2, "reparam": 4.0}


def toy_study(
    samples: Sequence[int], *, repeats: int, mu: float = 1.0, dtype=torch.float64
) -> list[dict]:
    r"""Variance of estimators of :math:`\nabla_\mu E_{\mathcal N(\mu,1)}[X^2]` at each :math:`S`.

    Rows: ``estimator``, ``samples``, ``mean`` (over repeats), ``variance`` (of one estimate),
    ``variance_theory``, ``reduction`` (plain score's variance over this one), and ``max_z``:
    :math:`|\bar g - 2\mu|` in standard errors (about :math:`|N(0,1)|` if unbiased).
    """
    guide = MeanField([NormalFactors(1, loc=torch.tensor([mu]))]).to(dtype)
    theory = toy_theory(mu)
    rows = []
    for s in samples:
        base = None
        for name in TOY_ESTIMATORS:
            grads, _ = elbo_gradient(
                guide,
                lambda z: (z**2).sum(-1),
                samples=s,
                repeats=repeats,
                entropy=False,
                **ESTIMATOR_SETTINGS[name],
            )
            g = grads["blocks.0.loc"][:, 0]
            variance = float(g.var())
            base = variance if base is None else base
            se = math.sqrt(variance / repeats)
            rows.append(
                {
                    "problem": "toy",
                    "estimator": name,
                    "samples": s,
                    "mean": float(g.mean()),
                    "exact": 2 * mu,
                    "variance": variance,
                    "variance_theory": theory[name] / s,
                    "reduction": base / variance,
                    "max_z": abs(float(g.mean()) - 2 * mu) / se,
                }
            )
    return rows


def model_study(
    target,
    guide: MeanField,
    samples: Sequence[int],
    *,
    repeats: int,
    local=None,
    estimators: Sequence[str] = tuple(ESTIMATOR_SETTINGS),
    problem: str | None = None,
) -> list[dict]:
    """Trace of the covariance of ELBO-gradient estimators for ``guide`` at each ``S``.

    Rows as in :func:`toy_study` (no theory); ``max_z`` compares each estimator's mean with the
    mean of the lowest-variance one at the same ``S``, in their joint standard errors (max over
    parameter components).
    """
    rows = []
    for s in samples:
        results = {}
        for name in estimators:
            grads, _ = elbo_gradient(
                guide, target, samples=s, repeats=repeats, local=local, **ESTIMATOR_SETTINGS[name]
            )
            g = torch.cat([v.reshape(repeats, -1) for v in grads.values()], -1)
            results[name] = (g.mean(0), g.var(0))
        best = min(results, key=lambda n: float(results[n][1].sum()))
        base = float(results[estimators[0]][1].sum())
        for name, (mean, var) in results.items():
            se = torch.sqrt((var + results[best][1]) / repeats).clamp_min(1e-300)
            z = 0.0 if name == best else float(((mean - results[best][0]).abs() / se).max())
            rows.append(
                {
                    "problem": problem or target.name,
                    "estimator": name,
                    "samples": s,
                    "variance": float(var.sum()),
                    "variance_theory": None,
                    "reduction": base / float(var.sum()),
                    "max_z": z,
                }
            )
    return rows

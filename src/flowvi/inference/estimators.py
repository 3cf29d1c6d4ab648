r"""Variance of gradient estimators against the number of samples: ``flowvi estimators``.

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

Writes ``estimators.json``, ``estimators.csv`` and ``estimators.png`` (log-log variance vs
:math:`S`).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from flowvi._checks import check_dim
from flowvi.inference.bbvi import MeanField, NormalFactors, elbo_gradient, fit_bbvi
from flowvi.targets import EightSchools

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


@dataclass(frozen=True)
class EstimatorsConfig:
    """Settings of ``flowvi estimators``; saved in ``estimators.json``."""

    samples: tuple[int, ...] = field(
        default=(4, 16, 64, 256, 1024),
        metadata={"help": "sample sizes S, e.g. 4,16,64 (each >= 3)"},
    )
    repeats: int = field(default=1000, metadata={"help": "independent estimates per S"})
    mu: float = field(default=1.0, metadata={"help": "μ of the X² exercise"})
    fit_iters: int = field(
        default=1500, metadata={"help": "iterations fitting the eight-schools guide first"}
    )
    seed: int = field(default=0, metadata={"help": "random seed"})

    def validate(self) -> None:
        """Raises ``ValueError`` for sample sizes below 3 (the leave-one-out control variate
        needs two other samples), non-positive counts, or a ``mu`` that is not a finite
        number."""
        if isinstance(self.mu, bool) or not isinstance(self.mu, int | float):
            raise ValueError(f"--mu must be a finite number, got {self.mu!r}")
        if not math.isfinite(self.mu):
            raise ValueError(f"--mu must be a finite number, got {self.mu}")
        if not self.samples or min(self.samples) < 3:
            raise ValueError(f"every sample size must be >= 3, got {self.samples}")
        check_dim(self.repeats, "--repeats")
        if self.repeats < 2:
            raise ValueError("--repeats must be at least 2 to estimate a variance")
        check_dim(self.fit_iters, "--fit-iters")


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


def run_estimators(
    config: EstimatorsConfig, directory: str | Path, *, progress: bool = True
) -> dict:
    """Run both studies and write ``estimators.{json,csv,png}`` to ``directory``, with a
    progress bar (tqdm, on standard error) over the sample sizes of each study and the guide's
    fit unless ``progress`` is false.

    Returns:
        ``{"config": ..., "rows": [...]}`` as written to the JSON file.
    """
    from flowvi.plot import variance_figure

    config.validate()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)

    def sizes(desc: str):
        return tqdm(config.samples, desc=f"estimators: {desc}", disable=not progress)

    rows = toy_study(sizes("toy, per S"), repeats=config.repeats, mu=config.mu)
    target = EightSchools()
    guide = MeanField([NormalFactors(target.dim)]).double()
    fit_bbvi(
        guide,
        target,
        iters=config.fit_iters,
        samples=32,
        lr=1e-2,
        estimator="stl",
        progress=progress,
    )
    rows += model_study(
        target, guide, sizes("eight schools, per S"), repeats=config.repeats, local=target.local
    )
    result = {"config": asdict(config), "rows": rows}
    (directory / "estimators.json").write_text(json.dumps(result, indent=2) + "\n")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    (directory / "estimators.csv").write_text(buffer.getvalue())
    variance_figure(
        rows,
        directory / "estimators.png",
        titles={
            "toy": f"∇_μ E_N(μ,1)[X²], μ = {config.mu:g} (dashed: theory)",
            "eight-schools": "eight schools ELBO, mean-field guide at its optimum",
        },
    )
    return result

"""A CAVI or SVI fit as a run (``flowvi cavi``): configuration in, a directory of results out."""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from flowvi._checks import check_choice, check_dim
from flowvi.app.options import command, given, output
from flowvi.app.rundir import record, training
from flowvi.data import read_table
from flowvi.inference.cavi import INITS, CAVIResult, cavi, check_prior_std, simulate, update_locals
from flowvi.inference.svi import SVIResult, svi
from flowvi.io import check_memory, run_directory, write_csv, write_json
from flowvi.settings import resolve_device

METHODS = ("cavi", "svi")


@dataclass(frozen=True)
class CAVIConfig:
    """Everything that determines a ``flowvi cavi`` run; saved as ``config.json``.

    ``data``: the path of a ``.npy`` / ``.csv`` table (rows are points, in units where the
    components have unit variance), of which ``test_fraction`` is held out at random; ``None``:
    ``n`` training and ``n_test`` held-out points simulated from the model itself with ``k``
    components in ``dim`` dimensions and the same ``prior_std``.

    ``method``: ``"cavi"`` (full passes until the relative ELBO change is below ``tol``, at most
    ``max_iter``) or ``"svi"`` (Hoffman et al. 2013: ``steps`` natural-gradient steps from
    minibatches of ``batch_size``, step sizes ρ_t = (t + ``tau``)^-``kappa``). Both keep the best
    final ELBO of ``restarts`` initializations (SVI restart r uses seed ``seed + r``).
    """

    data: str | None = field(
        default=None,
        metadata={
            "help": "a .npy or .csv table, one point per row, in units where the components "
            "have unit variance (none: simulated data)"
        },
    )
    method: str = field(
        default="cavi",
        metadata={
            "help": "cavi (full passes) or svi (natural-gradient minibatch steps)",
            "choices": METHODS,
        },
    )
    k: int = field(default=5, metadata={"help": "number of components K", "aliases": ("-K",)})
    prior_std: float = field(
        default=5.0, metadata={"help": "prior standard deviation σ of the component means"}
    )
    init: str = field(default="kmeans++", metadata={"help": "initialization", "choices": INITS})
    restarts: int = field(
        default=10, metadata={"help": "random initializations; the best ELBO is kept"}
    )
    tol: float = field(
        default=1e-8, metadata={"help": "relative ELBO change at which a restart has converged"}
    )
    max_iter: int = field(default=1000, metadata={"help": "maximum iterations per restart"})
    n: int = field(default=1000, metadata={"help": "simulated training points"})
    n_test: int = field(default=1000, metadata={"help": "simulated held-out points"})
    dim: int = field(default=2, metadata={"help": "dimension of simulated data"})
    batch_size: int = field(default=100, metadata={"help": "SVI: minibatch size |B|"})
    steps: int = field(default=2000, metadata={"help": "SVI: natural-gradient steps per restart"})
    tau: float = field(
        default=1.0, metadata={"help": "SVI: delay τ of the step sizes ρ_t = (t + τ)^-κ"}
    )
    kappa: float = field(default=0.7, metadata={"help": "SVI: forgetting rate κ in (0.5, 1]"})
    test_fraction: float = field(default=0.2, metadata={"help": "held-out share of a --data file"})
    seed: int = field(
        default=0, metadata={"help": "random seed (data split or simulation, initializations)"}
    )
    device: str = field(default="cpu", metadata={"help": "cpu, cuda, cuda:N or auto"})

    def validate(self) -> None:
        """Refuse impossible settings before any work starts.

        Raises:
            ValueError: naming the setting (as its command-line flag) and what is accepted.
        """
        check_choice(self.method, METHODS, "method")
        for name in ("k", "restarts", "max_iter", "n", "n_test", "dim", "batch_size", "steps"):
            check_dim(getattr(self, name), "--" + name.replace("_", "-"))
        try:
            check_prior_std(self.prior_std)
        except ValueError:
            raise ValueError(
                f"--prior-std must be a positive finite number, got {self.prior_std!r}"
            ) from None
        check_choice(self.init, INITS, "init")
        if not (math.isfinite(self.tol) and self.tol >= 0):
            raise ValueError(f"--tol must be a finite number >= 0, got {self.tol!r}")
        if not (math.isfinite(self.tau) and self.tau >= 0):
            raise ValueError(f"--tau must be a finite number >= 0, got {self.tau!r}")
        if not 0.5 < self.kappa <= 1:
            raise ValueError(f"--kappa must lie in (0.5, 1] (Robbins-Monro), got {self.kappa!r}")
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"--test-fraction must lie in (0, 1), got {self.test_fraction!r}")
        resolve_device(self.device)
        if self.data is not None and Path(self.data).suffix.lower() not in (".npy", ".csv"):
            raise ValueError(f"--data must be a .npy or .csv file, got {self.data!r}")


def load_data(config: CAVIConfig) -> tuple[Tensor, Tensor]:
    """``(train, test)``, float64 ``(n, d)`` each: simulated, or a file split at random
    (reproducibly from ``config.seed``).

    Raises:
        ValueError, FileNotFoundError: for unreadable or invalid files
            (:func:`flowvi.data.read_table`), or a file too small to hold out a test set and
            still have ``k`` training points.
    """
    if config.data is None:
        sample = simulate(
            config.n + config.n_test,
            config.k,
            config.dim,
            prior_std=config.prior_std,
            seed=config.seed,
        )
        return sample.x[: config.n], sample.x[config.n :]
    x = read_table(config.data)
    n_test = round(config.test_fraction * len(x))
    if n_test < 1 or len(x) - n_test < config.k:
        raise ValueError(
            f"{config.data} has {len(x)} rows: too few to hold out {config.test_fraction:.0%} "
            f"and fit K = {config.k} components (at least {config.k} training rows)"
        )
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(config.seed))
    return x[order[n_test:]], x[order[:n_test]]


def run_cavi(
    config: CAVIConfig, directory: str | Path, *, progress: bool = False
) -> dict[str, Any]:
    """Fit by CAVI or SVI (``config.method``) and write one run to ``directory``.

    Writes ``config.json`` (the settings, the data sizes, versions), ``trace.csv`` (CAVI:
    iteration, ELBO and ELBO per datum of the kept restart; SVI: step, examples seen, ρ_t and
    the full-data ELBO at the evaluated steps; nats), ``metrics.json`` and, for 2-D data,
    ``components.png`` (the training data coloured by their most responsible component, each
    component's mean and the 1 and 2 standard-deviation circles of its predictive density).
    Returns the metrics. ``progress``: a progress bar over SVI's restarts (tqdm).

    Raises:
        ValueError: for invalid settings or data (before any work; SVI also when
            ``batch_size`` exceeds the training set), or when ``directory`` already holds a run.
        FileNotFoundError: for a missing data file.
    """
    config.validate()
    directory = run_directory(directory, resumable=False)
    if config.data is None:  # simulated: its size is known before any work
        check_memory(8.0 * 4 * (config.n + config.n_test) * (config.dim + config.k), "the data")
    train, test = load_data(config)
    if config.method == "svi" and config.batch_size > len(train):
        raise ValueError(
            f"--batch-size {config.batch_size} exceeds the {len(train)} training points"
        )
    device = resolve_device(config.device)
    train, test = train.to(device), test.to(device)
    facts = {"d": train.shape[1], "train_points": len(train), "test_points": len(test)}
    with training(directory, record(config, "cavi", device, **facts), resume=False):
        start = time.perf_counter()
        if config.method == "cavi":
            fit = cavi(
                train,
                config.k,
                prior_std=config.prior_std,
                init=config.init,
                restarts=config.restarts,
                tol=config.tol,
                max_iter=config.max_iter,
                seed=config.seed,
            )
            seconds = time.perf_counter() - start
            metrics = _metrics(fit, test, seconds)
            header = ["iteration", "elbo", "elbo_per_datum"]
            rows = [(t, v, v / fit.n) for t, v in enumerate(fit.trace.tolist(), 1)]
            labels = fit.log_resp.argmax(-1)
        else:
            restarts = tqdm(range(config.restarts), desc="SVI restarts", disable=not progress)
            fits = [_svi(train, config, config.seed + r) for r in restarts]
            best = max(range(len(fits)), key=lambda r: fits[r].elbo)
            fit = fits[best]
            seconds = time.perf_counter() - start
            metrics = _svi_metrics(fit, [f.elbo for f in fits], best, test, seconds)
            header = ["step", "examples", "rho", "elbo", "elbo_per_datum"]
            rows = [(int(t), int(e), rho, v, v / fit.n) for t, e, rho, v in fit.trace.tolist()]
            labels = update_locals(train, fit.means, fit.variances).argmax(-1)
        write_csv(directory / "trace.csv", header, rows)
        write_json(directory / "metrics.json", metrics)
        if train.shape[1] == 2:
            from flowvi.plot import mixture_figure  # matplotlib only when a figure is drawn

            mixture_figure(
                train,
                fit.means,
                fit.variances,
                directory / "components.png",
                labels=labels,
                title=(
                    f"{config.method.upper()}, K = {config.k}: "
                    f"ELBO {metrics['elbo_per_datum']:.3f} nats/point, "
                    f"held-out {metrics['heldout_log_predictive']:.3f}"
                ),
            )
    return metrics


def _svi(train: Tensor, config: CAVIConfig, seed: int) -> SVIResult:
    return svi(
        train,
        config.k,
        prior_std=config.prior_std,
        batch_size=config.batch_size,
        steps=config.steps,
        tau=config.tau,
        kappa=config.kappa,
        init=config.init,
        seed=seed,
    )


def _heldout(fit: CAVIResult | SVIResult, test: Tensor) -> dict[str, float]:
    lpd = fit.log_predictive(test)
    se = float(lpd.std() / math.sqrt(len(lpd))) if len(lpd) > 1 else math.nan
    return {"heldout_log_predictive": float(lpd.mean()), "heldout_log_predictive_se": se}


def _svi_metrics(
    fit: SVIResult, elbos: list[float], best: int, test: Tensor, seconds: float
) -> dict[str, Any]:
    return {
        "method": "svi",
        "elbo": fit.elbo,
        "elbo_per_datum": fit.elbo_per_datum,
        "steps": fit.steps,
        "examples": fit.examples,
        "epochs": fit.examples / fit.n,
        "restarts": len(elbos),
        "best_restart": best,
        "restart_elbos": elbos,
        **_heldout(fit, test),
        "n_train": fit.n,
        "n_test": len(test),
        "means": fit.means.cpu().tolist(),
        "variances": fit.variances.cpu().tolist(),
        "seconds": seconds,
        "units": (
            "elbo: total nats over the training data (optimal local factors), elbo_per_datum = "
            "elbo / n_train; heldout_log_predictive: mean ln p(x*) over held-out points, nats"
        ),
    }


def _metrics(fit: CAVIResult, test: Tensor, seconds: float) -> dict[str, Any]:
    return {
        "method": "cavi",
        "elbo": fit.elbo,
        "elbo_per_datum": fit.elbo_per_datum,
        "iterations": fit.iterations,
        "converged": fit.converged,
        "restarts": len(fit.restart_elbos),
        "best_restart": fit.best_restart,
        "restart_elbos": fit.restart_elbos,
        "restart_iterations": fit.restart_iterations,
        **_heldout(fit, test),
        "n_train": fit.n,
        "n_test": len(test),
        "means": fit.means.cpu().tolist(),
        "variances": fit.variances.cpu().tolist(),
        "weights": fit.log_resp.exp().mean(0).cpu().tolist(),
        "seconds": seconds,
        "units": (
            "elbo: total nats over the training data, elbo_per_datum = elbo / n_train; "
            "heldout_log_predictive: mean ln p(x*) over held-out points, nats"
        ),
    }


def add_command(commands: Any) -> None:
    """``flowvi cavi``."""
    command(
        commands,
        "cavi",
        _cavi,
        config=CAVIConfig,
        out="cavi",
        help="CAVI or SVI for a Bayesian mixture of unit-variance Gaussians (Blei et al. 2017)",
        description=(
            "Coordinate-ascent variational inference for the Bayesian mixture of K "
            "unit-variance Gaussians with N(0, σ² I) priors on the means (Blei, Kucukelbir & "
            "McAuliffe 2017, Section 3), keeping the best ELBO of several random restarts. "
            "Writes config.json, metrics.json (ELBO, per datum, iterations, restarts, held-out "
            "log predictive density per datum), trace.csv (the ELBO per iteration) and, for "
            "2-D data, components.png. With no --data: points simulated from the model. "
            "--method svi fits the same model by stochastic VI (Hoffman et al. 2013) from "
            "minibatches, for data too large for full passes."
        ),
    )


def _cavi(args: argparse.Namespace) -> int:
    config = CAVIConfig(**given(args, CAVIConfig))
    config.validate()
    directory = output(args, config.method)
    m = run_cavi(config, directory, progress=not args.quiet)
    if config.method == "cavi":
        state = "converged" if m["converged"] else "not converged"
        work = f"{m['iterations']} iterations ({state})"
    else:
        work = f"{m['steps']} steps, {m['epochs']:.3g} epochs"
    print(
        f"ELBO {m['elbo']:.4f} nats ({m['elbo_per_datum']:.4f} per point, {m['n_train']} "
        f"points), {work}, best of {m['restarts']} restarts; "
        f"held-out log predictive {m['heldout_log_predictive']:.4f} "
        f"± {m['heldout_log_predictive_se']:.4f} nats per point -> {directory}"
    )
    return 0

"""``flowvi estimators``: the variance of gradient estimators against the number of samples, as
a table, a figure and JSON (the studies themselves are :mod:`flowvi.inference.estimators`)."""

from __future__ import annotations

import argparse
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from flowvi._checks import check_dim
from flowvi.app.options import command, given, output
from flowvi.inference.bbvi import MeanField, NormalFactors, fit_bbvi
from flowvi.inference.estimators import COLUMNS, model_study, toy_study
from flowvi.io import check_output, write_csv, write_json
from flowvi.targets import EightSchools


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
    write_json(directory / "estimators.json", result)
    table = ([row.get(column) for column in COLUMNS] for row in rows)
    write_csv(directory / "estimators.csv", COLUMNS, table)
    variance_figure(
        rows,
        directory / "estimators.png",
        titles={
            "toy": f"∇_μ E_N(μ,1)[X²], μ = {config.mu:g} (dashed: theory)",
            "eight-schools": "eight schools ELBO, mean-field guide at its optimum",
        },
    )
    return result


def add_command(commands: Any) -> None:
    """``flowvi estimators``."""
    command(
        commands,
        "estimators",
        _estimators,
        config=EstimatorsConfig,
        out="estimators",
        help="variance of score-function and reparameterization gradients vs samples",
        description=(
            "Variance of gradient estimators against the number of samples S: for "
            "d/dμ E_N(μ,1)[X²] = 2μ (score function, with a control variate, "
            "reparameterization; theory beside measurement) and for the ELBO of the "
            "eight-schools posterior with a fitted mean-field Gaussian guide (score function "
            "plain, Rao-Blackwellized, with control variates, both; reparameterization; "
            "sticking the landing). Writes estimators.png (log-log), estimators.json and "
            "estimators.csv."
        ),
    )


def _estimators(args: argparse.Namespace) -> int:
    config = EstimatorsConfig(**given(args, EstimatorsConfig))
    config.validate()
    directory = check_output(output(args, "estimators"))
    result = run_estimators(config, directory, progress=not args.quiet)
    s = max(config.samples)
    for problem in dict.fromkeys(row["problem"] for row in result["rows"]):
        rows = [r for r in result["rows"] if r["problem"] == problem and r["samples"] == s]
        text = ", ".join(f"{r['estimator']} {r['variance']:.3g}" for r in rows)
        print(f"{problem}, variance at S = {s}: {text}")
    print(f"table and figure -> {directory}")
    return 0

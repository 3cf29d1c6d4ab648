"""``flowvi vae gap``: the inference gap of trained VAE runs (Cremer, Li & Duvenaud 2018;
the estimators are :mod:`flowvi.vae.gap`), written to each run's ``gap.json`` and printed
side by side."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from flowvi._checks import check_dim
from flowvi.ais import ANNEALING_SCHEDULES
from flowvi.io import write_json
from flowvi.settings import DTYPES
from flowvi.vae.config import load_splits, load_vae
from flowvi.vae.gap import GAP_JSON, GapSettings, inference_gap

_D = GapSettings()


@dataclass(frozen=True)
class GapConfig:
    """Settings of ``flowvi vae gap``: which images, and the estimators' settings
    (:class:`flowvi.vae.gap.GapSettings`, whose defaults these are)."""

    n: int = field(default=100, metadata={"help": "test images (the first n)"})
    chains: int = field(default=_D.chains, metadata={"help": "AIS chains per image"})
    steps: int = field(default=_D.steps, metadata={"help": "AIS intermediate distributions"})
    schedule: str = field(
        default=_D.kind, metadata={"help": "AIS schedule", "choices": ANNEALING_SCHEDULES}
    )
    leapfrog: int = field(default=_D.leapfrog, metadata={"help": "HMC leapfrog steps"})
    local_iters: int = field(default=_D.local_iters, metadata={"help": "q* step limit"})
    local_lr: float = field(default=_D.local_lr, metadata={"help": "q* Adam learning rate"})
    elbo_samples: int = field(
        default=_D.elbo_samples, metadata={"help": "samples per ELBO estimate"}
    )
    device: str = field(default="cpu", metadata={"help": "cpu, cuda, cuda:N or auto"})
    seed: int = field(default=0, metadata={"help": "random seed"})

    def settings(self) -> GapSettings:
        """The estimators' settings, checked.

        Raises:
            ValueError: naming the first impossible setting.
        """
        check_dim(self.n, "--n")
        settings = GapSettings(
            chains=self.chains,
            steps=self.steps,
            kind=self.schedule,
            leapfrog=self.leapfrog,
            local_iters=self.local_iters,
            local_lr=self.local_lr,
            elbo_samples=self.elbo_samples,
        )
        settings.validate()
        return settings


def gap_run(
    directory: str | Path, config: GapConfig = GapConfig(), *, progress: bool = False
) -> dict[str, Any]:
    """:func:`flowvi.vae.gap.inference_gap` on the first ``config.n`` test images of a
    ``flowvi vae train`` run; written to ``gap.json`` in the run directory and returned.

    Raises:
        ValueError: for impossible settings (checked first), or if ``directory`` holds no
            finished VAE run (:class:`flowvi.io.RunError`).
    """
    settings = config.settings()
    model, run_config = load_vae(directory, device=config.device)
    x = load_splits(run_config).test[: config.n]
    x = x.to(device=next(model.parameters()).device, dtype=DTYPES[run_config.dtype])
    torch.manual_seed(config.seed)
    result = inference_gap(model, x, settings, progress=progress)
    run = {"run": str(directory), "posterior": run_config.posterior, "length": run_config.length}
    result |= run | {"data": run_config.data, "seed": config.seed}
    write_json(Path(directory) / GAP_JSON, result)
    return result


ROWS = (
    ("log_px", "ln p(x) (AIS)"),
    ("L_qstar", "L[q*]"),
    ("L_q", "L[q]"),
    ("approximation", "approximation gap"),
    ("amortization", "amortization gap"),
    ("inference", "inference gap"),
)


def gap_table(results: list[dict[str, Any]]) -> str:
    """The Cremer-style table of one or more :func:`gap_run` results, one column per run."""
    names = [
        r["posterior"] + ("" if r["posterior"] == "diagonal" else f" K={r['length']}")
        for r in results
    ]
    width = max(22, *(len(s) + 2 for s in names))
    lines = [f"{'nats per image':<20}" + "".join(f"{s:>{width}}" for s in names)]
    for key, label in ROWS:
        cells = [
            f"{r['summary'][key]['mean']:.2f} ± {r['summary'][key]['se']:.2f}" for r in results
        ]
        lines.append(f"{label:<20}" + "".join(f"{c:>{width}}" for c in cells))
    lines.append(
        f"{'seconds per image':<20}"
        + "".join(f"{r['seconds_per_point']:>{width}.2f}" for r in results)
    )
    return "\n".join(lines)

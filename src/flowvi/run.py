"""A reverse-KL fit as a run: resolved configuration in, a directory of results out."""

from __future__ import annotations

import csv
import io as _io
import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch

import flowvi
from flowvi import targets
from flowvi._checks import check_choice, check_dim
from flowvi.fitting import fit
from flowvi.flows import build
from flowvi.flows.networked import MASKS, ORDERS
from flowvi.io import (
    CONFIG,
    atomic_write,
    load,
    read_json,
    run_directory,
    save,
    versions,
    write_json,
)
from flowvi.metrics import evaluate
from flowvi.objectives import beta_schedule
from flowvi.plot import fit_figure
from flowvi.train import check_compile, make_optimizer
from flowvi.transforms.transformers import TRANSFORMERS

DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass(frozen=True)
class FitConfig:
    """Everything that determines a ``flowvi fit`` run; saved as ``config.json``.

    Defaults are the ``flowvi fit`` defaults (planar flow, K = 32, Adam).
    """

    target: str = "U1"
    flow: str = "planar"
    length: int = 32
    base: str = "standard"
    hidden: tuple[int, ...] = (64, 64)
    mask: str = "half"
    order: str | None = None
    transformer: str | None = None
    dim: int | None = None
    confine: bool | None = None
    iters: int = 10_000
    batch_size: int = 256
    lr: float = 3e-3
    optimizer: str = "adam"
    beta0: float = 0.01
    anneal_iters: int = 5_000
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    checkpoint_every: int = 1_000
    samples: int = 100_000
    compile: bool = False

    def validate(self) -> None:
        """Refuse impossible settings before any work starts.

        Raises:
            ValueError: naming the setting and the accepted values.
        """
        check_dim(self.length, "flow length K (--length)")
        for size in self.hidden:
            check_dim(size, "hidden layer size (--hidden)")
        check_dim(self.iters, "--iters")
        check_dim(self.batch_size, "--batch-size")
        check_dim(self.checkpoint_every, "--checkpoint-every")
        check_dim(self.samples, "--samples")
        check_choice(self.dtype, DTYPES, "dtype")
        check_choice(self.flow, flowvi.flows.LAYERS, "flow")
        check_choice(self.base, flowvi.distributions.BASES, "base")
        check_choice(self.mask, MASKS, "mask")
        if self.order is not None:
            check_choice(self.order, ORDERS, "order")
        if self.transformer is not None:
            check_choice(self.transformer, TRANSFORMERS, "transformer")
        make_optimizer([torch.zeros(1, requires_grad=True)], self.optimizer, self.lr)
        check_compile(compile=self.compile, optimizer=self.optimizer)
        beta_schedule(0, beta0=self.beta0, anneal_iters=self.anneal_iters)
        if self.dim is not None:
            check_dim(self.dim, "--dim")
        resolve_device(self.device)

    def resolve_target(self) -> targets.Target:
        return targets.get(self.target, dim=self.dim, confine=self.confine)


def build_flow(config: Any, d: int) -> flowvi.NormalizingFlow:
    """The flow a run's configuration names (``flow``, ``length``, ``base``, ``hidden``,
    ``mask``, ``order``, ``transformer``; a :class:`FitConfig` or a ``DensityConfig``) in
    ``d`` dimensions, by :func:`flowvi.flows.build`."""
    return build(
        config.flow,
        d,
        length=config.length,
        base=config.base,
        hidden=config.hidden,
        mask=config.mask,
        order=config.order,
        transformer=config.transformer,
    )


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"unknown device {name!r}: {error}") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return device


def run_name(target: str) -> str:
    """A directory name for a target (a user's ``module:function`` made path-safe)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in target)


def run_fit(
    config: FitConfig, directory: str | Path, *, resume: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Fit, evaluate and write one run to ``directory``.

    Writes ``config.json``, ``checkpoint.safetensors`` (during training), ``model.safetensors``,
    ``trace.csv`` (iteration, beta, annealed free energy), ``metrics.json`` and ``fit.png``
    (2-D targets). Returns the metrics.

    Raises:
        ValueError: for invalid settings or a target of the wrong dimension (before any work),
            or when ``directory`` already holds a run and ``resume`` is false.
        flowvi.train.NonFiniteLossError: when the loss turns NaN or infinite; the checkpoint
            keeps the last good parameters.
    """
    config.validate()
    directory = run_directory(directory, resume=resume)
    target = config.resolve_target()
    device, dtype = resolve_device(config.device), DTYPES[config.dtype]
    torch.manual_seed(config.seed)
    flow = build_flow(config, target.dim)
    flow = flow.to(device=device, dtype=dtype)
    target = target.to(device)
    record = asdict(config) | {
        "dim": target.dim,
        "confine": getattr(target, "confine", None),
        "resolved_device": str(device),
        "versions": versions(),
    }
    write_json(directory / CONFIG, record)
    trace = fit(
        flow,
        target,
        iters=config.iters,
        batch_size=config.batch_size,
        lr=config.lr,
        optimizer=config.optimizer,
        beta0=config.beta0,
        anneal_iters=config.anneal_iters,
        directory=directory,
        resume=resume,
        checkpoint_every=config.checkpoint_every,
        progress=progress,
        compile=config.compile,
    )
    save(flow, directory)
    _write_trace(directory / "trace.csv", trace, config)
    flow.eval()
    metrics = evaluate(flow, target, samples=config.samples)
    metrics["verdict"] = verdict(metrics)
    write_json(directory / "metrics.json", metrics)
    if target.dim == 2 and target.box is not None:
        fit_figure([(target, flow)], directory / "fit.png", titles=[caption(target.name, metrics)])
    return metrics


def resume_config(directory: str | Path, **overrides: Any) -> FitConfig:
    """The :class:`FitConfig` saved in a run directory, with ``overrides`` (e.g. ``iters``)."""
    saved = read_json(Path(directory) / CONFIG)
    known = {f.name for f in fields(FitConfig)}
    values = {k: v for k, v in saved.items() if k in known}
    values["hidden"] = tuple(values.get("hidden", FitConfig.hidden))
    config = FitConfig(**values)
    return replace(config, **{k: v for k, v in overrides.items() if v is not None})


def verdict(metrics: dict[str, Any]) -> str:
    """One line on the fit's quality from KL(q||p), KL(p||q) and the importance-sampling ESS.

    good: KL < 0.05 nats and ESS >= 50%; fair: KL < 0.5 and ESS >= 10%; poor otherwise. A
    forward KL far above the reverse one is flagged as a likely dropped mode.
    """
    kl, fkl, ess = metrics.get("kl"), metrics.get("forward_kl"), metrics["ess_fraction"]
    facts = [f"ESS {100 * ess:.1f}%"] + ([] if kl is None else [f"KL(q||p) {kl:.3g} nats"])
    if fkl is not None and kl is not None and fkl > max(1.0, 5 * kl):
        return (
            f"poor: q misses part of the target (KL(p||q) = {fkl:.3g} nats, far above "
            f"KL(q||p) = {kl:.3g}: a dropped mode?)"
        )
    kl = 0.0 if kl is None else kl
    grade = "good" if kl < 0.05 and ess >= 0.5 else "fair" if kl < 0.5 and ess >= 0.1 else "poor"
    return f"{grade}: " + ", ".join(facts)


def caption(name: str, metrics: dict[str, Any]) -> str:
    """A figure row's title: the target and its KL(q||p) when known."""
    kl = metrics.get("kl")
    return name if kl is None else f"{name}, KL {kl:.3f}"


def _write_trace(path: Path, trace: torch.Tensor, config: FitConfig) -> None:
    buffer = _io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["iteration", "beta", "free_energy"])
    for t, value in enumerate(trace.tolist()):
        if not math.isnan(value):
            beta = beta_schedule(t, beta0=config.beta0, anneal_iters=config.anneal_iters)
            writer.writerow([t, f"{beta:.6g}", f"{value:.6g}"])
    text = buffer.getvalue()
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def load_fit(directory: str | Path):
    """``(flow, target, metrics)`` of a finished run."""
    directory = Path(directory)
    config = resume_config(directory)
    return load(directory), config.resolve_target(), read_json(directory / "metrics.json")

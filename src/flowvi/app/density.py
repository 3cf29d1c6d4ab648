"""``flowvi density``: maximum-likelihood density fits as runs, configuration in, a directory
of results out."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import flowvi
from flowvi import data
from flowvi._checks import check_choice, check_dim
from flowvi.app.options import command, given, output
from flowvi.app.rundir import check_resume, record, save_final, training
from flowvi.density import check_data, fit_density
from flowvi.flows import (
    LAYERS,
    MASKS,
    ORDERS,
    LogitPreprocessing,
    NormalizingFlow,
    Standardization,
    describe,
)
from flowvi.io import (
    check_memory,
    load,
    read_json,
    run_directory,
    write_csv,
    write_json,
)
from flowvi.plot import density_figure, image_grid
from flowvi.settings import DTYPES, FLOW_OPTIONS, build_flow, resolve_device, saved_config
from flowvi.train import SCHEDULES, check_compile, make_optimizer
from flowvi.transforms.transformers import TRANSFORMERS

IMAGES = ("digits", "fashion-mnist", "mnist")
FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


@dataclass(frozen=True)
class DensityConfig:
    """Everything that determines a ``flowvi density`` run; saved as ``config.json``.

    ``data`` is a toy name (see :data:`flowvi.data.TOYS`), an image set (``digits``,
    ``fashion-mnist``, ``mnist``) or the path of a ``.npy`` / ``.csv`` file.
    """

    data: str = field(
        default="moons",
        metadata={
            "help": f"a toy set ({', '.join(data.TOYS)}), an image set ({', '.join(IMAGES)}), "
            "or a .npy/.csv file of numeric columns"
        },
    )
    data_dir: str | None = field(
        default=None,
        metadata={"help": f"directory of IDX files for fashion-mnist/mnist ({FASHION_MNIST})"},
    )
    flow: str = field(default="nsf", metadata=FLOW_OPTIONS["flow"])
    length: int = field(default=5, metadata=FLOW_OPTIONS["length"])
    base: str = field(default="standard", metadata=FLOW_OPTIONS["base"])
    hidden: tuple[int, ...] = field(default=(64, 64), metadata=FLOW_OPTIONS["hidden"])
    mask: str = field(default="half", metadata=FLOW_OPTIONS["mask"])
    order: str | None = field(default=None, metadata=FLOW_OPTIONS["order"])
    transformer: str | None = field(default=None, metadata=FLOW_OPTIONS["transformer"])
    n_train: int = field(default=20_000, metadata={"help": "training points drawn from a toy set"})
    n_valid: int = field(default=2_000, metadata={"help": "validation points drawn from a toy set"})
    n_test: int = field(default=5_000, metadata={"help": "test points drawn from a toy set"})
    valid_fraction: float = field(
        default=0.1, metadata={"help": "validation share of a file or image set"}
    )
    test_fraction: float = field(
        default=0.2, metadata={"help": "test share of a file or of digits"}
    )
    alpha: float = field(
        default=0.05, metadata={"help": "logit pre-processing margin α for images"}
    )
    iters: int = field(default=5_000, metadata={"help": "maximum training iterations"})
    batch_size: int = field(default=256, metadata={"help": "data points per iteration"})
    lr: float = field(default=1e-3, metadata=FLOW_OPTIONS["lr"])
    optimizer: str = field(default="adam", metadata=FLOW_OPTIONS["optimizer"])
    schedule: str = field(default="cosine", metadata=FLOW_OPTIONS["schedule"])
    valid_every: int = field(
        default=100, metadata={"help": "iterations between validation evaluations"}
    )
    patience: int = field(
        default=20, metadata={"help": "evaluations without improvement before stopping"}
    )
    seed: int = field(default=0, metadata=FLOW_OPTIONS["seed"])
    device: str = field(default="cpu", metadata=FLOW_OPTIONS["device"])
    dtype: str = field(default="float32", metadata=FLOW_OPTIONS["dtype"])
    checkpoint_every: int = field(default=1_000, metadata=FLOW_OPTIONS["checkpoint_every"])
    compile: bool = field(default=False, metadata=FLOW_OPTIONS["compile"])

    @property
    def kind(self) -> str:
        """``toy``, ``image`` or ``table``."""
        if self.data in data.TOYS:
            return "toy"
        return "image" if self.data in IMAGES else "table"

    def validate(self) -> None:
        """Refuse impossible settings before any work starts.

        Raises:
            ValueError: naming the setting and the accepted values.
        """
        check_dim(self.length, "flow length K (--length)")
        for size in self.hidden:
            check_dim(size, "hidden layer size (--hidden)")
        for name in ("n_train", "n_valid", "n_test", "iters", "batch_size", "valid_every"):
            check_dim(getattr(self, name), "--" + name.replace("_", "-"))
        check_dim(self.patience, "--patience")
        check_dim(self.checkpoint_every, "--checkpoint-every")
        for name in ("valid_fraction", "test_fraction"):
            if not 0 < getattr(self, name) < 0.5:
                raise ValueError(f"--{name.replace('_', '-')} must lie in (0, 0.5)")
        if not 0 <= self.alpha < 0.5:
            raise ValueError(f"--alpha must lie in [0, 0.5), got {self.alpha}")
        check_choice(self.dtype, DTYPES, "dtype")
        check_choice(self.flow, LAYERS, "flow")
        check_choice(self.base, flowvi.distributions.BASES, "base")
        check_choice(self.mask, MASKS, "mask")
        if self.order is not None:
            check_choice(self.order, ORDERS, "order")
        if self.transformer is not None:
            check_choice(self.transformer, TRANSFORMERS, "transformer")
        make_optimizer([torch.zeros(1, requires_grad=True)], self.optimizer, self.lr)
        check_compile(compile=self.compile, optimizer=self.optimizer)
        check_choice(self.schedule, SCHEDULES, "schedule")
        resolve_device(self.device)
        if self.data == "mnist" and self.data_dir is None:
            raise ValueError(
                "--data mnist needs --data-dir, the directory of its IDX files (the default "
                f"directory, {FASHION_MNIST}, holds Fashion-MNIST)"
            )
        if self.kind == "table" and Path(self.data).suffix.lower() not in (".npy", ".csv"):
            raise ValueError(
                f"unknown data {self.data!r}: give one of {', '.join([*data.TOYS, *IMAGES])}, "
                "or a .npy or .csv file"
            )


@dataclass
class Splits:
    """Train, validation and test data in data units, ``(n, D)`` float64 each.

    ``levels`` (images): pixel values are integers in ``[0, levels)``; ``image_shape`` is
    ``(C, H, W)``.
    """

    train: Tensor
    valid: Tensor
    test: Tensor
    levels: int | None = None
    image_shape: tuple[int, ...] | None = None


def load_splits(config: DensityConfig) -> Splits:
    """The data of a run, split reproducibly from ``config.seed``.

    Toys: fresh samples of sizes ``n_train``, ``n_valid``, ``n_test`` (seeds ``seed``,
    ``seed + 1``, ``seed + 2``). Tables and digits: a random split with ``valid_fraction`` and
    ``test_fraction``. Fashion-MNIST and MNIST: their test set, and ``valid_fraction`` of the
    training set for validation.

    Raises:
        ValueError, FileNotFoundError: for unreadable or invalid data (see :mod:`flowvi.data`).
    """
    if config.kind == "toy":
        sizes = (config.n_train, config.n_valid, config.n_test)
        parts = [
            data.toy(config.data, n, seed=config.seed + i, dtype=torch.float64)
            for i, n in enumerate(sizes)
        ]
        return Splits(*parts)
    if config.data == "digits":
        x, levels, shape = data.digits()
        return Splits(*_split(x, config, test=True), levels=levels, image_shape=shape)
    if config.kind == "image":
        directory = config.data_dir or FASHION_MNIST
        train, _ = data.read_idx(directory, "train")
        test, _ = data.read_idx(directory, "test")
        side = math.isqrt(train.shape[1])
        train, valid = _split(train.double(), config, test=False)
        return Splits(train, valid, test.double(), levels=256, image_shape=(1, side, side))
    x = data.read_table(config.data)
    if x.shape[0] < 10:
        raise ValueError(f"{config.data} has {x.shape[0]} rows: too few to split and fit")
    return Splits(*_split(x, config, test=True))


def _split(x: Tensor, config: DensityConfig, *, test: bool) -> list[Tensor]:
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(config.seed))
    n_valid = max(1, round(config.valid_fraction * x.shape[0]))
    n_test = max(1, round(config.test_fraction * x.shape[0])) if test else 0
    valid, rest = order[:n_valid], order[n_valid:]
    parts = [x[rest[n_test:]], x[valid]]
    return [*parts, x[rest[:n_test]]] if test else parts


def make_flow(config: DensityConfig, splits: Splits) -> NormalizingFlow:
    r"""The run's model: ``config.flow`` in a standardized (tables, toys) or logit (images)
    space, then a fixed data-end layer mapping that space to data units, so that ``log_prob``
    of data includes the pre-processing's Jacobian.

    Tables: :class:`flowvi.flows.Standardization`, :math:`x = \mu + \sigma y`, with the
    training data's mean and standard deviation. Images: :class:`flowvi.flows.LogitPreprocessing`
    (Dinh et al. 2017, Section 4.1), :math:`x = L (\sigma(y) - \alpha) / (1 - 2\alpha)` for
    dequantized pixels :math:`x \in [0, L)^D`.
    """
    d = splits.train.shape[1]
    flow = build_flow(config, d)
    if splits.levels is None:
        stats = flowvi.transforms.StandardizationTransform.fit(splits.train)
        tail = Standardization(d, mean=stats.mean, std=stats.std)
    else:
        tail = LogitPreprocessing(d, levels=splits.levels, alpha=config.alpha)
    return NormalizingFlow(flow.base, [*flow.layers, tail])


def run_density(
    config: DensityConfig, directory: str | Path, *, resume: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Fit a flow to data by maximum likelihood and write one run to ``directory``.

    Writes ``config.json``, ``checkpoint.safetensors`` (during training), ``model.safetensors``,
    ``trace.csv`` (iteration, training NLL, validation NLL), ``metrics.json`` (test NLL in nats
    per example and per dimension, and bits per dimension for images) and ``density.png``
    (2-D data: data | model density | samples) or ``samples.png`` (images). Returns the metrics.

    ``config.json`` is written once, at creation, with ``"kind": "density"`` and the flow's
    description (``"model"``); a resume rewrites it (atomically) only to extend ``iters``.

    Raises:
        ValueError: for invalid settings or data (before any training), a ``directory`` that
            is a file or lies under one, data or a batch estimated to need more memory than is
            available, when ``directory`` already holds a run and ``resume`` is false, or on
            ``resume`` for ``iters`` below the iterations done.
        flowvi.io.RunError: (a ``ValueError``) on ``resume``, for no run, a run of another
            command, a damaged ``config.json``, or a checkpoint that is unreadable or does not
            fit the model. Every check comes before anything on disk changes.
        flowvi.train.TrainingInterrupted: after Ctrl-C, once the checkpoint is written.
        flowvi.train.NonFiniteLossError: when the loss turns NaN or infinite; the checkpoint
            keeps the last good parameters.
    """
    config.validate()
    directory = run_directory(directory, resume=resume, kind="density")
    device, dtype = resolve_device(config.device), DTYPES[config.dtype]
    if config.kind == "toy":  # the toys are drawn: their size is known before any work
        check_memory(data_bytes(config, 2), "the toy data (--n-train, --n-valid, --n-test)")
        check_memory(batch_bytes(config, 2), f"one batch of --batch-size {config.batch_size}")
    splits = load_splits(config)
    d = splits.train.shape[1]
    check_memory(batch_bytes(config, d), f"one batch of --batch-size {config.batch_size}", device)
    torch.manual_seed(config.seed)
    flow = make_flow(config, splits).to(device=device, dtype=dtype)
    if resume:  # every check before anything on disk changes
        check_resume(directory, flow, iters=config.iters, flag="--iters", early_stopping=True)
    train, valid, test = (
        x.to(device=device, dtype=dtype) for x in (splits.train, splits.valid, splits.test)
    )
    augment = None
    if splits.levels is not None:  # uniform dequantization: a fresh u ~ U[0, 1)^D per batch
        augment = data.dequantize
        valid, test = (
            _dequantize_fixed(x, config.seed + i) for i, x in enumerate((valid, test), 1)
        )
    for name, x in (("training", train), ("validation", valid), ("test", test)):
        check_data(x, d, f"{name} data")
    facts = {"model": describe(flow), **_facts(splits)}
    with training(
        directory, record(config, "density", device, **facts), resume=resume, changed=("iters",)
    ):
        trace, stopper = fit_density(
            flow,
            train,
            valid,
            iters=config.iters,
            batch_size=config.batch_size,
            lr=config.lr,
            optimizer=config.optimizer,
            schedule=config.schedule,
            valid_every=config.valid_every,
            patience=config.patience,
            augment=augment,
            directory=directory,
            resume=resume,
            checkpoint_every=config.checkpoint_every,
            progress=progress,
            compile=config.compile,
        )
        save_final(flow, directory, trace)
        _write_trace(directory / "trace.csv", trace, stopper.trace)
        flow.eval()
        metrics = _metrics(flow, test, splits, trace, stopper)
        write_json(directory / "metrics.json", metrics)
        if splits.image_shape is not None:
            image_grid(
                flow, directory / "samples.png", levels=splits.levels, shape=splits.image_shape
            )
        elif d == 2:
            density_figure(
                splits.test, flow, directory / "density.png", title=_caption(config, metrics)
            )
    return metrics


def data_bytes(config: DensityConfig, d: int) -> float:
    """The memory (bytes) of a toy run's data: three float64 splits of ``d`` columns, with room
    for their copies in the training dtype and the sampler's work."""
    return 3.0 * 8 * d * (config.n_train + config.n_valid + config.n_test)


def batch_bytes(config: DensityConfig, d: int) -> float:
    """A generous estimate of the memory (bytes) of one training step: the batch (at most the
    training set for a toy) through every layer, the layers' hidden activations, gradients."""
    itemsize = DTYPES[config.dtype].itemsize
    batch = min(config.batch_size, config.n_train) if config.kind == "toy" else config.batch_size
    per_point = d * (config.length + 2) + sum(config.hidden) * config.length
    return 4.0 * itemsize * batch * per_point + 12.0 * config.iters  # and the loss trace


def _dequantize_fixed(x: Tensor, seed: int) -> Tensor:
    """Held-out pixels dequantized once, reproducibly: ``x + u``, ``u ~ U[0, 1)``."""
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return x + u.to(x)


def _facts(splits: Splits) -> dict[str, Any]:
    return {
        "d": splits.train.shape[1],
        "n": {"train": len(splits.train), "valid": len(splits.valid), "test": len(splits.test)},
        "levels": splits.levels,
        "image_shape": splits.image_shape,
    }


@torch.no_grad()
def _metrics(flow, test: Tensor, splits: Splits, trace: Tensor, stopper) -> dict[str, Any]:
    log_q = torch.cat([flow.log_prob(chunk) for chunk in test.split(10_000)]).double()
    d = test.shape[1]
    nll = float(-log_q.mean())
    se = float(log_q.std() / math.sqrt(len(log_q))) if len(log_q) > 1 else math.nan
    done = int((~torch.isnan(trace)).sum())
    metrics = {
        "test_nll": nll,
        "test_nll_se": se,
        "test_nll_per_dim": nll / d,
        "valid_nll": stopper.best,
        "best_iteration": stopper.best_iteration,
        "iterations": done,
        "stopped_early": stopper.stopped,
        "units": "nats per example (per_dim: nats per dimension), in data units",
    }
    if splits.levels is not None:
        metrics["test_bits_per_dim"] = float(
            data.bits_per_dim(torch.tensor(nll, dtype=torch.float64), d)
        )
        metrics["units"] = (
            f"nats per image of dequantized pixels in [0, {splits.levels}); bits_per_dim "
            "bounds the discrete data's -log2 p per pixel"
        )
    return metrics


def _caption(config: DensityConfig, metrics: dict[str, Any]) -> str:
    return (
        f"{config.data}, {config.flow} K={config.length}: test NLL {metrics['test_nll']:.3f} nats"
    )


def _write_trace(path: Path, trace: Tensor, valid: list[tuple[int, float]]) -> None:
    at = {t - 1: f"{value:.6g}" for t, value in valid}
    rows = (
        [t, f"{value:.6g}", at.get(t, "")]
        for t, value in enumerate(trace.tolist())
        if not math.isnan(value)
    )
    write_csv(path, ["iteration", "train_nll", "valid_nll"], rows)


def resume_density_config(directory: str | Path, **overrides: Any) -> DensityConfig:
    """The :class:`DensityConfig` saved in a run directory, with ``overrides`` (e.g. ``iters``).

    Raises:
        flowvi.io.RunError: (a ``ValueError``) naming the ``config.json``: missing, not a JSON
            object, of a run of another command, or holding settings of the wrong type.
    """
    return saved_config(DensityConfig, directory, kind="density", **overrides)


def load_density(directory: str | Path) -> tuple[NormalizingFlow, dict[str, Any]]:
    """``(flow, metrics)`` of a finished run; ``flow.log_prob`` takes data in data units."""
    return load(directory), read_json(Path(directory) / "metrics.json")


def add_command(commands: Any) -> None:
    """``flowvi density``."""
    command(
        commands,
        "density",
        _density,
        config=DensityConfig,
        out="density",
        resume="--iters",
        threads=True,
        help="fit a flow to data by maximum likelihood (density estimation)",
        description=(
            "Fit a normalizing flow to data by maximum likelihood with minibatches, a validation "
            "split with early stopping, and report the test negative log-likelihood (nats per "
            "example and per dimension; bits per dimension for images). With no arguments: "
            "a 5-layer neural spline flow on two moons."
        ),
    )


def _density(args: argparse.Namespace) -> int:
    settings = given(args, DensityConfig)
    if args.resume is not None:
        if set(settings) - {"iters"}:
            raise ValueError("with --resume only --iters may be given: the run keeps its settings")
        config, directory = resume_density_config(args.resume, **settings), args.resume
    else:
        config, directory = DensityConfig(**settings), output(args, "density")
    metrics = run_density(
        config, directory, resume=args.resume is not None, progress=not args.quiet
    )
    bits = metrics.get("test_bits_per_dim")
    extra = "" if bits is None else f", {bits:.4f} bits/dim"
    print(
        f"{config.data}: test NLL {metrics['test_nll']:.4f} ± {metrics['test_nll_se']:.4f} nats "
        f"({metrics['test_nll_per_dim']:.4f} per dim{extra}) after {metrics['iterations']} "
        f"iterations -> {directory}"
    )
    return 0

"""``flowvi fit``: reverse-KL fits as runs, a resolved configuration in, a directory of results
out; several targets give one run each and a figure of all."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

import flowvi
from flowvi import targets
from flowvi._checks import check_choice, check_dim
from flowvi._imports import load_object
from flowvi.app.options import command, given, output
from flowvi.app.rundir import check_resume, record, save_final, training
from flowvi.data.tables import read_arrays
from flowvi.fitting import annealing_iters, fit
from flowvi.flows import MASKS, ORDERS, describe
from flowvi.inference.guides import initialize
from flowvi.io import (
    CONFIG,
    check_memory,
    check_output,
    load,
    read_json,
    run_directory,
    write_csv,
    write_json,
)
from flowvi.metrics import evaluate
from flowvi.objectives import beta_schedule
from flowvi.plot import fit_figure
from flowvi.posterior import summarize
from flowvi.settings import DTYPES, FLOW_OPTIONS, build_flow, resolve_device, saved_config
from flowvi.targets import ENERGIES
from flowvi.targets.sites import vector_site
from flowvi.train import SCHEDULES, DropPolicy, check_compile, make_optimizer
from flowvi.transforms.transformers import TRANSFORMERS

# registered layers with no parameters to fit: the fixed data-end maps of density runs
FIXED_LAYERS = frozenset({"logit", "standardize"})

PAPER_TARGETS = (*ENERGIES, "banana", "mixture", "gaussian")
# the fitting defaults: the paper's protocol for its 2-D energies and toys; for posteriors
# (Bayesian models, a user's function or Pyro model) those measured on real posteriors
# (benchmarks/posteriors.py, benchmarks/RESULTS.md): no annealing, an IAF on a diagonal
# Gaussian that starts narrow (scale 0.1) at the model's initial point
PAPER_DEFAULTS = {"flow": "planar", "length": 32, "base": "standard", "anneal": 0.5}
POSTERIOR_DEFAULTS = {"flow": "iaf", "length": 4, "base": "diagonal", "anneal": 0.0}


@dataclass(frozen=True)
class FitConfig:
    """Everything that determines a ``flowvi fit`` run; saved as ``config.json``.

    ``flow``, ``length``, ``base`` and ``anneal`` left ``None`` take the defaults of the
    target's kind (:meth:`resolved`): for the energies U1–U4 and the 2-D toys the paper's
    protocol (planar K = 32 on N(0, I), β annealed over half the run), for everything else
    (Bayesian models, a user's function or Pyro ``model``) an IAF with K = 4 on a diagonal
    Gaussian starting at scale ``init_scale``, without annealing.

    ``pyro_model`` (``--model``: ``file.py:name`` or ``module:name``) names a Pyro model,
    fitted in its unconstrained space (:func:`flowvi.pyro.target`); ``data`` a ``.csv``,
    ``.npz`` or ``.pt`` of named arrays passed to it as keyword arguments.
    """

    target: str = "U1"
    pyro_model: str | None = field(
        default=None,
        metadata={
            "help": "a Pyro model, file.py:name or module:name, fitted in its unconstrained "
            "space (needs pip install 'flowvi[pyro]'); replaces --target",
            "flag": "--model",
        },
    )
    data: str | None = field(
        default=None,
        metadata={
            "help": "the model's keyword arguments: a .csv with a header (one array per "
            "column), or a .npz / .pt of named arrays"
        },
    )
    flow: str | None = field(default=None, metadata=FLOW_OPTIONS["flow"])
    length: int | None = field(default=None, metadata=FLOW_OPTIONS["length"])
    base: str | None = field(default=None, metadata=FLOW_OPTIONS["base"])
    init_scale: float = field(
        default=0.1,
        metadata={
            "help": "initial sd of the guide around the model's initial point (not for U1-U4/toys)"
        },
    )
    hidden: tuple[int, ...] = field(default=(64, 64), metadata=FLOW_OPTIONS["hidden"])
    mask: str = field(default="half", metadata=FLOW_OPTIONS["mask"])
    order: str | None = field(default=None, metadata=FLOW_OPTIONS["order"])
    transformer: str | None = field(default=None, metadata=FLOW_OPTIONS["transformer"])
    dim: int | None = field(default=None, metadata={"help": "dimension of a user target"})
    confine: bool | None = None
    iters: int = field(default=10_000, metadata={"help": "training iterations"})
    batch_size: int = field(default=256, metadata={"help": "samples per iteration"})
    lr: float = field(default=3e-3, metadata=FLOW_OPTIONS["lr"])
    optimizer: str = field(default="adam", metadata=FLOW_OPTIONS["optimizer"])
    schedule: str = field(default="constant", metadata=FLOW_OPTIONS["schedule"])
    beta0: float = field(
        default=0.01, metadata={"help": "initial inverse temperature β_0 of Eq. 20"}
    )
    anneal: float | None = field(
        default=None,
        metadata={
            "help": "share of --iters over which β rises from β_0 to 1, in [0, 1) (None: 0.5 "
            "for U1-U4 and the 2-D toys, the paper's protocol; 0, no annealing, for posteriors)"
        },
    )
    seed: int = field(default=0, metadata=FLOW_OPTIONS["seed"])
    device: str = field(default="cpu", metadata=FLOW_OPTIONS["device"])
    dtype: str = field(default="float32", metadata=FLOW_OPTIONS["dtype"])
    checkpoint_every: int = field(default=1_000, metadata=FLOW_OPTIONS["checkpoint_every"])
    samples: int = field(
        default=100_000,
        metadata={
            "help": "Monte Carlo samples for the final metrics (at most 4000 for a model with "
            "subsampled data, each scored on all of it)"
        },
    )
    compile: bool = field(default=False, metadata=FLOW_OPTIONS["compile"])

    @property
    def paper(self) -> bool:
        """Whether the target is one of the paper's 2-D energies or toys."""
        return self.pyro_model is None and self.target.lower() in {t.lower() for t in PAPER_TARGETS}

    def resolved(self) -> FitConfig:
        """This configuration with the defaults of its target's kind filled in."""
        defaults = PAPER_DEFAULTS if self.paper else POSTERIOR_DEFAULTS
        return replace(self, **{k: v for k, v in defaults.items() if getattr(self, k) is None})

    def validate(self) -> None:
        """Refuse impossible settings before any work starts.

        Raises:
            ValueError: naming the setting and the accepted values.
        """
        if self.flow is None or self.length is None or self.base is None or self.anneal is None:
            self.resolved().validate()
            return
        check_dim(self.length, "flow length K (--length)")
        for size in self.hidden:
            check_dim(size, "hidden layer size (--hidden)")
        check_dim(self.iters, "--iters")
        check_dim(self.batch_size, "--batch-size")
        check_dim(self.checkpoint_every, "--checkpoint-every")
        check_dim(self.samples, "--samples")
        check_choice(self.dtype, DTYPES, "dtype")
        check_choice(self.flow, flowvi.flows.LAYERS, "flow")
        if self.flow in FIXED_LAYERS:
            fitted = ", ".join(sorted(set(flowvi.flows.LAYERS) - FIXED_LAYERS))
            raise ValueError(
                f"--flow {self.flow} has no trainable parameters (a fixed data-end layer of "
                f"density runs): fit one of {fitted}"
            )
        check_choice(self.base, flowvi.distributions.BASES, "base")
        check_choice(self.mask, MASKS, "mask")
        if self.order is not None:
            check_choice(self.order, ORDERS, "order")
        if self.transformer is not None:
            check_choice(self.transformer, TRANSFORMERS, "transformer")
        make_optimizer([torch.zeros(1, requires_grad=True)], self.optimizer, self.lr)
        check_choice(self.schedule, SCHEDULES, "schedule")
        check_compile(compile=self.compile, optimizer=self.optimizer)
        beta_schedule(0, beta0=self.beta0, anneal_iters=annealing_iters(self.anneal, self.iters))
        if not (math.isfinite(self.init_scale) and self.init_scale > 0):
            raise ValueError(f"--init-scale must be positive and finite, got {self.init_scale}")
        if self.dim is not None:
            check_dim(self.dim, "--dim")
        if self.data is not None and self.pyro_model is None:
            raise ValueError("--data gives a model's arguments: it needs --model")
        resolve_device(self.device)

    def resolve_target(self) -> targets.Target:
        """The target: a Pyro model (``pyro_model``, with its ``data``) or ``target`` by name.

        Raises:
            ValueError: for an unknown name, a model or data file that cannot be read, a model
                that Pyro cannot trace, or a ``dim`` that does not match.
        """
        if self.pyro_model is None:
            return targets.get(self.target, dim=self.dim, confine=self.confine)
        from flowvi.pyro import target as pyro_target  # Pyro is imported only when used

        model = load_object(self.pyro_model, what="model")
        if not callable(model):
            raise ValueError(f"model {self.pyro_model!r} is not callable")
        kwargs = {} if self.data is None else read_arrays(self.data, dtype=DTYPES[self.dtype])
        try:
            target = pyro_target(model, **kwargs)
        except ValueError:
            raise
        except Exception as error:  # the user's model failed under Pyro's trace
            raise ValueError(
                f"model {self.pyro_model!r} failed when traced with data "
                f"({', '.join(kwargs) or 'none'}): {type(error).__name__}: {error}"
            ) from error
        if self.dim is not None and self.dim != target.dim:
            raise ValueError(
                f"model {self.pyro_model} has {target.dim} latent coordinates, not {self.dim}"
            )
        return target


def run_name(target: str) -> str:
    """A directory name for a target (a user's ``module:function`` made path-safe)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in target)


def run_fit(
    config: FitConfig, directory: str | Path, *, resume: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Fit, evaluate and write one run to ``directory``.

    Writes ``config.json`` (with the defaults of the target's kind resolved),
    ``checkpoint.safetensors`` (during training), ``model.safetensors``, ``trace.csv``
    (iteration, beta, annealed free energy, samples dropped), ``metrics.json`` (with
    ``dropped_samples``) and ``fit.png`` (2-D targets); for a target with named parameters (a
    model) also the posterior summary (:mod:`flowvi.posterior`): ``summary.csv``,
    ``summary.json`` and ``posterior.nc`` (arviz InferenceData). Returns the metrics (and,
    for a model, its summary table as ``posterior_table``, for printing).

    ``config.json`` is written once, at creation, with ``"kind": "fit"`` and the flow's
    :func:`flowvi.flows.describe` (``"model"``), so that :func:`flowvi.load` works from the first
    checkpoint on; a resume rewrites it (atomically) only to extend ``iters``.

    Raises:
        ValueError: for invalid settings or a target of the wrong dimension, a ``directory``
            that is a file or lies under one, or one batch estimated to need more memory than is
            available; when ``directory`` already holds a run and ``resume`` is false; on
            ``resume``, for ``iters`` below the iterations done. All before anything on disk
            changes.
        flowvi.io.RunError: (a ``ValueError``) on ``resume``, for a directory that holds no run,
            a run of another command, a ``config.json`` that is not a JSON object, or a
            checkpoint that is unreadable (truncated, corrupt) or does not fit the model;
            before anything on disk changes.
        flowvi.train.TrainingInterrupted: after Ctrl-C, once the checkpoint is written.
        flowvi.train.NonFiniteLossError: when the samples' log densities are non-finite beyond
            :class:`flowvi.train.DropPolicy`'s limits; the checkpoint keeps the last good
            parameters.
    """
    config = config.resolved()
    config.validate()
    directory = run_directory(directory, resume=resume, kind="fit")
    target = config.resolve_target()
    device, dtype = resolve_device(config.device), DTYPES[config.dtype]
    check_memory(
        batch_bytes(config, target.dim), f"one batch of --batch-size {config.batch_size}", device
    )
    torch.manual_seed(config.seed)
    flow = build_flow(config, target.dim)
    if not config.paper:
        initialize(flow, loc=target.initial_point(), scale=config.init_scale)
    flow = flow.to(device=device, dtype=dtype)
    target = target.to(device)
    if resume:  # every check before anything on disk changes
        check_resume(directory, flow, iters=config.iters, flag="--iters")
    config_record = record(
        config,
        "fit",
        device,
        dim=target.dim,
        confine=getattr(target, "confine", None),
        model=describe(flow),
    )
    with training(directory, config_record, resume=resume, changed=("iters",)):
        drop = DropPolicy()
        trace = fit(
            flow,
            target,
            iters=config.iters,
            batch_size=config.batch_size,
            lr=config.lr,
            optimizer=config.optimizer,
            schedule=config.schedule,
            anneal=config.anneal,
            beta0=config.beta0,
            directory=directory,
            resume=resume,
            checkpoint_every=config.checkpoint_every,
            progress=progress,
            compile=config.compile,
            drop=drop,
        )
        save_final(flow, directory, trace)
        _write_trace(directory / "trace.csv", trace, drop.dropped, config)
        flow.eval()
        # a subsampled model is scored on all its data per draw: as many draws as the summary
        samples = config.samples if target.exact() is target else min(config.samples, 4000)
        metrics = evaluate(flow, target, samples=samples)
        metrics["verdict"] = verdict(metrics)
        metrics["dropped_samples"] = int(drop.dropped.sum())
        metrics["dropped_iterations"] = int((drop.dropped > 0).sum())
        table = None
        if has_named_sites(target):
            summary = summarize(flow, target, samples=min(config.samples, 4000))
            summary.write(directory)
            metrics["posterior"] = {k: v for k, v in summary.to_dict().items() if k != "rows"}
            table = summary.table()
        write_json(directory / "metrics.json", metrics)
        if target.dim == 2 and target.box is not None:
            fit_figure(
                [(target, flow)], directory / "fit.png", titles=[caption(target.name, metrics)]
            )
    return metrics if table is None else metrics | {"posterior_table": table}


def batch_bytes(config: FitConfig, d: int) -> float:
    """A generous estimate of the memory (bytes) of one training step of a fit: the batch's
    samples through every layer, the layers' hidden activations, and their gradients; and the
    trace of ``iters`` losses."""
    itemsize = DTYPES[config.dtype].itemsize
    per_sample = d * ((config.length or 1) + 2) + sum(config.hidden) * (config.length or 1)
    trace = 12.0 * config.iters  # the loss (float32) and dropped samples (int64) per iteration
    return 4.0 * itemsize * config.batch_size * per_sample + trace


def has_named_sites(target: targets.Target) -> bool:
    """Whether the target names its parameters (a model), rather than one vector ``z``."""
    return tuple(target.sites) != vector_site(target.dim)


def resume_config(directory: str | Path, **overrides: Any) -> FitConfig:
    """The :class:`FitConfig` saved in a run directory, with ``overrides`` (e.g. ``iters``).

    Raises:
        flowvi.io.RunError: (a ``ValueError``) naming the ``config.json``: missing, not a JSON
            object, or of a run of another command; or holding settings of the wrong type.
    """
    return saved_config(FitConfig, directory, kind="fit", **overrides)


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


def _write_trace(path: Path, trace: torch.Tensor, dropped: torch.Tensor, config: FitConfig) -> None:
    anneal_iters = annealing_iters(config.anneal, config.iters)
    rows = (
        [t, f"{beta_schedule(t, beta0=config.beta0, anneal_iters=anneal_iters):.6g}", f"{v:.6g}", n]
        for t, (v, n) in enumerate(zip(trace.tolist(), dropped.tolist(), strict=True))
        if not math.isnan(v)
    )
    write_csv(path, ["iteration", "beta", "free_energy", "dropped"], rows)


def load_fit(directory: str | Path):
    """``(flow, target, metrics)`` of a finished run."""
    directory = Path(directory)
    config = resume_config(directory)
    return load(directory), config.resolve_target(), read_json(directory / "metrics.json")


def add_command(commands: Any) -> None:
    """``flowvi fit``."""
    parser = command(
        commands,
        "fit",
        _fit,
        config=FitConfig,
        out="fit",
        resume="--iters",
        threads=True,
        help="fit a flow to an unnormalized density by reverse KL (free energy)",
        description=(
            "Fit a normalizing flow q to p ∝ exp(-U) by minimizing the annealed free energy "
            "E_q[ln q + β_t U] (Rezende & Mohamed 2015, Eq. 20). With no arguments: planar "
            "K = 32 on U1–U4, the K = 32 column of their Figure 3."
        ),
    )
    parser.add_argument(
        "--target",
        nargs="+",
        default=None,
        help=f"one or more of {', '.join(targets.NAMES)}, or module:function with --dim "
        "(default: U1 U2 U3 U4)",
    )
    parser.add_argument(
        "--no-confine",
        dest="confine",
        action="store_const",
        const=False,
        default=argparse.SUPPRESS,
        help="do not add the wall at the edge of [-4, 4]² to U2-U4 (ln Z and KL become undefined)",
    )


def _fit(args: argparse.Namespace) -> int:
    settings = given(args, FitConfig)
    settings.pop("target")
    if args.resume is not None:
        root = args.resume
        if set(settings) - {"iters"}:
            raise ValueError("with --resume only --iters may be given: the run keeps its settings")
        single = (root / CONFIG).exists()
        dirs = [root] if single else sorted(p.parent for p in root.glob(f"*/{CONFIG}"))
        if not dirs:
            raise ValueError(f"cannot resume {root}: it holds no flowvi run")
        jobs = [(resume_config(d, **settings), d) for d in dirs]
    else:
        root = check_output(output(args, "fit"))
        if settings.get("pyro_model") and args.target:
            raise ValueError("give --model (a Pyro model) or --target, not both")
        names = [settings["pyro_model"]] if settings.get("pyro_model") else args.target
        configs = [FitConfig(target=t, **settings) for t in names or ENERGIES]
        for config in configs:  # refuse bad settings and targets before any work starts
            config.validate()
            config.resolve_target()
        single = len(configs) == 1
        jobs = [(c, root if single else root / run_name(c.target)) for c in configs]
        if not single:  # runs/<target> beside a run's own files would mix them
            run_directory(root)
    resume = args.resume is not None
    for _, directory in jobs:  # every directory checked before any run writes
        run_directory(directory, resume=resume, kind="fit")
    summary = {}
    for config, directory in jobs:
        metrics = run_fit(config, directory, resume=resume, progress=not args.quiet)
        table = metrics.pop("posterior_table", None)
        summary[config.target] = metrics
        if table is not None:
            print(table)
        print(f"{config.target}: {_line(metrics)} -> {directory}")
    if not single:
        fits = [load_fit(d) for _, d in jobs]
        fits = [fit for fit in fits if fit[1].dim == 2 and fit[1].box is not None]
        if fits:
            fit_figure(
                [(target, flow) for flow, target, _ in fits],
                root / "fit.png",
                titles=[caption(target.name, metrics) for _, target, metrics in fits],
            )
        write_json(root / "metrics.json", summary)
        print(f"figure: {root / 'fit.png'}")
    return 0


def _line(metrics: dict) -> str:
    kl = metrics.get("kl")
    kl_text = "n/a (no ln Z)" if kl is None else f"{kl:.4f} ± {metrics['kl_se']:.4f} nats"
    return f"F = {metrics['free_energy']:.4f} nats, KL(q||p) = {kl_text}; {metrics['verdict']}"

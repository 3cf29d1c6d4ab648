"""The ``flowvi`` command. Argument parsing lives here and only here."""

from __future__ import annotations

import argparse
import json
import sys
import types
import typing
from collections.abc import Sequence
from dataclasses import MISSING, fields
from datetime import datetime
from pathlib import Path

from flowvi import __version__
from flowvi.density_run import (
    DensityConfig,
    resume_density_config,
    run_density,
)
from flowvi.inference.cavi_run import CAVIConfig, run_cavi
from flowvi.inference.estimators import EstimatorsConfig, run_estimators
from flowvi.io import check_output, run_directory
from flowvi.plot import fit_figure
from flowvi.run import FitConfig, caption, load_fit, resume_config, run_fit, run_name
from flowvi.show import ShowConfig, run_show
from flowvi.targets import ENERGIES, NAMES
from flowvi.threads import set_num_threads, training_threads
from flowvi.train import NonFiniteLossError, TrainingInterrupted
from flowvi.vae.run import VAEConfig, evaluate_vae, posterior_label, run_vae, vae_config


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flowvi", description="Variational inference with normalizing flows."
    )
    parser.add_argument("--version", action="version", version=f"flowvi {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    fit = commands.add_parser(
        "fit",
        parents=[_shared()],
        help="fit a flow to an unnormalized density by reverse KL (free energy)",
        description=(
            "Fit a normalizing flow q to p ∝ exp(-U) by minimizing the annealed free energy "
            "E_q[ln q + β_t U] (Rezende & Mohamed 2015, Eq. 20). With no arguments: planar "
            "K = 32 on U1–U4, the K = 32 column of their Figure 3."
        ),
    )
    fit.add_argument(
        "--target",
        nargs="+",
        default=None,
        help=f"one or more of {', '.join(NAMES)}, or module:function with --dim "
        "(default: U1 U2 U3 U4)",
    )

    _config_options(fit, FitConfig)
    fit.add_argument(
        "--no-confine",
        dest="confine",
        action="store_const",
        const=False,
        default=argparse.SUPPRESS,
        help="do not add the wall at the edge of [-4, 4]² to U2-U4 (ln Z and KL become undefined)",
    )
    fit.add_argument(
        "--out", type=Path, default=None, help="run directory (default: runs/fit-<date>-<time>)"
    )
    fit.add_argument(
        "--resume",
        type=Path,
        default=None,
        metavar="DIR",
        help="continue the run in DIR from its last checkpoint (--iters may extend it)",
    )
    _threads_option(fit)
    fit.set_defaults(run=_fit)
    _density_parser(commands)
    _estimators_parser(commands)
    _cavi_parser(commands)
    _vae_parser(commands)
    _show_parser(commands)
    return parser


def _shared() -> argparse.ArgumentParser:
    """The parent parser of the options that every run command shares."""
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument("--quiet", action="store_true", help="no progress bars")
    return shared


def _threads_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads for torch, as flowvi.threads.set_num_threads (default: 1, the "
        "fastest for small flows, whose steps are many small operations; 0: torch's own "
        "default; results do not depend on it)",
    )


def _config_options(parser: argparse.ArgumentParser, config: type) -> None:
    """One option per field of the configuration dataclass ``config`` that declares its help in
    ``field(metadata={"help": ...})``: the flag ``--field-name`` (or ``metadata["flag"]``, and
    ``metadata["aliases"]``),
    the type from the field's annotation (``int``, ``float``, ``str``; ``tuple[int, ...]`` as
    sizes like ``64,64``; ``bool`` as ``--x/--no-x``), ``metadata["choices"]``, and the field's
    default shown in the help. Options not given stay absent from the namespace, so that the
    dataclass's own default applies."""
    hints = typing.get_type_hints(config)
    for f in fields(config):
        if "help" not in f.metadata:
            continue
        kind = hints[f.name]
        if isinstance(kind, types.UnionType):  # X | None
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        kwargs: dict = {}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) is tuple:
            kwargs["type"] = _sizes
        elif kind in (int, float):
            kwargs["type"] = kind
        if "choices" in f.metadata:
            kwargs["choices"] = list(f.metadata["choices"])
        if "flag" in f.metadata and kind is not bool:  # --model, not PYRO_MODEL
            kwargs["metavar"] = f.metadata["flag"].lstrip("-").upper().replace("-", "_")
        default = f.default if f.default is not MISSING else f.default_factory()
        parser.add_argument(
            f.metadata.get("flag", "--" + f.name.replace("_", "-")),
            *f.metadata.get("aliases", ()),
            dest=f.name,
            default=argparse.SUPPRESS,
            help=f"{f.metadata['help']} (default: {default})",
            **kwargs,
        )


def _density_parser(commands) -> None:
    density = commands.add_parser(
        "density",
        parents=[_shared()],
        help="fit a flow to data by maximum likelihood (density estimation)",
        description=(
            "Fit a normalizing flow to data by maximum likelihood with minibatches, a validation "
            "split with early stopping, and report the test negative log-likelihood (nats per "
            "example and per dimension; bits per dimension for images). With no arguments: "
            "a 5-layer neural spline flow on two moons."
        ),
    )
    _config_options(density, DensityConfig)
    density.add_argument(
        "--out", type=Path, default=None, help="run directory (default: runs/density-<date>-<time>)"
    )
    density.add_argument(
        "--resume",
        type=Path,
        default=None,
        metavar="DIR",
        help="continue the run in DIR from its last checkpoint (--iters may extend it)",
    )
    _threads_option(density)
    density.set_defaults(run=_density)


def _estimators_parser(commands) -> None:
    estimators = commands.add_parser(
        "estimators",
        parents=[_shared()],
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
    _config_options(estimators, EstimatorsConfig)
    estimators.set_defaults(run=_estimators)
    estimators.add_argument(
        "--out", type=Path, default=None, help="directory (default: runs/estimators-<date>-<time>)"
    )


def _estimators(args: argparse.Namespace) -> int:
    given = {
        f.name: getattr(args, f.name) for f in fields(EstimatorsConfig) if hasattr(args, f.name)
    }
    config = EstimatorsConfig(**given)
    config.validate()
    directory = check_output(
        args.out or Path("runs") / datetime.now().strftime("estimators-%Y%m%d-%H%M%S")
    )
    result = run_estimators(config, directory, progress=not args.quiet)
    s = max(config.samples)
    for problem in dict.fromkeys(row["problem"] for row in result["rows"]):
        rows = [r for r in result["rows"] if r["problem"] == problem and r["samples"] == s]
        text = ", ".join(f"{r['estimator']} {r['variance']:.3g}" for r in rows)
        print(f"{problem}, variance at S = {s}: {text}")
    print(f"table and figure -> {directory}")
    return 0


def _cavi_parser(commands) -> None:
    cavi = commands.add_parser(
        "cavi",
        parents=[_shared()],
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
    _config_options(cavi, CAVIConfig)
    cavi.set_defaults(run=_cavi)
    cavi.add_argument(
        "--out", type=Path, default=None, help="run directory (default: runs/cavi-<date>-<time>)"
    )


def _cavi(args: argparse.Namespace) -> int:
    given = {f.name: getattr(args, f.name) for f in fields(CAVIConfig) if hasattr(args, f.name)}
    config = CAVIConfig(**given)
    config.validate()
    stamp = datetime.now().strftime(f"{config.method}-%Y%m%d-%H%M%S")
    directory = args.out or Path("runs") / stamp
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


def _vae_parser(commands) -> None:
    vae = commands.add_parser(
        "vae",
        help="variational autoencoders whose encoder outputs a flow posterior (amortized VI)",
        description="Train (vae train) and evaluate (vae eval) a VAE on images (binarized, or "
        "grey levels with --likelihood continuous-bernoulli or gaussian).",
    )
    actions = vae.add_subparsers(dest="action", required=True)
    vae.set_defaults(run=_vae)
    train = actions.add_parser(
        "train",
        parents=[_shared()],
        help="train a VAE by maximizing the ELBO (or IWAE bound)",
        description=(
            "Train a VAE with a Bernoulli MLP decoder and an amortized posterior: a Gaussian "
            "from the encoder, pushed through K flow layers whose parameters the encoder emits "
            "per image (Rezende & Mohamed 2015, Section 4). Validation -ELBO every epoch, early "
            "stopping, checkpoints, --resume. Data-parallel: torchrun --nproc_per_node=N -m "
            "flowvi vae train ... (each rank a shard of every --batch-size batch; rank 0 writes)."
        ),
    )
    _config_options(train, VAEConfig)
    train.add_argument(
        "--out", type=Path, default=None, help="run directory (default: runs/vae-<date>-<time>)"
    )
    train.add_argument(
        "--resume",
        type=Path,
        default=None,
        metavar="DIR",
        help="continue the run in DIR from its last checkpoint (--epochs may extend it)",
    )
    evaluate = actions.add_parser(
        "eval",
        parents=[_shared()],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="test -ELBO and -ln p(x) (importance sampling) of a trained run -> metrics.json",
    )
    evaluate.add_argument("directory", type=Path, help="a flowvi vae train run directory")
    evaluate.add_argument(
        "--samples",
        type=int,
        default=None,
        help="importance samples k (None: the run's --eval-samples)",
    )
    evaluate.add_argument(
        "--chunk",
        type=int,
        default=None,
        help="samples drawn at a time (None: the run's eval_chunk)",
    )
    evaluate.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    evaluate.add_argument("--seed", type=int, default=0, help="random seed")
    evaluate.add_argument(
        "--compare",
        type=Path,
        nargs="+",
        default=(),
        metavar="DIR",
        help="other 2-D latent runs (same data) drawn beside this one in posterior2d.png",
    )
    _vae_gap_parser(actions)


def _vae_gap_parser(actions) -> None:
    from flowvi.vae.gap import GapSettings

    d = GapSettings()
    gap = actions.add_parser(
        "gap",
        parents=[_shared()],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="inference gap: ln p(x) by AIS, L[q*], L[q], approximation and amortization gaps",
        description=(
            "Cremer, Li & Duvenaud (2018): on the first --n test images, ln p(x) by AIS (HMC, "
            "--chains, --steps), L[q] of the amortized posterior, L[q*] of a per-image optimum "
            "of the same family (decoder frozen); approximation gap = ln p(x) - L[q*], "
            "amortization gap = L[q*] - L[q]. Writes gap.json in each run; several runs are "
            "printed side by side."
        ),
    )
    gap.add_argument("directories", type=Path, nargs="+", metavar="DIR", help="vae run(s)")
    gap.add_argument("--n", type=int, default=100, help="test images (the first n)")
    gap.add_argument("--chains", type=int, default=d.chains, help="AIS chains per image")
    gap.add_argument("--steps", type=int, default=d.steps, help="AIS intermediate distributions")
    gap.add_argument("--schedule", default=d.kind, help="AIS schedule: linear or sigmoid")
    gap.add_argument("--leapfrog", type=int, default=d.leapfrog, help="HMC leapfrog steps")
    gap.add_argument("--local-iters", type=int, default=d.local_iters, help="q* step limit")
    gap.add_argument("--local-lr", type=float, default=d.local_lr, help="q* Adam rate")
    gap.add_argument("--elbo-samples", type=int, default=d.elbo_samples, help="draws per ELBO")
    gap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    gap.add_argument("--seed", type=int, default=0, help="random seed")


def _vae(args: argparse.Namespace) -> int:
    if args.action == "gap":
        from flowvi.vae.gap import GapSettings, gap_run, gap_table

        settings = GapSettings(
            chains=args.chains,
            steps=args.steps,
            kind=args.schedule,
            leapfrog=args.leapfrog,
            local_iters=args.local_iters,
            local_lr=args.local_lr,
            elbo_samples=args.elbo_samples,
        )
        runs = [
            gap_run(
                d,
                n=args.n,
                settings=settings,
                device=args.device,
                seed=args.seed,
                progress=not args.quiet,
            )
            for d in args.directories
        ]
        print(gap_table(runs))
        return 0
    if args.action == "eval":
        m = evaluate_vae(
            args.directory,
            samples=args.samples,
            chunk=args.chunk,
            device=args.device,
            seed=args.seed,
            compare=tuple(args.compare),
            progress=not args.quiet,
        )
        if m.get("model") == "nlpca":
            print(
                f"test reconstruction {m['test_reconstruction']:.3f} ± "
                f"{m['test_reconstruction_se']:.3f} nats -> {args.directory / 'metrics.json'}"
            )
            return 0
        print(
            f"test -ELBO {m['test_neg_elbo']:.3f} ± {m['test_neg_elbo_se']:.3f}, "
            f"-ln p(x) {m['test_nll']:.3f} ± {m['test_nll_se']:.3f} nats (k = {m['is_samples']}) "
            f"-> {args.directory / 'metrics.json'}"
        )
        print(f"q(z|x) against p(z|x): {m['khat_verdict']}")
        return 0
    given = {f.name: getattr(args, f.name) for f in fields(VAEConfig) if hasattr(args, f.name)}
    if args.resume is not None:
        if set(given) - {"epochs", "compile"}:
            raise ValueError(
                "with --resume only --epochs and --compile may be given: the run keeps its settings"
            )
        if not (args.resume / "config.json").exists():
            raise ValueError(f"cannot resume {args.resume}: it holds no flowvi run")
        config, directory = vae_config(args.resume, **given), args.resume
    else:
        config = VAEConfig(**given)
        directory = args.out or Path("runs") / datetime.now().strftime("vae-%Y%m%d-%H%M%S")
    summary = run_vae(config, directory, resume=args.resume is not None, progress=not args.quiet)
    if not summary:  # a data-parallel rank other than 0: rank 0 reports
        return 0
    if config.model == "nlpca":
        print(
            f"{config.data}, nonlinear PCA d={config.latent}: validation reconstruction "
            f"{summary['valid_reconstruction']:.3f} nats -> {directory}"
        )
        return 0
    print(
        f"{config.data}, {posterior_label(config)}: validation -ELBO "
        f"{summary['valid_neg_elbo']:.3f} nats (best epoch {summary['best_epoch']}) -> {directory}"
    )
    return 0


def _show_parser(commands) -> None:
    show = commands.add_parser(
        "show",
        help="draw what K planar and radial layers do to a Gaussian and a uniform box (Figure 1)",
        description=(
            "Rezende & Mohamed (2015), Figure 1: the exact density (exp(log_prob) on a grid, "
            "no sampling) of a unit Gaussian and of a uniform box after K planar and radial "
            "layers, with random (--seed) or given (--params) parameters. Writes figure1.png "
            "and figure1.json (settings, the parameters used, in --params form, and each "
            "panel's grid integral, 1 for a correct density)."
        ),
    )
    _config_options(show, ShowConfig)
    show.set_defaults(run=_show)
    show.add_argument(
        "--out", type=Path, default=None, help="directory (default: runs/show-<date>-<time>)"
    )


def _show(args: argparse.Namespace) -> int:
    given = {f.name: getattr(args, f.name) for f in fields(ShowConfig) if hasattr(args, f.name)}
    config = ShowConfig(**given)
    directory = check_output(
        args.out or Path("runs") / datetime.now().strftime("show-%Y%m%d-%H%M%S")
    )
    summary = run_show(config, directory)
    worst = max(abs(p["integral"] - 1) for p in summary["panels"])
    print(f"{len(summary['panels'])} panels, grid integrals within {worst:.1e} of 1 -> {directory}")
    return 0


def _sizes(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 64,64, got {text!r}") from None


def _density(args: argparse.Namespace) -> int:
    given = {f.name: getattr(args, f.name) for f in fields(DensityConfig) if hasattr(args, f.name)}
    if args.resume is not None:
        if set(given) - {"iters"}:
            raise ValueError("with --resume only --iters may be given: the run keeps its settings")
        if not (args.resume / "config.json").exists():
            raise ValueError(f"cannot resume {args.resume}: it holds no flowvi run")
        config, directory = resume_density_config(args.resume, **given), args.resume
    else:
        config = DensityConfig(**given)
        directory = args.out or Path("runs") / datetime.now().strftime("density-%Y%m%d-%H%M%S")
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


def _fit(args: argparse.Namespace) -> int:
    progress = not args.quiet
    given = {f.name: getattr(args, f.name) for f in fields(FitConfig) if hasattr(args, f.name)}
    given.pop("target")
    if args.resume is not None:
        root = args.resume
        if set(given) - {"iters"}:
            raise ValueError("with --resume only --iters may be given: the run keeps its settings")
        single = (root / "config.json").exists()
        dirs = [root] if single else sorted(p.parent for p in root.glob("*/config.json"))
        if not dirs:
            raise ValueError(f"cannot resume {root}: it holds no flowvi run")
        jobs = [(resume_config(d, **given), d) for d in dirs]
        resume = True
    else:
        root = check_output(args.out or Path("runs") / datetime.now().strftime("fit-%Y%m%d-%H%M%S"))
        if given.get("pyro_model") and args.target:
            raise ValueError("give --model (a Pyro model) or --target, not both")
        names = [given["pyro_model"]] if given.get("pyro_model") else args.target or list(ENERGIES)
        configs = [FitConfig(target=t, **given) for t in names]
        for config in configs:  # refuse bad settings and targets before any work starts
            config.validate()
            config.resolve_target()
        single = len(configs) == 1
        jobs = [(c, root if single else root / run_name(c.target)) for c in configs]
        resume = False
    if not single and not resume:  # runs/<target> beside a run's own files would mix them
        run_directory(root)
    for _, directory in jobs:  # every directory checked before any run writes
        run_directory(directory, resume=resume, kind="fit")
    summary = {}
    for config, directory in jobs:
        metrics = run_fit(config, directory, resume=resume, progress=progress)
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
        (root / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(f"figure: {root / 'fit.png'}")
    return 0


def _line(metrics: dict) -> str:
    kl = metrics.get("kl")
    kl_text = "n/a (no ln Z)" if kl is None else f"{kl:.4f} ± {metrics['kl_se']:.4f} nats"
    return f"F = {metrics['free_energy']:.4f} nats, KL(q||p) = {kl_text}; {metrics['verdict']}"


def _command(args: argparse.Namespace) -> int:
    return args.run(args)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        threads = getattr(args, "threads", 1)
        if threads < 0:
            raise ValueError(f"--threads must be >= 0, got {threads}")
        set_num_threads(threads)
        with training_threads():  # the whole command, evaluation included, as training
            return _command(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"flowvi: error: {error}", file=sys.stderr)
        return 2
    except NonFiniteLossError as error:
        print(f"flowvi: training stopped: {error}", file=sys.stderr)
        return 3
    except OSError as error:  # a file in the way, a full disk, no permission
        print(f"flowvi: error: {error}", file=sys.stderr)
        return 2
    except TrainingInterrupted as interrupt:
        command = "vae train" if args.command == "vae" else args.command
        again = "" if interrupt.path is None else f"; continue it with: flowvi {command} "
        again += "" if interrupt.path is None else f"--resume {interrupt.path.parent}"
        print(f"flowvi: {interrupt}{again}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("flowvi: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

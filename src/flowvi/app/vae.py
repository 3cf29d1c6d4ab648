"""``flowvi vae train``, ``vae eval`` and ``vae gap``: VAEs (and the nonlinear-PCA baseline)
trained, evaluated and compared as runs."""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from flowvi._checks import check_dim
from flowvi.app.gap import GapConfig, gap_run, gap_table
from flowvi.app.images import epoch_summary, prepare, train_by_epochs
from flowvi.app.nlpca import evaluate_nlpca, run_nlpca
from flowvi.app.options import command, config_options, given, output
from flowvi.app.rundir import record, save_final, training
from flowvi.fused import BatchLoss
from flowvi.io import (
    check_memory,
    read_json,
    run_directory,
    write_csv,
    write_json,
)
from flowvi.objectives import beta_schedule
from flowvi.settings import DTYPES, resolve_device
from flowvi.vae.config import (
    VAEConfig,
    load_splits,
    load_vae,
    make_vae,
    posterior_label,
    vae_bytes,
    vae_config,
)
from flowvi.vae.data import BinarySplits
from flowvi.vae.distributed import DataParallel, world_size
from flowvi.vae.evaluate import (
    importance_diagnostics,
    layer_statistics,
    log_likelihood,
    mean_and_se,
    mean_elbo,
)
from flowvi.vae.model import VAE


def run_vae(
    config: VAEConfig, directory: str | Path, *, resume: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Train a VAE through :func:`flowvi.train.train` and write one run to ``directory``.

    One iteration is one minibatch; epoch ``e`` visits the training set in the order of a
    permutation drawn from ``seed + e`` (so a resumed run sees the same batches). The loss is
    the negative warmed-up ELBO (β from ``beta0`` to 1 over ``warmup`` epochs) or the negative
    IWAE bound (no warm-up). The validation loss, every epoch, is the negative ELBO of the
    validation images with one latent sample each from a fixed random stream; training stops
    after ``patience`` epochs without improvement and keeps the best parameters.

    Writes ``config.json``, ``checkpoint.safetensors`` (every ``checkpoint_every`` epochs),
    ``model.safetensors``, ``trace.csv`` (iteration, epoch, β, training loss, validation
    -ELBO), ``train.json`` and the figures ``samples.png`` and ``reconstructions.png``.

    Under ``torchrun --nproc_per_node=N`` (``WORLD_SIZE > 1``) training is data-parallel: each
    rank takes a shard of every global batch of ``batch_size`` images and the result equals a
    single process's to float rounding (:mod:`flowvi.vae.distributed`); only rank 0 writes,
    and the other ranks return ``{}`` instead of the training summary.

    ``config.json`` records ``"kind": "vae"``; a resume rewrites it (atomically) only to
    extend ``epochs`` (or switch ``compile``).

    Raises:
        ValueError: for invalid settings or data, a model and batch estimated to need more
            memory than is available, an existing run without ``resume``, or on ``resume``
            ``epochs`` below the epochs done; :class:`flowvi.io.RunError` on ``resume`` of no
            run, a run of another command, or a damaged config or checkpoint. Every check
            comes before anything on disk changes.
        flowvi.train.NonFiniteLossError: naming the epoch and batch of a NaN or infinite loss;
            the checkpoint keeps the last good parameters.
    """
    if config.model == "nlpca":  # the deterministic baseline (flowvi.vae.pca)
        return run_nlpca(config, directory, resume=resume, progress=progress)
    config.validate()
    if config.compile and world_size() > 1:
        raise ValueError("--compile trains in one process: run it without torchrun")
    directory = run_directory(directory, resume=resume, kind="vae")
    device, dtype = resolve_device(config.device), DTYPES[config.dtype]
    check_memory(vae_bytes(config, 28 * 28), "the VAE's parameters and one batch", device)
    ddp = DataParallel.start(device) if world_size() > 1 else None
    if ddp is not None:
        device, progress = ddp.device, progress and ddp.main
        ddp.barrier()  # every rank has checked the directory before rank 0 writes to it
    writes = ddp is None or ddp.main
    model, splits, batches, train_x, valid_x = prepare(
        config, make_vae, directory, resume=resume, device=device, dtype=dtype
    )
    per_epoch = batches.per_epoch
    shared = None if ddp is None else ddp.wrap(model)
    anneal = config.warmup * per_epoch
    analytic = config.kl != "mc"

    def batch_of(t: int) -> tuple[Tensor, Tensor]:
        """Iteration ``t``'s images and β (a 0-d tensor: a compiled step takes it as input)."""
        x = train_x[batches(t)]
        if splits.dynamic:
            x = torch.bernoulli(x)
        beta = beta_schedule(t, beta0=config.beta0, anneal_iters=anneal, allow_zero=True)
        beta = 1.0 if config.objective == "iwae" else beta
        return x, torch.tensor(beta, dtype=dtype, device=device)

    def loss(x: Tensor, beta: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        if shared is not None:
            return ddp.loss(
                shared,
                x,
                objective=config.objective,
                samples=config.samples,
                beta=beta,
                analytic=analytic,
            )
        if config.objective == "iwae":
            bound = model.iwae(x, config.samples)
        else:
            bound = model.elbo(x, samples=config.samples, beta=beta, analytic=analytic)
        return -bound.mean(), {"bound per image": bound}

    def valid_loss() -> Tensor:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(config.seed + 7)
            return -mean_elbo(model, valid_x).mean()

    config_record = record(config, "vae", device, **splits.facts())
    with training(
        directory, config_record, resume=resume, changed=("epochs", "compile"), writes=writes
    ):
        trace, stopper, seconds = train_by_epochs(
            config,
            model,
            BatchLoss(batch_of, loss),
            valid_loss,
            per_epoch,
            directory,
            resume=resume,
            progress=progress,
            desc=f"vae {config.posterior}",
            label="-bound",
            save=writes,
            compile=config.compile,
        )
        if ddp is not None:
            ddp.close()
        if not writes:
            return {}
        save_final(model, directory, trace)
        _write_trace(directory / "trace.csv", trace, stopper.trace, per_epoch, config)
        summary = epoch_summary(
            stopper, trace, per_epoch, seconds, valid="valid_neg_elbo", units="nats per image"
        )
        write_json(directory / "train.json", summary)
        _figures(model, splits, directory)
    return summary


def evaluate_vae(
    directory: str | Path,
    *,
    samples: int | None = None,
    chunk: int | None = None,
    device: str = "cpu",
    seed: int = 0,
    compare: tuple[str | Path, ...] = (),
    progress: bool = False,
) -> dict[str, Any]:
    r"""Test :math:`-\mathrm{ELBO}` and :math:`-\ln p(x)` (importance sampling with ``samples``,
    default the run's ``eval_samples``, 5000) of a trained run, with standard errors over the
    test images; written to ``metrics.json`` and returned (nats per image). A nonlinear-PCA
    run gets :func:`flowvi.vae.pca.evaluate_nlpca` (test reconstruction error) instead.

    With a 2-D latent space, ``posterior2d.png`` draws :math:`q(z \mid x)` and the true
    posterior of the first 4 test images exactly on grids, beside those of the runs in
    ``compare`` (e.g. a diagonal posterior against a flow; :mod:`flowvi.vae.latent2d`), and
    ``metrics["latent2d"]`` holds the grids' ln p(x) and KL(q || p(z|x)) per image. A flow
    posterior's ``metrics["layers"]`` says what each layer does on the first 1000 test images
    (:func:`flowvi.vae.evaluate.layer_statistics`).
    ``progress``: a progress bar over the importance-sampled test images (tqdm).

    Raises:
        ValueError: for ``samples`` or ``chunk`` given but not a positive integer (checked
            before the run is read), or ``compare`` runs without a 2-D latent space or on other
            data.
    """
    if samples is not None:  # 0 must not fall back to the run's eval_samples
        check_dim(samples, "--samples (importance samples per image)")
    if chunk is not None:
        check_dim(chunk, "--chunk (samples drawn at a time)")
    if vae_config(directory).model == "nlpca":
        return evaluate_nlpca(directory, device=device)
    model, config = load_vae(directory, device=device)
    model.eval()
    others = _compared_runs(config, compare, device)
    splits = load_splits(config)
    x = splits.test.to(device=next(model.parameters()).device, dtype=DTYPES[config.dtype])
    k = config.eval_samples if samples is None else samples
    chunk = config.eval_chunk if chunk is None else chunk
    torch.manual_seed(seed)
    start = time.perf_counter()
    neg_elbo, elbo_se = mean_and_se(-mean_elbo(model, x))
    nll, nll_se = mean_and_se(-log_likelihood(model, x, samples=k, chunk=chunk, progress=progress))
    metrics = {
        "test_neg_elbo": neg_elbo,
        "test_neg_elbo_se": elbo_se,
        "test_nll": nll,
        "test_nll_se": nll_se,
        "is_samples": k,
        "n_test": len(x),
        "eval_seconds": time.perf_counter() - start,
        "units": (
            "nats per binarized image" if config.likelihood == "bernoulli" else "nats per image"
        )
        + f" ({config.likelihood}); nll = -ln p(x) by importance sampling (IWAE bound)",
    }
    metrics |= importance_diagnostics(model, x[:1000], samples=1000)  # PSIS k-hat per image
    if len(model.posterior.layers) > 0:
        metrics["layers"] = layer_statistics(model, x[:1000])
    if config.latent == 2 or compare:
        metrics["latent2d"] = _latent_figure(model, config, splits, directory, others)
    train_json = Path(directory) / "train.json"
    if train_json.exists():
        metrics["training"] = read_json(train_json)
    write_json(Path(directory) / "metrics.json", metrics)
    return metrics


def _compared_runs(config: VAEConfig, compare, device: str) -> list[tuple[str, VAE]]:
    """The ``--compare`` runs of ``flowvi vae eval``, labelled, checked against ``config``."""
    runs = []
    for other in compare:
        m, c = load_vae(other, device=device)
        if (c.data, c.data_dir, c.binarize, c.seed) != (
            config.data,
            config.data_dir,
            config.binarize,
            config.seed,
        ):
            raise ValueError(f"--compare {other}: its data or split differ from this run's")
        if c.latent != 2:
            raise ValueError(f"--compare {other}: its latent space is {c.latent}-D, not 2-D")
        label = posterior_label(c)
        name = Path(other).name
        runs.append((label if name == c.posterior else f"{name}: {label}", m.eval()))
    return runs


def _latent_figure(model, config, splits, directory, others) -> list[dict]:
    from flowvi.vae.latent2d import latent_figure

    runs = [(posterior_label(config), model), *others]
    x = splits.test[:4].to(next(model.parameters()))
    path = Path(directory) / "posterior2d.png"
    return latent_figure(runs, x, path, image_shape=splits.image_shape)


@torch.no_grad()
def _figures(model: VAE, splits: BinarySplits, directory: Path) -> None:
    from flowvi.plot import reconstructions_grid, vae_grid

    model.eval()
    p = next(model.parameters())
    z = model.prior().sample((64,))  # through the flow prior, if any
    means = model.decoder(z).mean
    vae_grid(means, directory / "samples.png", shape=splits.image_shape, title="prior samples")
    x = splits.test[:32].to(p)
    recon = model.decoder(model.q(x).sample()).mean
    reconstructions_grid(x, recon, directory / "reconstructions.png", shape=splits.image_shape)


def _write_trace(path: Path, trace: Tensor, valid, per_epoch: int, config: VAEConfig) -> None:
    at = {t - 1: f"{value:.6g}" for t, value in valid}
    anneal = config.warmup * per_epoch

    def beta(t: int) -> float:
        if config.objective == "iwae":
            return 1.0
        return beta_schedule(t, beta0=config.beta0, anneal_iters=anneal, allow_zero=True)

    rows = (
        [t, t // per_epoch, f"{beta(t):.4g}", f"{value:.6g}", at.get(t, "")]
        for t, value in enumerate(trace.tolist())
        if not math.isnan(value)
    )
    write_csv(path, ["iteration", "epoch", "beta", "train_loss", "valid_neg_elbo"], rows)


@dataclass(frozen=True)
class EvalConfig:
    """Settings of ``flowvi vae eval``."""

    samples: int | None = field(
        default=None,
        metadata={"help": "importance samples k per image (None: the run's --eval-samples)"},
    )
    chunk: int | None = field(
        default=None, metadata={"help": "samples drawn at a time (None: the run's eval_chunk)"}
    )
    device: str = field(default="cpu", metadata={"help": "cpu, cuda, cuda:N or auto"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    compare: tuple[Path, ...] = field(
        default=(),
        metadata={
            "help": "other 2-D latent runs (same data) drawn beside this one in posterior2d.png"
        },
    )


def add_command(commands: Any) -> None:
    """``flowvi vae train``, ``vae eval`` and ``vae gap``."""
    vae = commands.add_parser(
        "vae",
        help="variational autoencoders whose encoder outputs a flow posterior (amortized VI)",
        description="Train (vae train) and evaluate (vae eval) a VAE on images (binarized, or "
        "grey levels with --likelihood continuous-bernoulli or gaussian).",
    )
    actions = vae.add_subparsers(dest="action", required=True)
    command(
        actions,
        "train",
        _train,
        config=VAEConfig,
        out="vae",
        resume="--epochs",
        help="train a VAE by maximizing the ELBO (or IWAE bound)",
        description=(
            "Train a VAE with a Bernoulli MLP decoder and an amortized posterior: a Gaussian "
            "from the encoder, pushed through K flow layers whose parameters the encoder emits "
            "per image (Rezende & Mohamed 2015, Section 4). Validation -ELBO every epoch, early "
            "stopping, checkpoints, --resume. Data-parallel: torchrun --nproc_per_node=N -m "
            "flowvi vae train ... (each rank a shard of every --batch-size batch; rank 0 writes)."
        ),
    )
    evaluate = command(
        actions,
        "eval",
        _eval,
        help="test -ELBO and -ln p(x) (importance sampling) of a trained run -> metrics.json",
        description="Test -ELBO and -ln p(x) by importance sampling (nats per image) of a "
        "flowvi vae train run, with PSIS k-hat per image; nonlinear-PCA runs get their test "
        "reconstruction. Writes metrics.json in the run directory.",
    )
    evaluate.add_argument("directory", type=Path, help="a flowvi vae train run directory")
    config_options(evaluate, EvalConfig)
    gap = command(
        actions,
        "gap",
        _gap,
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
    config_options(gap, GapConfig)


def _gap(args: argparse.Namespace) -> int:
    config = GapConfig(**given(args, GapConfig))
    runs = [gap_run(d, config, progress=not args.quiet) for d in args.directories]
    print(gap_table(runs))
    return 0


def _eval(args: argparse.Namespace) -> int:
    config = EvalConfig(**given(args, EvalConfig))
    m = evaluate_vae(
        args.directory,
        samples=config.samples,
        chunk=config.chunk,
        device=config.device,
        seed=config.seed,
        compare=config.compare,
        progress=not args.quiet,
    )
    where = args.directory / "metrics.json"
    if m.get("model") == "nlpca":
        print(
            f"test reconstruction {m['test_reconstruction']:.3f} ± "
            f"{m['test_reconstruction_se']:.3f} nats -> {where}"
        )
        return 0
    print(
        f"test -ELBO {m['test_neg_elbo']:.3f} ± {m['test_neg_elbo_se']:.3f}, "
        f"-ln p(x) {m['test_nll']:.3f} ± {m['test_nll_se']:.3f} nats (k = {m['is_samples']}) "
        f"-> {where}"
    )
    print(f"q(z|x) against p(z|x): {m['khat_verdict']}")
    return 0


def _train(args: argparse.Namespace) -> int:
    settings = given(args, VAEConfig)
    if args.resume is not None:
        if set(settings) - {"epochs", "compile"}:
            raise ValueError(
                "with --resume only --epochs and --compile may be given: the run keeps its settings"
            )
        config, directory = vae_config(args.resume, **settings), args.resume
    else:
        config, directory = VAEConfig(**settings), output(args, "vae")
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

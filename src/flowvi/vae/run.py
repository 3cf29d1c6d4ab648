"""``flowvi vae train`` and ``flowvi vae eval`` as runs: a configuration in, a directory out."""

from __future__ import annotations

import csv
import io as _io
import itertools
import math
import time
import warnings
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from flowvi._checks import check_choice, check_dim
from flowvi.fused import BatchLoss
from flowvi.io import (
    CHECKPOINT,
    CONFIG,
    RunError,
    atomic_write,
    check_checkpoint,
    check_memory,
    checkpoint_iteration,
    read_config,
    read_json,
    run_directory,
    run_weights,
    save_weights,
    versions,
    write_config,
    write_json,
    write_tensors,
)
from flowvi.objectives import beta_schedule
from flowvi.settings import DTYPES, resolve_device
from flowvi.train import EarlyStopping, check_compile, make_optimizer, train
from flowvi.vae.data import BINARIZATIONS, DATASETS, BinarySplits, load_binary
from flowvi.vae.distributed import DataParallel, world_size
from flowvi.vae.evaluate import (
    importance_diagnostics,
    layer_statistics,
    log_likelihood,
    mean_and_se,
    mean_elbo,
)
from flowvi.vae.model import VAE
from flowvi.vae.networks import (
    LIKELIHOODS,
    BernoulliDecoder,
    ConvBernoulliDecoder,
    ConvEncoder,
    Encoder,
)
from flowvi.vae.posterior import POSTERIORS, make_posterior
from flowvi.vae.prior import PRIORS, make_prior

WEIGHTS = "model.safetensors"
OBJECTIVES = ("elbo", "iwae")
KLS = ("analytic", "mc", "split")
NETWORKS = ("mlp", "conv")
MODELS = ("vae", "nlpca")


def _option(text: str, **more: Any) -> dict[str, Any]:
    """A field's command-line help (and ``choices``, ``aliases``), read by :mod:`flowvi.cli`."""
    return {"help": text, **more}


@dataclass(frozen=True)
class VAEConfig:
    """Everything that determines a ``flowvi vae train`` run; saved as ``config.json``.

    ``network``: ``mlp`` or ``conv`` (gated convolutional encoder and decoder for 28×28 or
    8×8 images, :class:`flowvi.vae.networks.ConvEncoder`; ``hidden`` is then unused).
    Sizes: ``hidden`` are the encoder's hidden layers (the last is the context ``h``), mirrored
    by the decoder; ``flow_hidden`` the IAF MADEs' and the flow prior's networks;
    ``flow_context`` ``None`` (the flow layers read ``h``) or the size of a linear projection
    of ``h`` that they read instead (:class:`flowvi.vae.ProjectedPosterior`). ``prior`` is
    ``normal`` or a flow family of ``prior_length`` layers (:func:`flowvi.vae.make_prior`).
    Time in epochs: ``warmup`` (β rises from ``beta0`` to 1 linearly), ``patience``
    (validation every epoch), ``checkpoint_every``.
    ``samples`` is the number of latent samples per datapoint of the training objective (``k``
    for ``iwae``). ``kl``: the training ELBO's KL term, ``analytic`` where exact (a diagonal
    posterior and the standard-normal prior; Monte Carlo otherwise), ``mc`` for every
    posterior (the estimator flow posteriors use by default: a like-for-like baseline), or
    ``split``: a flow posterior's KL as its base's closed-form KL plus the flow's sampled share
    (:meth:`flowvi.vae.VAE.elbo`), a setting of the model that its validation and test -ELBO
    use too (the same expectation).
    ``compile``: run each training step as one graph compiled by ``torch.compile`` (Adam only,
    one process; the same updates up to float rounding, after a compile of about a minute).
    ``likelihood``: ``bernoulli``, ``continuous-bernoulli`` or ``gaussian``
    (:class:`flowvi.vae.PixelLikelihood`); ``binarize`` ``None`` takes its own (``static`` for
    the Bernoulli, ``none``, grey levels, for the others). ``model = "nlpca"`` trains the
    nonlinear-PCA baseline instead (:func:`flowvi.vae.pca.run_nlpca`, which lists the
    settings it uses).
    """

    model: str = field(
        default="vae", metadata=_option("vae, or the nonlinear-PCA baseline", choices=MODELS)
    )
    data: str = field(
        default="digits", metadata=_option("digits, fashion-mnist or mnist (with --data-dir)")
    )
    data_dir: str | None = field(
        default=None, metadata=_option("directory of IDX files (fashion-mnist, mnist)")
    )
    binarize: str | None = field(
        default=None,
        metadata=_option(
            "static: > 0.5; dynamic: Bernoulli draws; none: grey levels (None: static for the "
            "bernoulli likelihood, none for the others)",
            choices=("static", "dynamic", "none"),
        ),
    )
    likelihood: str = field(
        default="bernoulli",
        metadata=_option(
            "p(x|z) per pixel: bernoulli (binary), continuous-bernoulli or gaussian (grey)",
            choices=("bernoulli", "continuous-bernoulli", "gaussian"),
        ),
    )
    posterior: str = field(
        default="planar", metadata=_option("diagonal, planar, radial, sylvester-o/-h/-t or iaf")
    )
    length: int = field(default=10, metadata=_option("flow length K", aliases=("-K",)))
    latent: int = field(default=40, metadata=_option("latent size d"))
    network: str = field(
        default="mlp",
        metadata=_option("mlp, or gated conv (28x28 or 8x8 images)", choices=NETWORKS),
    )
    hidden: tuple[int, ...] = field(
        default=(300, 300),
        metadata=_option("encoder hidden sizes (decoder mirrored), e.g. 300,300"),
    )
    flow_hidden: tuple[int, ...] = field(
        default=(320, 320), metadata=_option("IAF MADE and flow prior hidden sizes")
    )
    flow_context: int | None = field(
        default=None,
        metadata=_option(
            "the flow layers read a linear projection of the encoder's context to this size (a "
            "low-rank amortization, cheaper heads; None: the context itself)"
        ),
    )
    prior: str = field(
        default="normal",
        metadata=_option("normal, or a flow family over N(0, I) trained with the VAE, e.g. maf"),
    )
    prior_length: int = field(default=1, metadata=_option("layers of the flow prior"))
    objective: str = field(default="elbo", metadata=_option("training bound", choices=OBJECTIVES))
    kl: str = field(
        default="analytic",
        metadata=_option(
            "KL of the ELBO: analytic where exact, Monte Carlo for every posterior (mc), or "
            "split: a flow posterior's base KL in closed form and the flow's share sampled",
            choices=KLS,
        ),
    )
    samples: int = field(default=1, metadata=_option("latent samples per image (k of IWAE)"))
    epochs: int = field(default=100, metadata=_option("maximum training epochs"))
    batch_size: int = field(default=100, metadata=_option("images per iteration"))
    lr: float = field(default=1e-3, metadata=_option("learning rate"))
    optimizer: str = field(default="adam", metadata=_option("adam or rmsprop"))
    warmup: int = field(
        default=10, metadata=_option("epochs of KL warm-up (β from --beta0 to 1; 0: none)")
    )
    beta0: float = field(default=0.01, metadata=_option("initial β of the warm-up"))
    patience: int = field(
        default=20, metadata=_option("epochs without validation improvement before stopping")
    )
    valid_fraction: float = field(
        default=0.1, metadata=_option("validation share of the training images")
    )
    test_fraction: float = field(default=0.2, metadata=_option("test share of digits"))
    seed: int = field(default=0, metadata=_option("random seed"))
    device: str = field(default="cpu", metadata=_option("cpu, cuda, cuda:N or auto"))
    dtype: str = field(default="float32", metadata=_option("float32 or float64"))
    checkpoint_every: int = field(default=1, metadata=_option("epochs between checkpoints"))
    eval_samples: int = field(default=5000, metadata=_option("importance samples k of vae eval"))
    eval_chunk: int = 500
    compile: bool = field(
        default=False,
        metadata=_option(
            "run each training step as one compiled graph (Adam, one process; faster steps "
            "after a compile of a minute or so on a CPU)"
        ),
    )

    def __post_init__(self) -> None:
        if self.binarize is None:  # the likelihood's own: binary pixels for the Bernoulli
            own = "static" if self.likelihood == "bernoulli" else "none"
            object.__setattr__(self, "binarize", own)

    def validate(self) -> None:
        """Refuse impossible settings before any work starts.

        Raises:
            ValueError: naming the setting and the accepted values.
        """
        check_choice(self.model, MODELS, "model")
        check_choice(self.data, DATASETS, "data set")
        check_choice(self.binarize, BINARIZATIONS, "binarization")
        check_choice(self.likelihood, LIKELIHOODS, "likelihood")
        binary = self.binarize != "none"
        if binary != (self.likelihood == "bernoulli"):
            raise ValueError(
                f"--likelihood {self.likelihood} needs "
                + ("binary pixels: --binarize static or dynamic" if not binary else "")
                + ("grey levels: --binarize none" if binary else "")
            )
        if self.model == "nlpca" and self.likelihood != "bernoulli":
            raise ValueError("--model nlpca is trained on binary pixels: --likelihood bernoulli")
        check_choice(self.posterior, POSTERIORS, "posterior")
        check_choice(self.network, NETWORKS, "network")
        check_choice(self.prior, PRIORS, "prior")
        check_choice(self.objective, OBJECTIVES, "objective")
        check_choice(self.kl, KLS, "KL estimate")
        check_choice(self.dtype, DTYPES, "dtype")
        for name in ("length", "prior_length", "latent", "samples", "epochs", "batch_size"):
            check_dim(getattr(self, name), "--" + name.replace("_", "-"))
        for name in ("patience", "checkpoint_every", "eval_samples", "eval_chunk"):
            check_dim(getattr(self, name), "--" + name.replace("_", "-"))
        if len(self.hidden) == 0:
            raise ValueError("--hidden needs at least one size (the encoder's context)")
        for size in (*self.hidden, *self.flow_hidden):
            check_dim(size, "hidden layer size")
        if self.flow_context is not None:
            check_dim(self.flow_context, "--flow-context")
        if self.warmup < 0:
            raise ValueError(f"--warmup must be >= 0 epochs, got {self.warmup}")
        if not 0 <= self.beta0 <= 1:
            raise ValueError(f"--beta0 must lie in [0, 1], got {self.beta0}")
        make_optimizer([torch.zeros(1, requires_grad=True)], self.optimizer, self.lr)
        check_compile(compile=self.compile, optimizer=self.optimizer)
        resolve_device(self.device)


def make_vae(config: VAEConfig, D: int) -> VAE:
    """The model of ``config`` for ``D`` pixels: MLP encoder, amortized posterior, MLP
    Bernoulli decoder with the encoder's hidden sizes reversed, and the prior; or, with
    ``network = "conv"``, the gated convolutional encoder and decoder for square one-channel
    images of ``D`` pixels.

    Raises:
        ValueError: for ``conv`` with an image that is not 28×28 or 8×8.
    """
    if config.network == "conv":
        side = math.isqrt(D)
        if side * side != D:
            raise ValueError(f"--network conv needs square images; {D} pixels are not a square")
        shape = (1, side, side)
        encoder: nn.Module = ConvEncoder(shape)
        likelihood = config.likelihood
        decoder: nn.Module = ConvBernoulliDecoder(config.latent, shape, likelihood=likelihood)
    else:
        encoder = Encoder(D, config.hidden)
        hidden = tuple(reversed(config.hidden))
        decoder = BernoulliDecoder(config.latent, D, hidden, likelihood=config.likelihood)
    posterior = make_posterior(
        config.posterior,
        config.latent,
        encoder.context_dim,
        length=config.length,
        hidden=config.flow_hidden,
        flow_context=config.flow_context,
    )
    prior = make_prior(
        config.prior, config.latent, length=config.prior_length, hidden=config.flow_hidden
    )
    return VAE(encoder, posterior, decoder, prior=prior, split_kl=config.kl == "split")


def _splits(config: VAEConfig) -> BinarySplits:
    return load_binary(
        config.data,
        binarize=config.binarize,
        data_dir=config.data_dir,
        valid_fraction=config.valid_fraction,
        test_fraction=config.test_fraction,
        seed=config.seed,
    )


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
        from flowvi.vae.pca import run_nlpca

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
    splits = _splits(config)
    torch.manual_seed(config.seed)
    D = splits.train.shape[1]
    model = make_vae(config, D)
    model.decoder.init_bias(splits.train.mean(0))
    model = model.to(device=device, dtype=dtype)
    n = len(splits.train)
    per_epoch = math.ceil(n / config.batch_size)
    if resume:  # every check before anything on disk changes
        check_resume(directory, model, config, per_epoch)
    train_x = splits.train.to(device=device, dtype=dtype)
    valid_x = splits.valid.to(device=device, dtype=dtype)
    if writes:
        record = asdict(config) | {"kind": "vae"} | _provenance(splits, device)
        write_config(directory, record, resume=resume, changed=("epochs", "compile"))
    shared = None if ddp is None else ddp.wrap(model)

    anneal = config.warmup * per_epoch

    def order(epoch: int) -> Tensor:
        g = torch.Generator().manual_seed(config.seed + 1000 + epoch)
        return torch.randperm(n, generator=g).to(device)

    cache: dict[int, Tensor] = {}
    analytic = config.kl != "mc"

    def batch_of(t: int) -> tuple[Tensor, Tensor]:
        """Iteration ``t``'s images and β (a 0-d tensor: a compiled step takes it as input)."""
        epoch, batch = divmod(t, per_epoch)
        if epoch not in cache:
            cache.clear()
            cache[epoch] = order(epoch)
        index = cache[epoch][batch * config.batch_size : (batch + 1) * config.batch_size]
        x = train_x[index]
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

    stopper = EarlyStopping(valid_loss, every=per_epoch, patience=config.patience)
    start = time.perf_counter()
    trace = train(
        model,
        BatchLoss(batch_of, loss),
        iters=config.epochs * per_epoch,
        lr=config.lr,
        optimizer=config.optimizer,
        directory=directory,
        resume=resume,
        checkpoint_every=config.checkpoint_every * per_epoch,
        progress=progress,
        desc=f"vae {config.posterior}",
        label="-bound",
        early_stopping=stopper,
        iters_per_epoch=per_epoch,
        save=writes,
        compile=config.compile,
    )
    seconds = time.perf_counter() - start
    if ddp is not None:
        ddp.close()
    if not writes:
        return {}
    done = int((~torch.isnan(trace)).sum())
    save_weights(model, directory, iteration=checkpoint_iteration(directory / CHECKPOINT) or done)
    _write_trace(directory / "trace.csv", trace, stopper.trace, per_epoch, config)
    summary = {
        "valid_neg_elbo": stopper.best,
        "best_epoch": stopper.best_iteration // per_epoch,
        "epochs": math.ceil(done / per_epoch),
        "iterations": done,
        "iterations_per_epoch": per_epoch,
        "stopped_early": stopper.stopped,
        "train_seconds_this_session": seconds,
        "units": "nats per image",
    }
    write_json(directory / "train.json", summary)
    _figures(model, splits, directory)
    return summary


def check_resume(directory: Path, model: nn.Module, config: VAEConfig, per_epoch: int) -> None:
    """Check a ``vae train --resume``: the checkpoint fits ``model`` and ``config.epochs`` is
    not below the epochs done.

    Raises:
        flowvi.io.RunError: for a checkpoint that is unreadable or does not fit ``model``.
        ValueError: for ``--epochs`` below the epochs already done (naming the count).
    """
    done = check_checkpoint(directory, model, early_stopping=True)
    if done is not None and config.epochs * per_epoch < done:
        epochs = math.ceil(done / per_epoch)
        raise ValueError(
            f"--epochs {config.epochs} is below the {epochs} epochs ({done} iterations) already "
            f"done in {directory}: give --epochs {epochs} or more (a run is never cut back)"
        )


def vae_bytes(config: VAEConfig, D: int) -> float:
    """A generous estimate of the memory (bytes) of training a VAE of ``config`` on ``D``
    pixels: parameters with their gradients and Adam moments, and one batch's activations."""
    itemsize = DTYPES[config.dtype].itemsize
    d, K, h = config.latent, config.length, max(config.hidden)
    fh = max(config.flow_hidden)
    sizes = (D, *config.hidden)
    params = 2 * sum(a * b for a, b in itertools.pairwise(sizes))
    params += 3 * h * d + h * K * (2 * d + 1) + K * (d * fh * 3 + fh * fh)
    params += config.prior_length * (d * fh * 3 + fh * fh)
    per_image = config.samples * (2 * D + 2 * sum(config.hidden) + d * (K + 4) + fh * K)
    return itemsize * (4.0 * params + 4.0 * config.batch_size * per_image)


def save_vae(model: VAE, directory: str | Path) -> None:
    """The model's weights (safetensors); its structure is ``config.json``."""
    write_tensors(Path(directory) / WEIGHTS, model.state_dict())


def load_vae(
    directory: str | Path, *, device: str = "cpu", unfinished: bool = False
) -> tuple[VAE, VAEConfig]:
    """The trained model of a ``flowvi vae train`` run directory and its configuration.

    The model is on ``device``, in the run's dtype, in training mode. With ``unfinished``, a
    run still training (killed or interrupted) gives the model of its last checkpoint, with a
    ``UserWarning`` naming its iteration (:func:`flowvi.load` does this).

    Raises:
        flowvi.io.RunError: (a ``ValueError``) naming the file, if ``directory`` holds no
            finished ``flowvi vae`` run (none at all, one of another command, or unfinished
            without ``unfinished``), a nonlinear PCA (load it with
            :func:`flowvi.vae.pca.load_nlpca`), or weights that do not fit its model.
    """
    config, saved = _saved_run(directory, "vae")
    if config.model == "nlpca":
        raise RunError(f"{directory} holds a nonlinear PCA: load it with pca.load_nlpca")
    model = _with_weights(make_vae(config, saved["D"]), directory, unfinished=unfinished)
    return model.to(device=resolve_device(device), dtype=DTYPES[config.dtype]), config


def _saved_run(directory: str | Path, what: str) -> tuple[VAEConfig, dict[str, Any]]:
    """The configuration of a ``flowvi vae train`` run (checked) and its saved ``config.json``.

    Raises:
        flowvi.io.RunError: for no run, a run of another command, or no image size ``D``.
    """
    directory = Path(directory)
    if not (directory / CONFIG).exists():
        raise RunError(f"{directory} holds no finished flowvi {what} run (no {CONFIG})")
    config = vae_config(directory)
    saved = read_config(directory)
    if not isinstance(saved.get("D"), int):
        raise RunError(f"{directory / CONFIG} has no image size 'D': not a complete vae run")
    return config, saved


def _with_weights(model: nn.Module, directory: str | Path, *, unfinished: bool) -> nn.Module:
    """``model`` with the weights of the run in ``directory`` (see :func:`load_vae`)."""
    weights, note = run_weights(directory)
    if note is not None:
        if not unfinished:
            raise RunError(f"{directory} holds no finished flowvi vae run: {note}")
        warnings.warn(note, UserWarning, stacklevel=3)
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        raise RunError(
            f"{Path(directory) / WEIGHTS} does not hold the weights of the model in {CONFIG}: "
            f"{error}"
        ) from None
    return model


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
        from flowvi.vae.pca import evaluate_nlpca

        return evaluate_nlpca(directory, device=device)
    model, config = load_vae(directory, device=device)
    model.eval()
    others = _compared_runs(config, compare, device)
    splits = _splits(config)
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


def posterior_label(config: VAEConfig) -> str:
    """``diagonal``, or the flow family and its length, e.g. ``planar K=10``."""
    return "diagonal" if config.posterior == "diagonal" else f"{config.posterior} K={config.length}"


def _latent_figure(model, config, splits, directory, others) -> list[dict]:
    from flowvi.vae.latent2d import latent_figure

    runs = [(posterior_label(config), model), *others]
    x = splits.test[:4].to(next(model.parameters()))
    path = Path(directory) / "posterior2d.png"
    return latent_figure(runs, x, path, image_shape=splits.image_shape)


@torch.no_grad()
def _figures(model: VAE, splits: BinarySplits, directory: Path) -> None:
    from flowvi.plot import vae_grid

    model.eval()
    p = next(model.parameters())
    z = model.prior().sample((64,))  # through the flow prior, if any
    means = model.decoder(z).mean
    vae_grid(means, directory / "samples.png", shape=splits.image_shape, title="prior samples")
    x = splits.test[:32].to(p)
    recon = model.decoder(model.q(x).sample()).mean
    pairs = torch.stack([x.reshape(4, 8, -1), recon.reshape(4, 8, -1)], 1).reshape(64, -1)
    vae_grid(
        pairs,
        directory / "reconstructions.png",
        shape=splits.image_shape,
        title="test images (odd rows) and reconstructions (even rows)",
    )


def _provenance(splits: BinarySplits, device: torch.device) -> dict[str, Any]:
    return {
        "D": splits.train.shape[1],
        "image_shape": list(splits.image_shape),
        "n": {"train": len(splits.train), "valid": len(splits.valid), "test": len(splits.test)},
        "resolved_device": str(device),
        "versions": versions(),
    }


def _write_trace(path: Path, trace: Tensor, valid, per_epoch: int, config: VAEConfig) -> None:
    at = {t - 1: value for t, value in valid}
    anneal = config.warmup * per_epoch
    buffer = _io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["iteration", "epoch", "beta", "train_loss", "valid_neg_elbo"])
    for t, value in enumerate(trace.tolist()):
        if math.isnan(value):
            continue
        beta = (
            1.0
            if config.objective == "iwae"
            else beta_schedule(t, beta0=config.beta0, anneal_iters=anneal, allow_zero=True)
        )
        valid_value = f"{at[t]:.6g}" if t in at else ""
        writer.writerow([t, t // per_epoch, f"{beta:.4g}", f"{value:.6g}", valid_value])
    text = buffer.getvalue()
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def vae_config(directory: str | Path, **overrides: Any) -> VAEConfig:
    """The :class:`VAEConfig` saved in a run directory, with ``overrides`` (e.g. ``epochs``).

    Raises:
        flowvi.io.RunError: (a ``ValueError``) naming the ``config.json``: missing, not a JSON
            object, of a run of another command (a ``flowvi fit`` run, say), or holding
            settings of the wrong type.
    """
    saved = read_config(directory, kind=("vae", "nlpca"))
    known = {f.name for f in fields(VAEConfig)}
    values = {k: v for k, v in saved.items() if k in known}
    try:
        for name in ("hidden", "flow_hidden"):
            if name in values:
                values[name] = tuple(values[name])
        config = VAEConfig(**values)
    except TypeError as error:
        raise RunError(
            f"{Path(directory) / CONFIG} holds settings of the wrong type: {error}"
        ) from None
    return replace(config, **{k: v for k, v in overrides.items() if v is not None})

"""What a ``flowvi vae train`` run is: its configuration (:class:`VAEConfig`, saved as
``config.json``), the model it builds, its data, and loading it back from a run directory.
Training and evaluating runs is the application's (:mod:`flowvi.app.vae`)."""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from flowvi._checks import check_choice, check_dim
from flowvi.io import CONFIG, WEIGHTS, RunError, read_config, run_weights
from flowvi.settings import DTYPES, FLOW_OPTIONS, resolve_device
from flowvi.train import check_compile, make_optimizer
from flowvi.vae.data import BINARIZATIONS, DATASETS, BinarySplits, load_binary
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

OBJECTIVES = ("elbo", "iwae")
KLS = ("analytic", "mc", "split")
NETWORKS = ("mlp", "conv")
MODELS = ("vae", "nlpca")


def _option(text: str, **more: Any) -> dict[str, Any]:
    """A field's command-line help (and ``choices``, ``aliases``), read by
    :mod:`flowvi.app.options`."""
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
    nonlinear-PCA baseline instead (:func:`flowvi.app.nlpca.run_nlpca`, which lists the
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
    optimizer: str = field(default="adam", metadata=FLOW_OPTIONS["optimizer"])
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
    dtype: str = field(default="float32", metadata=FLOW_OPTIONS["dtype"])
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


def load_splits(config: VAEConfig) -> BinarySplits:
    """The train, validation and test images of ``config`` (its data, binarization, split
    fractions and seed), as :func:`flowvi.vae.data.load_binary` gives them."""
    return load_binary(
        config.data,
        binarize=config.binarize,
        data_dir=config.data_dir,
        valid_fraction=config.valid_fraction,
        test_fraction=config.test_fraction,
        seed=config.seed,
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
    config, saved = saved_run(directory, "vae")
    if config.model == "nlpca":
        raise RunError(
            f"{directory} holds a nonlinear PCA (--model nlpca), not a VAE: it has no posterior "
            "q(z|x); flowvi.load or flowvi.vae.pca.load_nlpca gives its model"
        )
    model = with_weights(make_vae(config, saved["D"]), directory, unfinished=unfinished)
    return model.to(device=resolve_device(device), dtype=DTYPES[config.dtype]), config


def saved_run(directory: str | Path, what: str) -> tuple[VAEConfig, dict[str, Any]]:
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


def with_weights(model: nn.Module, directory: str | Path, *, unfinished: bool) -> nn.Module:
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


def posterior_label(config: VAEConfig) -> str:
    """``diagonal``, or the flow family and its length, e.g. ``planar K=10``."""
    return "diagonal" if config.posterior == "diagonal" else f"{config.posterior} K={config.length}"

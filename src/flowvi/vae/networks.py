"""Encoder and decoder networks of a VAE: an MLP to the context h, and likelihood heads."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Bernoulli, ContinuousBernoulli, Distribution, Independent, Normal

from flowvi._checks import check_choice, check_dim

LIKELIHOODS = ("bernoulli", "continuous-bernoulli", "gaussian")


class PixelLikelihood(nn.Module):
    r""":math:`p(x \mid z) = \prod_j p(x_j; o_j)` from a decoder's per-pixel outputs
    ``o: (*batch, D)``; ``forward(o)`` returns it as ``Independent(..., 1)``, event ``(D,)``.

    - ``bernoulli``: :math:`\mathrm{Bernoulli}(\sigma(o_j))` for binary pixels; ``log_prob`` is
      the negative binary cross-entropy (nats, from logits: stable).
    - ``continuous-bernoulli``: the continuous Bernoulli :math:`\mathcal{CB}(\lambda_j =
      \sigma(o_j))` on :math:`[0, 1]` (Loaiza-Ganem & Cunningham 2019), the Bernoulli form
      normalized as a density, for grey levels (``torch.distributions.ContinuousBernoulli``).
    - ``gaussian``: :math:`\mathcal N(\sigma(o_j), s_j^2)` for grey levels, the mean in
      :math:`[0, 1]` and :math:`s_j = \mathrm{softplus}(r_j) + 10^{-3}` a learned scale per
      pixel (starting at 0.1), not a function of :math:`z`.

    The two grey-level likelihoods are densities: their ``ln p(x)`` (nats per image) may be
    positive and is not comparable with a Bernoulli model's probabilities of binarized images.

    Raises:
        ValueError: for an unknown likelihood.
    """

    def __init__(self, kind: str, D: int) -> None:
        super().__init__()
        check_choice(kind, LIKELIHOODS, "likelihood")
        self.kind = kind
        if kind == "gaussian":
            self.scale = nn.Parameter(torch.full((D,), math.log(math.expm1(0.1 - 1e-3))))

    def forward(self, out: Tensor) -> Distribution:
        if self.kind == "bernoulli":
            base: Distribution = Bernoulli(logits=out, validate_args=False)
        elif self.kind == "continuous-bernoulli":
            base = ContinuousBernoulli(logits=out, validate_args=False)
        else:
            base = Normal(torch.sigmoid(out), F.softplus(self.scale) + 1e-3, validate_args=False)
        return Independent(base, 1)

    def extra_repr(self) -> str:
        return self.kind


def _mlp(sizes: Sequence[int], *, last_activation: bool) -> nn.Sequential:
    """Linear layers ``sizes[0] -> … -> sizes[-1]`` with ReLUs (also after the last if asked).

    PyTorch's default initialization everywhere: :class:`flowvi.nn.MLP` zeroes its last layer
    (a flow conditioner starting at the identity), which would give an encoder a constant zero
    context whose ReLU passes no gradient.
    """
    for size in sizes:
        check_dim(size, "layer size")
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2 or last_activation:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """The inference network's trunk: ``x: (*batch, D) -> h: (*batch, hidden[-1])``.

    ``h`` (after a ReLU) is the context of the posterior: the base's mean and scale heads and
    every amortized flow layer read it (see :func:`flowvi.vae.make_posterior`).

    Args:
        D: data dimension.
        hidden: hidden layer sizes (at least one); ``hidden[-1]`` is the context size.

    Raises:
        ValueError: for an empty ``hidden`` or a size that is not a positive integer.
    """

    def __init__(self, D: int, hidden: Sequence[int] = (300, 300)) -> None:
        super().__init__()
        if len(hidden) == 0:
            raise ValueError("the encoder needs at least one hidden layer (its context h)")
        self.context_dim = hidden[-1]
        self.net = _mlp([D, *hidden], last_activation=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class BernoulliDecoder(nn.Module):
    r""":math:`p(x \mid z) = \prod_j \mathrm{Bernoulli}(x_j; \sigma(\ell_j(z)))` for binary data
    (or a grey-level likelihood, see ``likelihood``).

    ``forward(z: (*batch, d))`` returns an ``Independent(Bernoulli(logits), 1)`` with batch
    shape ``*batch`` and event shape ``(D,)``; its ``log_prob`` is the negative binary
    cross-entropy summed over pixels (nats), computed from logits (stable).

    Args:
        d: latent size. D: data dimension. hidden: hidden sizes (may be empty: linear).
        likelihood: ``bernoulli`` (binary pixels), or ``continuous-bernoulli`` or ``gaussian``
            for grey levels in [0, 1] (see :class:`PixelLikelihood`).
    """

    def __init__(
        self, d: int, D: int, hidden: Sequence[int] = (300, 300), *, likelihood: str = "bernoulli"
    ) -> None:
        super().__init__()
        self.net = _mlp([d, *hidden, D], last_activation=False)
        self.likelihood = PixelLikelihood(likelihood, D)

    def init_bias(self, mean: Tensor) -> None:
        """Start the output bias at the logits of the training data's pixel means ``(D,)``
        (clamped to [1e-3, 1 - 1e-3]), so the first decoder already predicts the mean image."""
        p = mean.clamp(1e-3, 1 - 1e-3).to(self.net[-1].bias)
        with torch.no_grad():
            self.net[-1].bias.copy_(torch.logit(p))

    def forward(self, z: Tensor) -> Distribution:
        return self.likelihood(self.net(z))


class LinearGaussianDecoder(nn.Module):
    r""":math:`p(x \mid z) = \mathcal N(x; Wz + b, \sigma^2 I)`: the linear-Gaussian model.

    With the prior :math:`\mathcal N(0, I)` both the evidence and the posterior are Gaussian in
    closed form (:meth:`log_evidence`, :meth:`posterior`), which makes it the reference model
    for checking bounds and posteriors. ``W: (D, d)``, ``b: (D,)`` and ``sigma`` are buffers
    (a frozen decoder).
    """

    def __init__(self, W: Tensor, b: Tensor, sigma: float) -> None:
        super().__init__()
        if not sigma > 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        self.register_buffer("W", W)
        self.register_buffer("b", b)
        self.register_buffer("sigma", torch.tensor(float(sigma), dtype=W.dtype))

    def forward(self, z: Tensor) -> Distribution:
        return Independent(Normal(z @ self.W.mT + self.b, self.sigma), 1)

    def log_evidence(self, x: Tensor) -> Tensor:
        r""":math:`\ln p(x) = \ln \mathcal N(x; b, WW^\top + \sigma^2 I)`, shape ``(*batch,)``."""
        D = self.W.shape[0]
        cov = self.W @ self.W.mT + self.sigma**2 * torch.eye(D, dtype=self.W.dtype)
        return torch.distributions.MultivariateNormal(self.b, cov).log_prob(x)

    def posterior(self, x: Tensor) -> torch.distributions.MultivariateNormal:
        r""":math:`p(z \mid x) = \mathcal N(\Sigma W^\top (x - b) / \sigma^2, \Sigma)`,
        :math:`\Sigma = (I + W^\top W / \sigma^2)^{-1}`; batch shape ``*batch``."""
        d = self.W.shape[1]
        precision = torch.eye(d, dtype=self.W.dtype) + self.W.mT @ self.W / self.sigma**2
        cov = torch.linalg.inv(precision)
        mean = (x - self.b) @ self.W / self.sigma**2 @ cov
        return torch.distributions.MultivariateNormal(mean, cov)


class GatedConv2d(nn.Module):
    r"""A gated convolution, :math:`y = (W_h * x + b_h) \odot \sigma(W_g * x + b_g)`
    (van den Berg et al. 2018, their encoders and decoders; the gate of Dauphin et al. 2017).

    One ``Conv2d`` (or ``ConvTranspose2d`` with ``transpose=True``) computes both halves.
    ``x: (n, c_in, H, W) -> (n, c_out, H', W')`` with the usual convolution arithmetic.

    Args:
        c_in, c_out: channels. kernel, stride, padding: as for ``nn.Conv2d``.
        output_padding: extra rows/columns of a transposed convolution (for stride 2 to
            double the size exactly).
        transpose: a transposed convolution (decoders).
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel: int,
        *,
        stride: int = 1,
        padding: int = 0,
        output_padding: int = 0,
        transpose: bool = False,
    ) -> None:
        super().__init__()
        for size, name in ((c_in, "input channels"), (c_out, "output channels")):
            check_dim(size, name)
        if transpose:
            self.conv: nn.Module = nn.ConvTranspose2d(
                c_in, 2 * c_out, kernel, stride, padding, output_padding
            )
        else:
            self.conv = nn.Conv2d(c_in, 2 * c_out, kernel, stride, padding)

    def forward(self, x: Tensor) -> Tensor:
        h, g = self.conv(x).chunk(2, dim=1)
        return h * torch.sigmoid(g)


# (c_in, c_out, kernel, stride, padding[, output_padding]) per gated layer, for each image side.
# 28 x 28: van den Berg et al.'s MNIST networks (28 -> 14 -> 7 -> 1 and back, context 256).
# 8 x 8 (scikit-learn digits): a small variant of the same pattern (8 -> 4 -> 1, context 64).
_CONV_ENCODERS = {
    28: [(32, 5, 1, 2), (32, 5, 2, 2), (64, 5, 1, 2), (64, 5, 2, 2), (64, 5, 1, 2), (256, 7, 1, 0)],
    8: [(16, 3, 1, 1), (32, 3, 2, 1), (32, 3, 1, 1), (64, 4, 1, 0)],
}
_CONV_DECODERS = {
    28: [
        (64, 7, 1, 0, 0),
        (64, 5, 1, 2, 0),
        (32, 5, 2, 2, 1),
        (32, 5, 1, 2, 0),
        (32, 5, 2, 2, 1),
        (32, 5, 1, 2, 0),
    ],
    8: [(32, 4, 1, 0, 0), (32, 3, 1, 1, 0), (16, 3, 2, 1, 1), (16, 3, 1, 1, 0)],
}
CONV_SIDES = tuple(sorted(_CONV_ENCODERS))


def _image_shape(image_shape: Sequence[int]) -> tuple[int, int, int]:
    if len(image_shape) != 3 or image_shape[1] != image_shape[2]:
        raise ValueError(f"image_shape must be (C, H, W) with H == W, got {tuple(image_shape)}")
    c, side, _ = (int(s) for s in image_shape)
    check_dim(c, "image channels")
    if side not in _CONV_ENCODERS:
        raise ValueError(
            f"the convolutional networks take {' or '.join(f'{s}x{s}' for s in CONV_SIDES)} "
            f"images, got {side}x{side}; use the MLP (--network mlp) for other sizes"
        )
    return c, side, side


class ConvEncoder(nn.Module):
    """A gated convolutional inference trunk: ``x: (*batch, C*H*W) -> h: (*batch, c)``.

    For 28×28 images the encoder of van den Berg et al. (2018): six :class:`GatedConv2d`
    layers, 5×5 kernels, channels 32-32-64-64-64, strides 1-2-1-2-1 (28 → 14 → 7), then a 7×7
    gated convolution to ``c = 256`` channels at 1×1. For 8×8 images (digits) a small variant:
    3×3 kernels, channels 16-32-32 (8 → 4), then 4×4 to ``c = 64``. The flattened pixels are
    read in C, H, W order (as :func:`flowvi.vae.data.load_binary` stores them).

    Args:
        image_shape: ``(C, H, W)``, with ``H = W`` 28 or 8.

    Raises:
        ValueError: for another image size.
    """

    def __init__(self, image_shape: Sequence[int]) -> None:
        super().__init__()
        self.image_shape = _image_shape(image_shape)
        c, side = self.image_shape[0], self.image_shape[1]
        layers, channels = [], c
        for out, kernel, stride, padding in _CONV_ENCODERS[side]:
            layers.append(GatedConv2d(channels, out, kernel, stride=stride, padding=padding))
            channels = out
        self.net = nn.Sequential(*layers)
        self.context_dim = channels

    def forward(self, x: Tensor) -> Tensor:
        batch = x.shape[:-1]
        h = self.net(x.reshape(-1, *self.image_shape))
        return h.reshape(*batch, self.context_dim)


class ConvBernoulliDecoder(nn.Module):
    r"""A gated transposed-convolutional :math:`p(x \mid z)`, Bernoulli per pixel.

    ``z: (*batch, d)`` is read as a ``d``-channel 1×1 image; for 28×28 the decoder of van den
    Berg et al. (2018): a 7×7 gated transposed convolution to 64 channels at 7×7, then 5×5
    layers 64-32-32-32-32 (7 → 14 → 28), for 8×8 the small mirror of :class:`ConvEncoder`;
    a 1×1 convolution gives the ``C`` logits per pixel, plus a per-pixel bias (see
    :meth:`init_bias`). ``forward`` returns ``Independent(Bernoulli(logits), 1)`` with batch
    shape ``*batch`` and event shape ``(C*H*W,)``, like :class:`BernoulliDecoder`, or with
    ``likelihood`` a grey-level one (:class:`PixelLikelihood`).

    Raises:
        ValueError: for an image size other than 28×28 or 8×8, or a bad ``d``.
    """

    def __init__(
        self, d: int, image_shape: Sequence[int], *, likelihood: str = "bernoulli"
    ) -> None:
        super().__init__()
        check_dim(d, "latent size d")
        self.image_shape = _image_shape(image_shape)
        self.d = d
        layers, channels = [], d
        for out, kernel, stride, padding, extra in _CONV_DECODERS[self.image_shape[1]]:
            layers.append(
                GatedConv2d(
                    channels,
                    out,
                    kernel,
                    stride=stride,
                    padding=padding,
                    output_padding=extra,
                    transpose=True,
                )
            )
            channels = out
        layers.append(nn.Conv2d(channels, self.image_shape[0], 1))
        self.net = nn.Sequential(*layers)
        D = self.image_shape[0] * self.image_shape[1] * self.image_shape[2]
        self.pixel_bias = nn.Parameter(torch.zeros(D))
        self.likelihood = PixelLikelihood(likelihood, D)

    def init_bias(self, mean: Tensor) -> None:
        """Start the per-pixel bias at the logits of the training data's pixel means ``(D,)``
        (clamped to [1e-3, 1 - 1e-3]), as :meth:`BernoulliDecoder.init_bias`."""
        p = mean.clamp(1e-3, 1 - 1e-3).to(self.pixel_bias)
        with torch.no_grad():
            self.pixel_bias.copy_(torch.logit(p))

    def forward(self, z: Tensor) -> Distribution:
        batch = z.shape[:-1]
        logits = self.net(z.reshape(-1, self.d, 1, 1)).reshape(*batch, -1) + self.pixel_bias
        return self.likelihood(logits)

"""Fixed (untrained) layers at the data end of a flow: standardization and pre-processing."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from flowvi._checks import check_dim
from flowvi.transforms import AffineTransform


class FixedAffine(nn.Module):
    r"""A fixed elementwise affine map :math:`x = \mu + \sigma \odot y` (buffers, no parameters).

    Placed last in a flow, it maps the model's standardized space back to data units, so that
    ``log_prob`` of raw data includes the standardization's Jacobian,
    :math:`\ln p(x) = \ln q(y) - \sum_i \ln \sigma_i` with :math:`y = (x - \mu)/\sigma`.
    ``flowvi density`` puts the training data's mean and standard deviation here; the values are
    saved with the weights. Starts at the identity; ``context`` is accepted and ignored.

    Args:
        d: dimension.
        loc: :math:`\mu`, shape ``(d,)`` (default zeros).
        scale: :math:`\sigma > 0`, shape ``(d,)`` (default ones).

    Raises:
        ValueError: if the shapes are not ``(d,)`` or a scale is not positive and finite.
    """

    def __init__(
        self,
        d: int,
        *,
        loc: Tensor | None = None,
        scale: Tensor | None = None,
        context_dim: int | None = None,
    ) -> None:
        super().__init__()
        check_dim(d)
        self.d, self.context_dim = d, None
        loc = (
            torch.zeros(d) if loc is None else torch.as_tensor(loc, dtype=torch.get_default_dtype())
        )
        scale = torch.ones(d) if scale is None else torch.as_tensor(scale, dtype=loc.dtype)
        if loc.shape != (d,) or scale.shape != (d,):
            raise ValueError(
                f"loc and scale must have shape ({d},), "
                f"got {tuple(loc.shape)} and {tuple(scale.shape)}"
            )
        if not bool(torch.isfinite(scale).all() & (scale > 0).all()):
            raise ValueError("every scale must be positive and finite")
        self.register_buffer("loc", loc.clone())
        self.register_buffer("log_scale", scale.log())

    def forward(self, context: Tensor | None = None) -> AffineTransform:
        return AffineTransform(self.loc, self.log_scale)

    def extra_repr(self) -> str:
        return f"d={self.d}"

"""flowvi's bijection base class, its inverse and composition.

Every flow layer is a :class:`Transform`: a ``torch.distributions.Transform`` over vectors
(``event_dim = 1``) built from plain tensors (no ``nn.Parameter``), so that it works wherever torch
expects a transform (``TransformedDistribution``, ``ComposeTransform``) and adds one method,
:meth:`Transform.call_and_ladj`, that returns the image and its log-determinant in one pass.
Any other ``torch.distributions.Transform`` of ``event_dim`` 0 or 1 (torch's ``AffineTransform``,
``ExpTransform``, ...) becomes one by :func:`as_transform`, which a flow applies to its layers'
transforms.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.distributions import constraints


class Transform(torch.distributions.Transform):
    r"""A bijection :math:`y = f(x)` on :math:`\mathbb{R}^d` with a tractable log-determinant.

    Subclasses implement :meth:`call_and_ladj` and :meth:`_inverse`, and may override
    :meth:`_inverse_and_ladj` when the inverse yields the log-determinant for free.

    Shapes: ``x, y: (*batch, d)``; ``ladj: (*batch,)``. Parameters may carry leading batch
    dimensions (amortized flows, one transform per datapoint) that broadcast against ``*batch``.
    No cache: ``t.inv(y)`` always solves for ``x``, so it is valid at any point, not only at
    samples the transform produced.
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(self) -> None:
        super().__init__(cache_size=0)

    def call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(y, ladj)``: ``y = f(x)``, ``ladj = ln|det ∂y/∂x|`` (nats), ``(*batch,)``."""
        raise NotImplementedError

    def _inverse_and_ladj(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(x, ln|det ∂x/∂y|)`` with ``x = f⁻¹(y)``."""
        x = self._inverse(y)
        return x, -self.call_and_ladj(x)[1]

    def _call(self, x: Tensor) -> Tensor:
        return self.call_and_ladj(x)[0]

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        """``ln|det ∂y/∂x|`` at ``x`` (``y`` is unused: it is recomputed), shape ``(*batch,)``."""
        return self.call_and_ladj(x)[1]

    def unbind(self) -> list[Transform]:
        """Split a transform whose parameters carry a leading stack axis into one per slice.

        Every tensor attribute of a flowvi transform is derived from its parameters and so has
        the parameter batch shape ``*p`` in front; ``unbind`` slices all of them along the first
        axis of ``*p``. Building K layers' transforms as one stacked transform and unbinding it
        computes every constraint (``û``, ``β̂``, ...) in one vectorized pass instead of K.
        """
        tensors = {k: v.unbind(0) for k, v in vars(self).items() if isinstance(v, Tensor)}
        n = len(next(iter(tensors.values())))
        parts = []
        for i in range(n):
            part = copy.copy(self)
            part._inv = None
            for name, slices in tensors.items():
                setattr(part, name, slices[i])
            parts.append(part)
        return parts

    @property
    def inv(self) -> Transform:
        """The inverse bijection, itself a flowvi :class:`Transform` with ``call_and_ladj``."""
        if self._inv is None:
            self._inv = _Inverse(self)
        return self._inv

    def __eq__(self, other: object) -> bool:
        return self is other

    def __hash__(self) -> int:
        return id(self)


class _Inverse(Transform):
    """The inverse of a :class:`Transform`; ``inv`` of it gives the original back."""

    def __init__(self, transform: Transform) -> None:
        super().__init__()
        self._forward = transform

    @property
    def inv(self) -> Transform:
        return self._forward

    def call_and_ladj(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return self._forward._inverse_and_ladj(y)

    def _inverse(self, x: Tensor) -> Tensor:
        return self._forward(x)

    def _inverse_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y, ladj = self._forward.call_and_ladj(x)
        return y, -ladj

    def __repr__(self) -> str:
        return f"Inverse({self._forward!r})"


class ForeignTransform(Transform):
    r"""A ``torch.distributions.Transform`` of ``event_dim`` 0 or 1 as a flowvi :class:`Transform`.

    ``call_and_ladj(x)`` is ``(t(x), t.log_abs_det_jacobian(x, t(x)))``, the log-determinant
    summed over the last dimension when ``t`` is elementwise (``event_dim`` 0), and the inverse
    is ``t.inv`` with the negated log-determinant at the solution: two calls where flowvi's own
    transforms make one pass. Made by :func:`as_transform`.

    Args:
        transform: a bijective ``torch.distributions.Transform``, ``event_dim`` 0 or 1, whose
            parameters broadcast against ``x: (*batch, d)``.

    Raises:
        ValueError: if ``transform`` is not bijective or its ``event_dim`` is not 0 or 1.
    """

    def __init__(self, transform: torch.distributions.Transform) -> None:
        super().__init__()
        if not transform.bijective:
            raise ValueError(f"a flow layer must be a bijection; {transform!r} is not")
        if transform.event_dim not in (0, 1):
            raise ValueError(
                f"a flow layer's transform acts on vectors (event_dim 1) or elementwise "
                f"(event_dim 0); {transform!r} has event_dim {transform.event_dim}"
            )
        self.transform = transform

    def _ladj(self, x: Tensor, y: Tensor) -> Tensor:
        ladj = self.transform.log_abs_det_jacobian(x, y)
        if self.transform.event_dim == 0:
            ladj = torch.broadcast_to(ladj, y.shape).sum(-1)
        return torch.broadcast_to(ladj, y.shape[:-1])

    def call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y = self.transform(x)
        return y, self._ladj(x, y)

    def _inverse(self, y: Tensor) -> Tensor:
        return self.transform.inv(y)

    def _inverse_and_ladj(self, y: Tensor) -> tuple[Tensor, Tensor]:
        x = self.transform.inv(y)
        return x, -self._ladj(x, y)

    def __repr__(self) -> str:
        return f"ForeignTransform({self.transform!r})"


def as_transform(transform: torch.distributions.Transform) -> Transform:
    """``transform`` as a flowvi :class:`Transform`: itself if it is one, else wrapped in a
    :class:`ForeignTransform`.

    Raises:
        ValueError: for a transform that is not bijective or whose ``event_dim`` is not 0 or 1.
    """
    if isinstance(transform, Transform):
        return transform
    return ForeignTransform(transform)


class ComposeTransform(Transform):
    """The composition ``f_K ∘ … ∘ f_1`` of ``parts = [f_1, …, f_K]``, applied left to right.

    Parts that are not flowvi transforms are wrapped by :func:`as_transform`.

    ``ladj`` is the sum of the parts' log-determinants (chain rule); the inverse runs the parts'
    inverses right to left.
    """

    def __init__(self, parts: Sequence[torch.distributions.Transform]) -> None:
        super().__init__()
        self.parts = [as_transform(part) for part in parts]

    def call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        ladjs = []
        for part in self.parts:
            x, ladj = part.call_and_ladj(x)
            ladjs.append(torch.broadcast_to(ladj, x.shape[:-1]))
        return x, _total(ladjs, x)

    def _inverse(self, y: Tensor) -> Tensor:
        return self._inverse_and_ladj(y)[0]

    def _inverse_and_ladj(self, y: Tensor) -> tuple[Tensor, Tensor]:
        ladjs = []
        for part in reversed(self.parts):
            y, ladj = part.inv.call_and_ladj(y)
            ladjs.append(torch.broadcast_to(ladj, y.shape[:-1]))
        return y, _total(ladjs, y)

    def __repr__(self) -> str:
        return f"ComposeTransform({self.parts!r})"


def _total(ladjs: list[Tensor], x: Tensor) -> Tensor:
    """The sum of per-part log-determinants, in one reduction (one autograd node, not K)."""
    if not ladjs:
        return x.new_zeros(x.shape[:-1])
    return torch.stack(ladjs).sum(0)

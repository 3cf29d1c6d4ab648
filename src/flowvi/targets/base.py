"""The target interface: an unnormalized log density on R^d."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from flowvi._checks import check_dim
from flowvi.targets.sites import Site, check_sites, constrain, vector_site

Box = tuple[tuple[float, float], ...]


class Target(nn.Module):
    r"""An unnormalized log density :math:`\ln \tilde p(z) = -U(z)` on :math:`\mathbb{R}^d`.

    Subclasses implement :meth:`_log_prob`. Constants are buffers, so ``target.to(device)``
    works; the result takes the input's dtype.

    Attributes:
        dim: ``d``.
        box: per-dimension ``(lo, hi)`` ranges where the mass lies (plots, quadrature), or
            ``None`` if unknown.
        log_normalizer: the exact :math:`\ln Z = \ln \int \tilde p` in nats if known in closed
            form, else ``None`` (then :func:`flowvi.metrics.log_normalizer` computes it on a grid).
        normalizable: ``False`` if :math:`\int \tilde p = \infty`, so that no KL to it exists.
        sites: the model's named parameters (:class:`flowvi.targets.Site`), in the order their
            unconstrained slices appear in ``z``; by default one real vector ``z`` of shape
            ``(d,)``. Summaries and :meth:`constrain` report the posterior per site.
    """

    def __init__(
        self,
        dim: int,
        *,
        name: str,
        box: Box | None = None,
        log_normalizer: float | None = None,
        normalizable: bool = True,
        sites: Sequence[Site] | None = None,
    ) -> None:
        super().__init__()
        check_dim(dim)
        self.dim, self.name, self.box = dim, name, box
        self.log_normalizer, self.normalizable = log_normalizer, normalizable
        self.sites = vector_site(dim) if sites is None else check_sites(sites, dim)

    def constrain(self, z: Tensor) -> dict[str, Tensor]:
        """The model's parameters at ``z: (*batch, d)``, by site name, each of shape
        ``(*batch, *site.shape)`` in its constrained space (a scale positive, …)."""
        return constrain(self.sites, z)

    def log_prob(self, z: Tensor) -> Tensor:
        """Unnormalized log density in nats, shape ``(*batch,)`` for ``z: (*batch, d)``.

        Raises:
            ValueError: if the last dimension of ``z`` is not ``d``.
        """
        if z.shape[-1:] != (self.dim,):
            raise ValueError(
                f"target {self.name} is {self.dim}-dimensional: expected z of shape "
                f"(*batch, {self.dim}), got {tuple(z.shape)}"
            )
        return self._log_prob(z)

    def initial_point(self) -> Tensor:
        """Where a fit starts its guide, ``(d,)`` in the unconstrained space: zeros here; a
        model's prior median (:class:`flowvi.pyro.PyroTarget`)."""
        return torch.zeros(self.dim)

    def exact(self) -> Target:
        """This target with an exact log density, for diagnostics and summaries: a model whose
        every call scores a random subsample of its data (an unbiased but noisy estimate, right
        for stochastic optimization, wrong for importance weights) gives its full-data log
        joint (:meth:`flowvi.pyro.PyroTarget.exact`); every other target returns itself."""
        return self

    def energy(self, z: Tensor) -> Tensor:
        """:math:`U(z) = -\\ln \\tilde p(z)`, shape ``(*batch,)``."""
        return -self.log_prob(z)

    def _log_prob(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, z: Tensor) -> Tensor:
        return self.log_prob(z)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, dim={self.dim}"


class FunctionTarget(Target):
    """A user's log density ``fn(z: (batch, d)) -> (batch,)`` as a :class:`Target`.

    Raises:
        ValueError: if ``fn`` fails on, or returns the wrong shape for, a probe batch of shape
            ``(3, dim)``: the usual sign of a wrong ``dim``.
    """

    def __init__(
        self,
        fn: Callable[[Tensor], Tensor],
        dim: int,
        *,
        name: str | None = None,
        box: Sequence[tuple[float, float]] | None = None,
    ) -> None:
        super().__init__(
            dim,
            name=name or getattr(fn, "__name__", "target"),
            box=None if box is None else tuple(box),
        )
        self.fn = fn
        probe = torch.zeros(3, dim)
        try:
            out = torch.as_tensor(fn(probe))
        except Exception as error:  # any failure here means a bad target
            raise ValueError(
                f"target {self.name} fails on z of shape (3, {dim}): {error!r}; "
                f"is --dim {dim} its dimension?"
            ) from error
        if out.shape != (3,):
            raise ValueError(
                f"target {self.name} must map z of shape (batch, {dim}) to shape (batch,); "
                f"it returned shape {tuple(out.shape)} for batch 3"
            )

    def _log_prob(self, z: Tensor) -> Tensor:
        return self.fn(z)

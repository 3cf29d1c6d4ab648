r"""The VAE: prior, encoder, amortized flow posterior and decoder, and its log weights."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Normal

from flowvi.flows import NormalizingFlow
from flowvi.objectives import elbo, iwae


class VAE(nn.Module):
    r"""A deep latent-variable model :math:`p(z) p(x \mid z)`, :math:`p(z) = \mathcal N(0, I)`
    or a learned flow, with the amortized posterior :math:`q(z \mid x)` =
    ``posterior(encoder(x))``.

    Args:
        encoder: ``x: (*batch, D) -> h: (*batch, c)``, e.g. :class:`flowvi.vae.Encoder`.
        posterior: a :class:`flowvi.flows.NormalizingFlow` whose base and layers take ``h`` as
            context (see :func:`flowvi.vae.make_posterior`).
        decoder: ``z: (*batch, d) ->`` a distribution over ``x`` with event shape ``(D,)``.
        prior: ``None`` for :math:`\mathcal N(0, I)`, or an unconditional
            :class:`flowvi.flows.NormalizingFlow` over ``d`` latents trained with the model
            (see :func:`flowvi.vae.make_prior`); its weights are ``prior_flow.*`` in the
            state dict.
        split_kl: estimate a flow posterior's KL in :meth:`elbo` as the base's closed-form
            KL plus the flow's sampled share (``flowvi vae train --kl split``).

    Raises:
        ValueError: if the prior's event shape differs from the posterior's.
    """

    def __init__(
        self,
        encoder: nn.Module,
        posterior: NormalizingFlow,
        decoder: nn.Module,
        *,
        prior: NormalizingFlow | None = None,
        split_kl: bool = False,
    ) -> None:
        super().__init__()
        self.encoder, self.posterior, self.decoder = encoder, posterior, decoder
        self.split_kl = split_kl
        self.d = posterior.event_shape[-1]
        if prior is not None and tuple(prior.event_shape) != (self.d,):
            raise ValueError(
                f"the prior's event shape {tuple(prior.event_shape)} differs from the "
                f"posterior's ({self.d},)"
            )
        self.prior_flow = prior
        self.register_buffer("zero", torch.zeros(self.d))

    @property
    def flowless(self) -> bool:
        """True for a diagonal-Gaussian posterior (no layers) and the standard-normal prior:
        the KL is then analytic."""
        return len(self.posterior.layers) == 0 and self.prior_flow is None

    def prior(self) -> Distribution:
        r""":math:`p(z)`, event shape ``(d,)``: :math:`\mathcal N(0, I_d)`, or the flow prior's
        :class:`flowvi.flows.FlowDistribution` (built afresh from its current parameters)."""
        if self.prior_flow is not None:
            return self.prior_flow()
        return Independent(Normal(self.zero, torch.ones_like(self.zero)), 1)

    def q(self, x: Tensor):
        r""":math:`q(z \mid x)` for ``x: (*batch, D)``, with batch shape ``*batch``."""
        return self.posterior(self.encoder(x))

    def terms(
        self, x: Tensor, samples: int = 1, *, noise: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        r"""``(log_lik, log_prior, log_q)``, each ``(samples, *batch)`` nats, at
        reparameterized :math:`z_s \sim q(z \mid x)` (one encoder pass for all samples).

        ``noise``: the standard-normal draws :math:`\epsilon` of the base, ``(samples, *batch,
        d)``, instead of fresh ones (data-parallel training slices one global draw, so that
        every rank uses the numbers a single process would), :math:`z_0 = \mu + \sigma
        \epsilon`, exactly as the base's ``rsample``.
        """
        q = self.q(x)
        if noise is None:
            z, log_q = q.rsample_and_log_prob((samples,))
        else:
            z0 = q.base_dist.mean + noise * q.base_dist.stddev
            z, ladj = q.flow.call_and_ladj(z0)
            log_q = q.base_dist.log_prob(z0) - ladj
        return self.decoder(z).log_prob(x), self.prior().log_prob(z), log_q

    def log_weights(self, x: Tensor, samples: int = 1, *, noise: Tensor | None = None) -> Tensor:
        r""":math:`\ln w_s = \ln p(x, z_s) - \ln q(z_s \mid x)`, shape ``(samples, *batch)``
        (``noise`` as in :meth:`terms`)."""
        log_lik, log_prior, log_q = self.terms(x, samples, noise=noise)
        return log_lik + log_prior - log_q

    def elbo(
        self,
        x: Tensor,
        *,
        samples: int = 1,
        beta: float | Tensor = 1.0,
        analytic: bool = True,
        noise: Tensor | None = None,
    ) -> Tensor:
        r"""The (warmed-up, see :func:`flowvi.objectives.elbo`) ELBO per datapoint, ``(*batch,)``.

        With ``analytic``, a diagonal posterior and the standard-normal prior, the KL is exact
        (:math:`\mathrm{KL} = \frac12 \sum_j (\mu_j^2 + \sigma_j^2 - 1 - \ln \sigma_j^2)`) and
        only :math:`E_q \ln p(x \mid z)` is sampled; with a flow posterior or a flow prior it
        is estimated by Monte Carlo, :math:`\ln q(z) - \ln p(z)` at the samples, since
        :math:`\mathrm{KL}(q \| p)` has no closed form. A flow posterior with ``split_kl``
        (and ``analytic``, the standard-normal prior) uses instead

        .. math:: \mathrm{KL}(q \| p) = \mathrm{KL}(q_0 \| p)
            + E_{q_0}\big[\ln p(z_0) - \ln p(z_K) - \ln|\det J_f(z_0)|\big],

        from :math:`\ln q(z_K) = \ln q_0(z_0) - \ln|\det J_f(z_0)|`: the base's KL in closed
        form and only the flow's share sampled, the same expectation (for a diagonal
        posterior the share is 0 and this is the exact KL above).
        """
        if analytic and (self.flowless or (self.split_kl and self.prior_flow is None)):
            q = self.q(x)
            q0 = q.base_dist
            z0 = q0.rsample((samples,)) if noise is None else q0.mean + noise * q0.stddev
            p = self.prior()
            # KL(q0 || N(0, I)) in closed form (torch.compile cannot trace torch's KL registry)
            mu, sigma = q0.mean, q0.stddev
            kl0 = 0.5 * (mu**2 + sigma**2 - 1).sum(-1) - sigma.log().sum(-1)
            if self.flowless:  # the flow's share is 0: nothing more to sample
                return self.decoder(z0).log_prob(x).mean(0) - beta * kl0
            z, ladj = q.flow.call_and_ladj(z0)
            flow_share = p.log_prob(z0) - p.log_prob(z) - ladj
            log_lik = self.decoder(z).log_prob(x)
            return (log_lik - beta * flow_share).mean(0) - beta * kl0
        return elbo(*self.terms(x, samples, noise=noise), beta=beta)

    def iwae(self, x: Tensor, samples: int, *, noise: Tensor | None = None) -> Tensor:
        r"""The importance-weighted bound, k = ``samples`` (Burda et al. 2016), ``(*batch,)``
        (``noise`` as in :meth:`terms`)."""
        return iwae(self.log_weights(x, samples, noise=noise))

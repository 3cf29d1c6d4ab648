r"""The VAE: prior, encoder, amortized flow posterior and decoder, and its log weights."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.distributions import Independent, Normal, kl_divergence

from flowvi.flows import NormalizingFlow
from flowvi.objectives import elbo, iwae


class VAE(nn.Module):
    r"""A deep latent-variable model :math:`p(z) p(x \mid z)`, :math:`p(z) = \mathcal N(0, I)`,
    with the amortized posterior :math:`q(z \mid x)` = ``posterior(encoder(x))``.

    Args:
        encoder: ``x: (*batch, D) -> h: (*batch, c)``, e.g. :class:`flowvi.vae.Encoder`.
        posterior: a :class:`flowvi.flows.NormalizingFlow` whose base and layers take ``h`` as
            context (see :func:`flowvi.vae.make_posterior`).
        decoder: ``z: (*batch, d) ->`` a distribution over ``x`` with event shape ``(D,)``.
    """

    def __init__(self, encoder: nn.Module, posterior: NormalizingFlow, decoder: nn.Module) -> None:
        super().__init__()
        self.encoder, self.posterior, self.decoder = encoder, posterior, decoder
        self.d = posterior.event_shape[-1]
        self.register_buffer("zero", torch.zeros(self.d))

    @property
    def flowless(self) -> bool:
        """True for a diagonal-Gaussian posterior (no layers): its KL is analytic."""
        return len(self.posterior.layers) == 0

    def prior(self) -> Independent:
        """:math:`\\mathcal N(0, I_d)`, event shape ``(d,)``."""
        return Independent(Normal(self.zero, torch.ones_like(self.zero)), 1)

    def q(self, x: Tensor):
        r""":math:`q(z \mid x)` for ``x: (*batch, D)``, with batch shape ``*batch``."""
        return self.posterior(self.encoder(x))

    def terms(self, x: Tensor, samples: int = 1) -> tuple[Tensor, Tensor, Tensor]:
        r"""``(log_lik, log_prior, log_q)``, each ``(samples, *batch)`` nats, at
        reparameterized :math:`z_s \sim q(z \mid x)` (one encoder pass for all samples)."""
        z, log_q = self.q(x).rsample_and_log_prob((samples,))
        return self.decoder(z).log_prob(x), self.prior().log_prob(z), log_q

    def log_weights(self, x: Tensor, samples: int = 1) -> Tensor:
        r""":math:`\ln w_s = \ln p(x, z_s) - \ln q(z_s \mid x)`, shape ``(samples, *batch)``."""
        log_lik, log_prior, log_q = self.terms(x, samples)
        return log_lik + log_prior - log_q

    def elbo(
        self, x: Tensor, *, samples: int = 1, beta: float = 1.0, analytic: bool = True
    ) -> Tensor:
        r"""The (warmed-up, see :func:`flowvi.objectives.elbo`) ELBO per datapoint, ``(*batch,)``.

        With ``analytic`` and a diagonal posterior, the KL to the prior is exact
        (:math:`\mathrm{KL} = \frac12 \sum_j (\mu_j^2 + \sigma_j^2 - 1 - \ln \sigma_j^2)`) and
        only :math:`E_q \ln p(x \mid z)` is sampled; with a flow it is estimated by Monte Carlo,
        since :math:`\mathrm{KL}(q_K \| p)` has no closed form.
        """
        if analytic and self.flowless:
            q0 = self.posterior.base(self.encoder(x))
            z = q0.rsample((samples,))
            log_lik = self.decoder(z).log_prob(x).mean(0)
            return log_lik - beta * kl_divergence(q0, self.prior())
        return elbo(*self.terms(x, samples), beta=beta)

    def iwae(self, x: Tensor, samples: int) -> Tensor:
        r"""The importance-weighted bound, k = ``samples`` (Burda et al. 2016), ``(*batch,)``."""
        return iwae(self.log_weights(x, samples))

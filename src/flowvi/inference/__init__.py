"""Classical variational inference (no flows needed): the curriculum's road to flows.

- Conjugate inference for the normal mean with known variance, and the Gaussian KL identities
  (:mod:`flowvi.inference.conjugate`): exact oracles for tests.
- CAVI for the Bayesian mixture of unit-variance Gaussians of Blei, Kucukelbir & McAuliffe (2017,
  Section 3) (:mod:`flowvi.inference.cavi`).
- SVI for the same model (Hoffman et al. 2013) (:mod:`flowvi.inference.svi`).
"""

__all__: list[str] = []

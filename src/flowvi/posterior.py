r"""What a Bayesian reads after fitting: the posterior per parameter, and whether to trust it.

:func:`summarize` draws :math:`z_i \sim q`, :math:`i = 1, \dots, S`, from a fitted flow, with
their exact :math:`\ln q(z_i)`, and weighs them by the importance log weights

.. math:: \ln w_i = \ln \tilde p(z_i) - \ln q(z_i)

(nats; :math:`\tilde p` the target's unnormalized density). From them:

- the diagnostics of the joint approximation (Yao, Vehtari, Simpson & Gelman 2018, "Yes, but did
  it work?: Evaluating variational inference"): the PSIS :math:`\hat k` of the weights
  (:func:`flowvi.metrics.psis_khat`), Kish's importance-sampling ESS, and the ELBO
  :math:`\frac1S \sum_i \ln w_i` with its Monte Carlo standard error;
- per scalar element of every site, in its constrained space (a scale positive): mean, sd and
  the 5/50/95 % quantiles of the draws, and, where :math:`\hat k < 0.7`, the same statistics
  under Pareto-smoothed importance weights (Vehtari, Simpson, Gelman, Yao & Gabry 2024, "Pareto
  smoothed importance sampling", JMLR 25), which correct them towards the exact posterior.

:class:`PosteriorSummary` prints them as a table and writes ``summary.csv``, ``summary.json``
and an arviz ``posterior.nc``.

References:
    Yao, Vehtari, Simpson & Gelman (2018), "Yes, but did it work?: Evaluating variational
    inference", ICML. Vehtari, Simpson, Gelman, Yao & Gabry (2024), "Pareto smoothed importance
    sampling", JMLR 25(72).
"""

from __future__ import annotations

import csv
import inspect
import io
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from flowvi.io import atomic_write, write_json
from flowvi.metrics import effective_sample_size, khat_verdict, psis_khat
from flowvi.targets import Target

QUANTILES = (0.05, 0.5, 0.95)
STATISTICS = ("mean", "sd", "5%", "50%", "95%")
PSIS_STATISTICS = tuple(f"psis_{s}" for s in STATISTICS)
COLUMNS = ("parameter", *STATISTICS, *PSIS_STATISTICS)
"""The columns of ``summary.csv``, in order."""
KHAT_THRESHOLD = 0.7
"""PSIS-reweighted statistics are reported only below this :math:`\\hat k` (Vehtari et al. 2024)."""

CSV, NETCDF, JSON = "summary.csv", "posterior.nc", "summary.json"


class Sampler(Protocol):
    """Anything that draws points with their exact log density, e.g. a
    :class:`flowvi.flows.NormalizingFlow`."""

    def rsample_and_log_prob(self, sample_shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
        """Draws ``(*sample_shape, d)`` and their ``ln q`` in nats, ``(*sample_shape,)``."""
        ...


@dataclass
class PosteriorSummary:
    """The posterior that a fitted ``q`` gives, per parameter, with its importance diagnostics.

    Only the ``S' = samples - dropped`` draws with a finite log weight are kept.

    Attributes:
        rows: one dict per scalar element of every site, in site order and row-major order
            within a site: ``name`` (``"theta_t[3]"``), ``site`` (``"theta_t"``), and the
            statistics of :data:`STATISTICS` and :data:`PSIS_STATISTICS` (floats; the PSIS ones
            are NaN when :math:`\\hat k \\ge 0.7`).
        khat: PSIS :math:`\\hat k` of the log weights.
        ess: Kish's effective sample size :math:`(\\sum w)^2 / \\sum w^2` of the raw weights.
        ess_fraction: ``ess / samples`` (dropped draws count as weight zero).
        elbo: :math:`\\frac{1}{S'} \\sum_i \\ln w_i` in nats, a lower bound on
            :math:`\\ln Z` up to Monte Carlo error. With dropped draws it is the ELBO of ``q``
            restricted to where the log weight is finite: an over-estimate (the ELBO of ``q``
            itself is :math:`-\\infty` where the target's density is zero).
        elbo_se: its Monte Carlo standard error in nats (``sd(ln w) / sqrt(S')``).
        dropped: the number of draws whose log weight was NaN or infinite.
        samples: the number of draws taken, ``S``.
        draws: the kept draws per site in the constrained space, ``{name: (S', *site.shape)}``,
            float64 on the CPU.
        log_weights: :math:`\\ln w_i` of the kept draws, ``(S',)`` float64, nats.
        log_q: :math:`\\ln q(z_i)` of the kept draws, ``(S',)`` float64, nats.
        note: why the PSIS columns are empty, or ``None`` when they are filled.
    """

    rows: list[dict[str, Any]] = field(repr=False)
    khat: float
    ess: float
    ess_fraction: float
    elbo: float
    elbo_se: float
    dropped: int
    samples: int
    draws: dict[str, Tensor] = field(repr=False)
    log_weights: Tensor = field(repr=False)
    log_q: Tensor = field(repr=False)
    note: str | None = None

    @property
    def reweighted(self) -> bool:
        """Whether the PSIS-reweighted columns are filled (:math:`\\hat k < 0.7`)."""
        return self.note is None

    def diagnostics(self) -> str:
        """One line: the :math:`\\hat k` verdict, the ESS, the ELBO and the dropped draws."""
        return (
            f"{khat_verdict(self.khat)}; ESS {self.ess:.0f} of {self.samples} draws "
            f"({100 * self.ess_fraction:.1f}%); ELBO {self.elbo:.4f} ± {self.elbo_se:.4f} nats; "
            f"{self.dropped} draws dropped (non-finite log weight)"
        )

    def table(self) -> str:
        """A fixed-width table for the terminal: one line per element (the PSIS columns only
        when filled), then the diagnostics line and, when the PSIS columns are left out, why."""
        columns = STATISTICS + (PSIS_STATISTICS if self.reweighted else ())
        width = max([len("parameter")] + [len(row["name"]) for row in self.rows])
        cell = max(10, *(len(c) for c in columns))
        lines = [f"{'parameter':<{width}}" + "".join(f" {c:>{cell}}" for c in columns)]
        for row in self.rows:
            values = "".join(f" {_format(row[c]):>{cell}}" for c in columns)
            lines.append(f"{row['name']:<{width}}{values}")
        lines.append(self.diagnostics())
        if self.note is not None:
            lines.append(self.note)
        return "\n".join(lines)

    def to_csv(self, path: str | Path) -> None:
        """Write the rows to ``path`` (atomically) with the columns :data:`COLUMNS`; the PSIS
        cells are empty when not reported."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(COLUMNS)
        for row in self.rows:
            writer.writerow([row["name"], *(_csv_cell(row[c]) for c in COLUMNS[1:])])
        text = buffer.getvalue()
        atomic_write(path, lambda tmp: Path(tmp).write_text(text))

    def to_dict(self) -> dict[str, Any]:
        """The diagnostics and rows as JSON-able plain values (NaN and infinities as ``None``)."""
        return {
            "samples": self.samples,
            "dropped": self.dropped,
            "khat": _json_float(self.khat),
            "khat_verdict": khat_verdict(self.khat),
            "ess": _json_float(self.ess),
            "ess_fraction": _json_float(self.ess_fraction),
            "elbo": _json_float(self.elbo),
            "elbo_se": _json_float(self.elbo_se),
            "reweighted": self.reweighted,
            "note": self.note,
            "rows": [
                {k: v if isinstance(v, str) else _json_float(v) for k, v in row.items()}
                for row in self.rows
            ],
        }

    def to_inference_data(self) -> Any:
        """The draws as an arviz ``InferenceData``: a ``posterior`` group with one variable per
        site, dims ``(chain, draw, {site}_dim_0, …)`` with one chain of ``S'`` draws, and a
        ``sample_stats`` group with ``log_weight`` and ``log_q``, each ``(chain, draw)``
        (an xarray ``DataTree`` of the same groups under arviz >= 1.0).

        Raises:
            ImportError: if arviz is not installed.
        """
        arviz = _arviz()
        posterior = {name: v.numpy()[None] for name, v in self.draws.items()}
        dims = {
            name: [f"{name}_dim_{i}" for i in range(v.dim() - 1)] for name, v in self.draws.items()
        }
        stats = {"log_weight": self.log_weights.numpy()[None], "log_q": self.log_q.numpy()[None]}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # arviz warns that one chain cannot show mixing
            if "posterior" in inspect.signature(arviz.from_dict).parameters:
                return arviz.from_dict(posterior=posterior, sample_stats=stats, dims=dims)
            # arviz >= 1.0 takes the groups as one dict and returns a DataTree
            return arviz.from_dict({"posterior": posterior, "sample_stats": stats}, dims=dims)

    def write(self, directory: str | Path) -> Path:
        """Write ``summary.csv`` (:meth:`to_csv`), ``posterior.nc`` (:meth:`to_inference_data`,
        netCDF through h5netcdf) and ``summary.json`` (:meth:`to_dict`) into ``directory``,
        creating it; each file is written to a temporary file and renamed into place.

        Returns:
            ``directory`` as a ``Path``.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.to_csv(directory / CSV)
        data = self.to_inference_data()
        atomic_write(directory / NETCDF, lambda tmp: data.to_netcdf(tmp, engine="h5netcdf"))
        write_json(directory / JSON, self.to_dict())
        return directory


@torch.no_grad()
def summarize(
    q: Sampler,
    target: Target,
    *,
    samples: int = 4000,
    chunk: int = 10_000,
    seed: int | None = None,
) -> PosteriorSummary:
    r"""Summarize the posterior that ``q`` approximates, per parameter of ``target``.

    1. Draw ``samples`` points :math:`z_i \sim q` with :math:`\ln q(z_i)` in one pass
       (``q.rsample_and_log_prob``), ``chunk`` at a time, without gradients.
    2. :math:`\ln w_i = \ln \tilde p(z_i) - \ln q(z_i)` (float64, with the exact
       :math:`\tilde p` of :meth:`~flowvi.targets.Target.exact`: a subsampled model's
       full-data log joint); draws whose log weight is
       NaN or :math:`\pm\infty` are dropped and counted (a target that is :math:`-\infty`
       outside its support gives them zero weight anyway).
    3. Diagnostics of the joint: PSIS :math:`\hat k` (:func:`flowvi.metrics.psis_khat`), Kish's
       ESS, the ELBO :math:`\overline{\ln w}` and its standard error (nats).
    4. Per scalar element of every site, on the constrained draws (``target.constrain``): mean,
       sd (``ddof=1``) and the 5/50/95 % quantiles (linear interpolation); and if
       :math:`\hat k < 0.7`, the same under the Pareto-smoothed normalized weights
       :math:`\bar w_i` (arviz's ``psislw``): :math:`\sum_i \bar w_i x_i`,
       :math:`\sqrt{\sum_i \bar w_i (x_i - \bar x)^2}` and the inverse of the weighted empirical
       CDF. Above 0.7 the weights' variance is effectively infinite and no reweighting is
       reliable (Vehtari et al. 2024, Sec. 3); ``q`` then misses mass of the posterior (Yao et
       al. 2018), and the PSIS columns are NaN with :attr:`PosteriorSummary.note` saying why.

    Args:
        q: the fitted approximation, e.g. a :class:`flowvi.flows.NormalizingFlow`; its draws are
            ``(n, d)`` with ``d = target.dim``.
        target: the model, with its :attr:`~flowvi.targets.Target.sites`.
        samples: the number of draws ``S``.
        chunk: the most draws held at once (bounds memory; the result does not depend on it
            beyond the random stream).
        seed: seeds torch's generator for the draws (its state is restored afterwards);
            ``None`` uses the current state.

    Returns:
        a :class:`PosteriorSummary`.

    Raises:
        ValueError: if ``samples < 1`` or ``chunk < 1``; if ``q``'s draws are not ``(n, d)``
            with ``d = target.dim``; if every draw's log weight is non-finite.
        ImportError: if arviz is not installed (PSIS).

    Example:
        >>> from flowvi.flows import build
        >>> from flowvi.targets import get
        >>> summary = summarize(build("affine", 10), get("eight-schools"), samples=500, seed=0)
        >>> [row["name"] for row in summary.rows][:4]
        ['mu', 'tau', 'theta_t[0]', 'theta_t[1]']
        >>> bool((summary.draws["tau"] > 0).all()), summary.draws["theta_t"].shape
        (True, torch.Size([500, 8]))

    References:
        Yao, Vehtari, Simpson & Gelman (2018), "Yes, but did it work?: Evaluating variational
        inference", ICML. Vehtari, Simpson, Gelman, Yao & Gabry (2024), "Pareto smoothed
        importance sampling", JMLR 25(72).
    """
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1, got {chunk}")
    event_shape = getattr(q, "event_shape", None)
    if event_shape is not None and tuple(event_shape) != (target.dim,):
        raise ValueError(
            f"q has event shape {tuple(event_shape)}, but target {target.name} is "
            f"{target.dim}-dimensional"
        )
    target = target.exact()  # importance weights need the exact log density, not an estimate
    parts: dict[str, list[Tensor]] = {site.name: [] for site in target.sites}
    log_ws: list[Tensor] = []
    log_qs: list[Tensor] = []
    dropped = 0
    with torch.random.fork_rng(devices=_cuda_devices(q), enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        for start in range(0, samples, chunk):
            size = min(chunk, samples - start)
            z, log_q = q.rsample_and_log_prob((size,))
            if z.shape != (size, target.dim):
                raise ValueError(
                    f"q drew {size} points of shape {tuple(z.shape)}; target {target.name} "
                    f"needs ({size}, {target.dim})"
                )
            log_w = target.log_prob(z).double() - log_q.double()
            keep = torch.isfinite(log_w)
            dropped += size - int(keep.sum())
            for name, value in target.constrain(z[keep].double()).items():
                parts[name].append(value.cpu())
            log_ws.append(log_w[keep].cpu())
            log_qs.append(log_q[keep].double().cpu())
    log_w = torch.cat(log_ws)
    kept = len(log_w)
    if kept == 0:
        raise ValueError(
            f"all {samples} draws of q have a non-finite log weight ln p(z) - ln q(z): "
            f"q puts no mass where target {target.name} has a finite density"
        )
    draws = {name: torch.cat(values) for name, values in parts.items()}

    khat = psis_khat(log_w)
    ess = float(effective_sample_size(log_w))
    elbo = float(log_w.mean())
    elbo_se = float(log_w.std()) / math.sqrt(kept) if kept > 1 else math.nan

    weights, note = None, None
    if khat < KHAT_THRESHOLD:
        weights = _psis_weights(log_w)
    else:
        note = (
            f"PSIS columns empty: k-hat {khat:.2f} >= {KHAT_THRESHOLD}, so the importance "
            "weights have effectively infinite variance and no reweighting of q's draws is "
            "reliable; q misses mass of the posterior (Yao et al. 2018; Vehtari et al. 2024)"
        )

    rows: list[dict[str, Any]] = []
    for site in target.sites:
        x = draws[site.name].reshape(kept, -1).numpy()  # (S', elements), row-major
        raw = _statistics(x)
        psis = (
            _weighted_statistics(x, weights) if weights is not None else np.full_like(raw, np.nan)
        )
        for j, name in enumerate(site.element_names()):
            row: dict[str, Any] = {"name": name, "site": site.name}
            row.update(zip(STATISTICS, map(float, raw[:, j]), strict=True))
            row.update(zip(PSIS_STATISTICS, map(float, psis[:, j]), strict=True))
            rows.append(row)
    return PosteriorSummary(
        rows=rows,
        khat=float(khat),
        ess=ess,
        ess_fraction=ess / samples,
        elbo=elbo,
        elbo_se=elbo_se,
        dropped=dropped,
        samples=samples,
        draws=draws,
        log_weights=log_w,
        log_q=torch.cat(log_qs),
        note=note,
    )


def _statistics(x: np.ndarray) -> np.ndarray:
    """Mean, sd, 5/50/95 % quantiles of each column of ``x: (n, m)``, as ``(5, m)``."""
    ddof = 1 if len(x) > 1 else 0
    quantiles = np.quantile(x, QUANTILES, axis=0)
    return np.vstack([x.mean(0), x.std(0, ddof=ddof), quantiles])


def _weighted_statistics(x: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The statistics of :func:`_statistics` under normalized weights ``(n,)``, as ``(5, m)``.

    Quantiles invert the weighted empirical CDF: the ``p``-quantile is the smallest ``x_(k)``
    (sorted) whose cumulative weight reaches ``p`` (numpy's ``inverted_cdf`` with weights).
    """
    mean = weights @ x
    sd = np.sqrt(weights @ (x - mean) ** 2)
    order = np.argsort(x, axis=0)
    ordered = np.take_along_axis(x, order, 0)
    cdf = np.cumsum(weights[order], axis=0)  # (n, m), each column rising to 1
    cdf /= cdf[-1]
    columns = np.arange(x.shape[1])
    quantiles = [ordered[np.minimum((cdf < p).sum(0), len(x) - 1), columns] for p in QUANTILES]
    return np.vstack([mean, sd, *quantiles])


def _psis_weights(log_w: Tensor) -> np.ndarray:
    """Pareto-smoothed importance weights of ``log_w: (n,)``, normalized to sum to 1 (arviz's
    ``psislw``, or arviz_stats' for arviz >= 1)."""
    arviz = _arviz()
    psislw = getattr(arviz, "psislw", None)
    if psislw is None:  # arviz >= 1.0 moved it to arviz_stats
        from arviz_stats import psislw
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # arviz warns when k-hat is large
        smoothed, _ = psislw(log_w.numpy().copy())
    smoothed = np.asarray(smoothed, dtype=np.float64)
    return np.exp(smoothed - np.logaddexp.reduce(smoothed))


def _arviz() -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # arviz announces its refactor on import
            import arviz
    except ImportError as error:
        raise ImportError("posterior summaries use arviz: pip install arviz") from error
    return arviz


def _cuda_devices(q: Any) -> list[torch.device]:
    """The CUDA devices of ``q``'s parameters, whose generators a seeded draw forks."""
    parameters = q.parameters() if hasattr(q, "parameters") else ()
    return sorted({p.device for p in parameters if p.device.type == "cuda"}, key=str)


def _format(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.4g}"


def _csv_cell(value: float) -> str:
    return "" if math.isnan(value) else repr(value)


def _json_float(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


__all__ = ["COLUMNS", "PSIS_STATISTICS", "STATISTICS", "PosteriorSummary", "Sampler", "summarize"]

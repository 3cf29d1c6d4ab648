"""Benchmark: maximum-likelihood density estimation, flowvi beside zuko, nflows and normflows.

Every library fits RealNVP, MAF and NSF (rational-quadratic spline coupling) of matched size to
the same standardized data, with the same budget, and every fitted model is scored by the same
code. Data sets:

- ``moons``: scikit-learn's two moons (noise 0.05), 20,000 training points (seed 0) and 5,000
  independent test points (seed 1); d = 2.
- ``breast_cancer``: scikit-learn's breast-cancer features (569 × 30, shipped with
  scikit-learn), split 64/16/20 (364 training, 91 validation, 114 test rows) by a fixed
  permutation (seed 0); d = 30. With so few rows every library over-fits within a few hundred
  steps, so here every library early-stops the same way: validation NLL every 50 steps, stop
  after 10 evaluations without improvement, keep the best parameters (flowvi by
  ``fit_density``'s early stopping, the peers by the same rule in the plain loop). Its test NLL
  is noisy (114 points).

Matched models (``--layers`` K, ``--hidden`` sizes; defaults K = 5, two hidden layers of 64):

- conditioners: ReLU MLPs of the same hidden sizes (couplings: from the |A| conditioning
  coordinates to the parameters of the |B| others; MAF: a MADE of the same hidden sizes, built
  by each library), each library's own MLP/MADE class and initialization;
- RealNVP: affine couplings with each library's own scale map (flowvi: ``softplus-affine``,
  ``softplus(r) + 1e-3``, also for its MAF; see ``FLOWVI_TRANSFORMER``); NSF:
  rational-quadratic spline couplings, 8 bins on [-3, 3] with linear (identity) tails, no
  transform of the conditioning half; MAF: affine MADE layers, one pass for the density, d
  passes to sample (normflows: the other way round, see below);
- between layers, each library's usual alternation: flowvi swaps the two halves of its
  coupling split and alternates MAF's order natural/reverse; zuko and nflows alternate
  checkered coupling masks, zuko alternates MAF orders and nflows reverses the features
  between MAF layers; normflows swaps halves (``Permute(d, "swap")``) after every layer;
- a fixed standard normal base.

normflows' ``MaskedAffineAutoregressive`` is used as its authors orient it: one pass to sample,
d passes for the density (so d passes per training step). Turning it round with
``normflows.flows.Reverse`` would make the density one pass, but its scale, sigmoid(·) + 0.001
≤ 1.001, may then only contract data towards the base: so turned, it reached 1.27-1.30 nats
on moons (5,000 steps, seeds 0-2) where the other MAFs reached 0.36-0.44. Its spline
coupling is normflows' ``PiecewiseRationalQuadraticCoupling`` with the matched MLP (its
``CoupledRationalQuadraticSpline`` wrapper fixes a residual network).

Training: Adam (lr 1e-3), minibatches drawn uniformly with replacement, loss = -mean log q,
the same maximum number of steps for all (moons: no validation split, the final model is
scored). flowvi is trained by ``flowvi.density.fit_density`` (its one training loop: fused Adam,
its default cosine learning-rate decay, and a NaN guard with one host sync per step;
``flowvi-compile``: the same with ``compile=True``); the peers, which ship no training loop,
by the plain loop ``batch -> loss = -log_prob(batch).mean() -> backward -> step`` with the
same fused Adam (``torch.optim.Adam(fused=True)``). The data are standardized with the
training set's mean and standard deviation; NLL is reported in data units,
-mean ln p(x) = -mean ln q(y) + Σ ln σ.

Timings, one thread each (``torch.set_num_threads(1)``), after an untimed warm-up (20 steps of
each library × data set × flow before its first timed run): ms/step = training loop wall time
÷ steps; samples/s = ``--samples`` draws under ``torch.no_grad()``; log_prob/s = log density of
``--eval-points`` test points (the test set, repeated to that many rows for breast_cancer),
each the median of ``--repeats`` timed calls after one untimed call. On a shared machine the
fits' ms/step vary with the load; ``--interleaved`` times the same loops in short blocks, the
libraries taking turns, and reports each library's fastest block (see :func:`interleaved`).

    pip install -e ".[bench]"
    python -m benchmarks.density --markdown          # 2 data sets × 3 flows × 4 libraries × 3 seeds
    python -m benchmarks.density --smoke --markdown  # every combination for 20 steps, a minute
    python -m benchmarks.density --interleaved --markdown  # per-step times, robust to load

Results go to a JSON Lines file, one record per library × data set × flow × seed (and settings);
records already there are skipped, so an interrupted run resumes where it stopped. A fit that
fails (e.g. flowvi's NaN guard) is recorded with its error and not retried; delete it to retry.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

import flowvi
import flowvi.data
from benchmarks.common import (
    RESULTS,
    finite,
    fmt,
    load_records,
    median,
    one_thread,
    provenance,
    save_records,
)
from flowvi.density import fit_density
from flowvi.train import NonFiniteLossError

LIBRARIES = ("flowvi", "flowvi-compile", "zuko", "nflows", "normflows")
PEERS = ("zuko", "nflows", "normflows")
FLOWS = ("realnvp", "maf", "nsf")
# flowvi's spline: 8 bins on [-3, 3] (flowvi.transforms.transformers.SplineTransformer)
BINS, BOUND = 8, 3.0


@dataclass(frozen=True)
class Budget:
    """A data set's default training budget."""

    steps: int
    batch_size: int
    layers: int


DATASETS = {
    "moons": Budget(steps=5000, batch_size=256, layers=5),
    "breast_cancer": Budget(steps=2000, batch_size=128, layers=5),
}
# the settings a record depends on besides (library, dataset, flow, seed)
SETTINGS = ("steps", "batch_size", "layers", "hidden", "lr", "samples", "eval_points")
WARMUP_STEPS = 20
SMOKE_STEPS = 20


# ----------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Data:
    """Standardized float32 training and test data, and Σ ln σ of the standardization;
    ``valid``: a validation split for early stopping (``None``: train for the whole budget)."""

    train: Tensor
    test: Tensor
    log_std_sum: float
    valid: Tensor | None = None


def load_data(name: str) -> Data:
    """The data set ``name``, standardized with its training split's statistics."""
    if name == "moons":
        train = flowvi.data.toy("moons", 20_000, seed=0, noise=0.05, dtype=torch.float64)
        test = flowvi.data.toy("moons", 5_000, seed=1, noise=0.05, dtype=torch.float64)
    else:
        from sklearn.datasets import load_breast_cancer

        x = torch.from_numpy(load_breast_cancer().data).to(torch.float64)
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
        cut, valid_cut = int(0.8 * len(x)), int(0.64 * len(x))
        train, test = x[order[:valid_cut]], x[order[cut:]]
        valid = x[order[valid_cut:cut]]
    stats = flowvi.transforms.StandardizationTransform.fit(train)
    return Data(
        train=stats(train).float(),
        test=stats(test).float(),
        log_std_sum=float(stats.log_std.sum()),
        valid=None if name == "moons" else stats(valid).float(),
    )


# ----------------------------------------------------------------------------- models


@dataclass
class Model:
    """A fitted or fresh model of any library: its module, log density and sampler."""

    module: nn.Module
    log_prob: Callable[[Tensor], Tensor]  # (n, d) -> (n,), nats
    sample: Callable[[int], Tensor]  # n -> (n, d)


# flowvi's scale map for the affine flows: softplus(r) + 1e-3 (nflows' MAF map), which fits the
# small breast_cancer set far better than the soft-clamped exp (see RESULTS.md)
FLOWVI_TRANSFORMER = {"realnvp": "softplus-affine", "maf": "softplus-affine"}


def build_flowvi(flow: str, d: int, s: Budget, hidden: tuple[int, ...]) -> Model:
    model = flowvi.flows.build(
        flow, d, length=s.layers, hidden=hidden, transformer=FLOWVI_TRANSFORMER.get(flow)
    )
    return Model(model, model.log_prob, lambda n: model.sample((n,)))


def build_zuko(flow: str, d: int, s: Budget, hidden: tuple[int, ...]) -> Model:
    import zuko

    if flow == "realnvp":
        model = zuko.flows.RealNVP(d, transforms=s.layers, hidden_features=hidden)
    elif flow == "maf":
        model = zuko.flows.MAF(d, transforms=s.layers, hidden_features=hidden)
    else:  # zuko.flows.NSF is autoregressive with bound 5: build its spline coupling by hand
        spline = partial(zuko.transforms.MonotonicRQSTransform, bound=BOUND)
        layers = [
            zuko.flows.GeneralCouplingTransform(
                d,
                mask=torch.arange(d) % 2 == k % 2,  # zuko.flows.NICE's alternation
                univariate=spline,
                shapes=[(BINS,), (BINS,), (BINS - 1,)],
                hidden_features=hidden,
            )
            for k in range(s.layers)
        ]
        base = zuko.lazy.UnconditionalDistribution(
            zuko.distributions.DiagNormal, torch.zeros(d), torch.ones(d), buffer=True
        )
        model = zuko.lazy.Flow(layers, base)
    return Model(model, lambda x: model().log_prob(x), lambda n: model().sample((n,)))


class _DropContext(nn.Module):
    """A peer's MLP called as ``net(x, context)`` by nflows-style couplings (context unused).

    ``hidden_features`` is what those spline couplings read to scale down the bin logits at
    initialization, as they do with their own residual networks.
    """

    def __init__(self, net: nn.Module, hidden_features: int) -> None:
        super().__init__()
        self.net, self.hidden_features = net, hidden_features

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        return self.net(x)


def build_nflows(flow: str, d: int, s: Budget, hidden: tuple[int, ...]) -> Model:
    from nflows.distributions import StandardNormal
    from nflows.flows import Flow
    from nflows.nn.nets import MLP
    from nflows.transforms import (
        AffineCouplingTransform,
        CompositeTransform,
        MaskedAffineAutoregressiveTransform,
        PiecewiseRationalQuadraticCouplingTransform,
        ReversePermutation,
    )
    from nflows.utils import create_alternating_binary_mask

    def net(n_in: int, n_out: int) -> nn.Module:
        return _DropContext(MLP((n_in,), (n_out,), list(hidden)), hidden[-1])

    layers: list[nn.Module] = []
    for k in range(s.layers):
        mask = create_alternating_binary_mask(d, even=k % 2 == 0)
        if flow == "realnvp":
            layers.append(AffineCouplingTransform(mask, net))
        elif flow == "nsf":
            layers.append(
                PiecewiseRationalQuadraticCouplingTransform(
                    mask, net, num_bins=BINS, tails="linear", tail_bound=BOUND
                )
            )
        else:  # a MADE with len(hidden) hidden layers: an input layer and len(hidden) - 1 blocks
            layers.append(
                MaskedAffineAutoregressiveTransform(
                    d, hidden[0], num_blocks=len(hidden) - 1, use_residual_blocks=False
                )
            )
            if k + 1 < s.layers:
                layers.append(ReversePermutation(d))
    model = Flow(CompositeTransform(layers), StandardNormal([d]))
    return Model(model, model.log_prob, model.sample)


def build_normflows(flow: str, d: int, s: Budget, hidden: tuple[int, ...]) -> Model:
    import normflows as nf
    from normflows.flows.neural_spline.coupling import PiecewiseRationalQuadraticCoupling
    from normflows.utils.masks import create_alternating_binary_mask

    class SplineCoupling(nf.flows.Flow):
        """normflows' spline coupling in its base → data orientation (as its wrapper does)."""

        def __init__(self, *, even: bool) -> None:
            super().__init__()
            self.prqct = PiecewiseRationalQuadraticCoupling(
                mask=create_alternating_binary_mask(d, even=even),
                transform_net_create_fn=lambda n_in, n_out: _DropContext(
                    nf.nets.MLP([n_in, *hidden, n_out]), hidden[-1]
                ),
                num_bins=BINS,
                tails="linear",
                tail_bound=BOUND,
            )

        def forward(self, z):
            z, log_det = self.prqct.inverse(z)
            return z, log_det.view(-1)

        def inverse(self, z):
            z, log_det = self.prqct(z)
            return z, log_det.view(-1)

    layers: list[nn.Module] = []
    for k in range(s.layers):
        if flow == "realnvp":  # normflows' README: zero-initialized MLP, exp scale, halves
            n_a = (d + 1) // 2  # its split: torch.chunk(2), the larger half first
            mlp = nf.nets.MLP([n_a, *hidden, 2 * (d - n_a)], init_zeros=True)
            layers.append(nf.flows.AffineCouplingBlock(mlp))
        elif flow == "nsf":
            layers.append(SplineCoupling(even=k % 2 == 0))
        else:
            layers.append(  # d passes for the density (see the module docstring)
                nf.flows.MaskedAffineAutoregressive(
                    d, hidden[0], num_blocks=len(hidden) - 1, use_residual_blocks=False
                )
            )
        if flow != "nsf":
            layers.append(nf.flows.Permute(d, mode="swap"))
    model = nf.NormalizingFlow(nf.distributions.DiagGaussian(d, trainable=False), layers)
    return Model(model, model.log_prob, lambda n: model.sample(n)[0])


BUILDERS = {
    "flowvi": build_flowvi,
    "flowvi-compile": build_flowvi,
    "zuko": build_zuko,
    "nflows": build_nflows,
    "normflows": build_normflows,
}


# ----------------------------------------------------------------------------- training


VALID_EVERY, PATIENCE = 50, 10  # early stopping where a data set has a validation split


def train_flowvi(
    model: Model, x: Tensor, steps: int, batch_size: int, lr: float, valid=None, *, compile=False
) -> tuple[float, int]:
    """``flowvi.density.fit_density`` (with early stopping on ``valid``); returns the loop's
    wall time in seconds and the steps taken."""
    start = time.perf_counter()
    trace, _ = fit_density(
        model.module,
        x,
        valid,
        iters=steps,
        batch_size=batch_size,
        lr=lr,
        valid_every=VALID_EVERY,
        patience=PATIENCE,
        progress=False,
        compile=compile,
    )
    return time.perf_counter() - start, int(torch.isfinite(trace).sum())


def train_flowvi_compiled(
    model: Model, x: Tensor, steps: int, batch_size: int, lr: float, valid=None
):
    """``fit_density(compile=True)``: the same loop with the log density ``torch.compile``d
    (the first call, a warm-up, pays the compile time)."""
    return train_flowvi(model, x, steps, batch_size, lr, valid, compile=True)


def train_plain(
    model: Model, x: Tensor, steps: int, batch_size: int, lr: float, valid=None
) -> tuple[float, int]:
    """The plain maximum-likelihood loop with fused Adam, and with ``valid`` the same early
    stopping as flowvi's (validation NLL every ``VALID_EVERY`` steps, stop after ``PATIENCE``
    evaluations without improvement, keep the best parameters); returns its wall time in
    seconds and the steps taken."""
    params = [p for p in model.module.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr, fused=True)
    n = len(x)
    best, best_state, bad, t = math.inf, None, 0, 0
    start = time.perf_counter()
    while t < steps:
        batch = x[torch.randint(n, (batch_size,))]
        loss = -model.log_prob(batch).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        t += 1
        if valid is not None and t % VALID_EVERY == 0:
            with torch.no_grad():
                value = float(-model.log_prob(valid).mean())
            if value < best:
                best, bad = value, 0
                best_state = {k: v.detach().clone() for k, v in model.module.state_dict().items()}
            else:
                bad += 1
                if bad >= PATIENCE:
                    break
    seconds = time.perf_counter() - start
    if best_state is not None:
        model.module.load_state_dict(best_state)
    return seconds, t


def trainer(library: str):
    return {"flowvi": train_flowvi, "flowvi-compile": train_flowvi_compiled}.get(
        library, train_plain
    )


def per_second(fn: Callable[[], object], count: int, repeats: int) -> float:
    """``count`` ÷ the median wall time of ``repeats`` calls of ``fn`` (after one untimed)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return count / statistics.median(times)


@torch.no_grad()
def test_nll(model: Model, x: Tensor, log_std_sum: float) -> float:
    """Mean negative log-likelihood in data units (nats per example)."""
    total = sum(-model.log_prob(chunk).double().sum() for chunk in x.split(10_000))
    return float(total) / len(x) + log_std_sum


def run(library: str, dataset: str, flow: str, seed: int, s: argparse.Namespace) -> dict:
    """One record: build, train, score, time sampling and log_prob."""
    start = time.perf_counter()
    settings = resolve(dataset, s)
    record = {"library": library, "dataset": dataset, "flow": flow, "seed": seed, **settings}
    if library.startswith("flowvi"):
        record["transformer"] = FLOWVI_TRANSFORMER.get(flow)  # None: the family's own
    data = DATA[dataset]
    d = data.train.shape[1]
    budget = Budget(settings["steps"], settings["batch_size"], settings["layers"])
    torch.manual_seed(seed)
    model = BUILDERS[library](flow, d, budget, tuple(settings["hidden"]))
    n_params = sum(p.numel() for p in model.module.parameters() if p.requires_grad)
    load_before = os.getloadavg()[0]
    try:
        train_s, steps = trainer(library)(
            model, data.train, budget.steps, budget.batch_size, s.lr, data.valid
        )
    except NonFiniteLossError as error:
        return record | {"error": str(error), "n_params": n_params}
    model.module.eval()
    out = {
        "test_nll": test_nll(model, data.test, data.log_std_sum),
        "train_nll": test_nll(model, data.train, data.log_std_sum),
        "ms_per_step": 1000 * train_s / steps,
        "steps_taken": steps,
        "train_s": train_s,
        "n_params": n_params,
    }
    points = data.test.repeat(math.ceil(s.eval_points / len(data.test)), 1)[: s.eval_points]
    with torch.no_grad():
        out["log_prob_per_s"] = per_second(lambda: model.log_prob(points), len(points), s.repeats)
        try:
            out["samples_per_s"] = per_second(lambda: model.sample(s.samples), s.samples, s.repeats)
        except (AssertionError, RuntimeError, ValueError) as error:  # e.g. nflows' spline asserts
            out["sample_error"] = f"{type(error).__name__}: {error}"
    out["load_avg"] = [load_before, os.getloadavg()[0]]
    out["total_s"] = time.perf_counter() - start
    return finite(record | out | {"threads": torch.get_num_threads()} | made_by(library))


def warm_up(library: str, dataset: str, flow: str, s: argparse.Namespace) -> None:
    """A few steps untimed, so that one-time costs (lazy imports, allocator, first calls of each
    kernel) stay out of the first timed run."""
    settings = resolve(dataset, s)
    data = DATA[dataset]
    budget = Budget(WARMUP_STEPS, settings["batch_size"], settings["layers"])
    torch.manual_seed(0)
    model = BUILDERS[library](flow, data.train.shape[1], budget, tuple(settings["hidden"]))
    try:
        trainer(library)(model, data.train, WARMUP_STEPS, budget.batch_size, s.lr)
    except NonFiniteLossError:
        pass


def interleaved(dataset: str, flow: str, s: argparse.Namespace) -> list[dict]:
    """Per-step time with the libraries interleaved, one record per library.

    One model per library (seed 0) is warmed up, then ``s.rounds`` rounds each train every
    library for ``s.block`` steps in turn (the models keep training; each block starts a fresh
    optimizer, as a fit does). A load spike on a shared machine then hits every library
    alike, and the fastest block of each (its minimum ms/step) is its speed on a quiet machine.
    """
    settings = resolve(dataset, s)
    data = DATA[dataset]
    budget = Budget(s.block, settings["batch_size"], settings["layers"])
    models, times, errors = {}, {lib: [] for lib in s.libraries}, {}
    for lib in s.libraries:
        torch.manual_seed(0)
        models[lib] = BUILDERS[lib](flow, data.train.shape[1], budget, tuple(settings["hidden"]))
    load_before = os.getloadavg()[0]
    for round_ in range(s.rounds + 1):  # round 0 warms up, untimed
        for lib in s.libraries:
            if lib in errors:
                continue
            steps = WARMUP_STEPS if round_ == 0 else s.block
            try:
                seconds, _ = trainer(lib)(models[lib], data.train, steps, budget.batch_size, s.lr)
            except NonFiniteLossError as error:
                errors[lib] = str(error)
                continue
            if round_ > 0:
                times[lib].append(1000 * seconds / steps)
    load = [load_before, os.getloadavg()[0]]
    out = []
    for lib, blocks in times.items():
        record = {"library": lib, "dataset": dataset, "flow": flow, **step_settings(dataset, s)}
        if blocks:
            record |= {
                "ms_per_step_min": min(blocks),
                "ms_per_step_median": statistics.median(blocks),
                "ms_per_step_blocks": blocks,
            }
        if lib in errors:
            record["error"] = errors[lib]
        out.append(finite(record | {"load_avg": load} | made_by(lib)))
    return out


def made_by(library: str) -> dict:
    """The commit, versions (flowvi's, and the peer's for a peer library) and machine."""
    return provenance() if library.startswith("flowvi") else provenance(library)


DATA: dict[str, Data] = {}


# ----------------------------------------------------------------------------- records


def resolve(dataset: str, s: argparse.Namespace) -> dict:
    """The settings of a run on ``dataset``: the command line's, else the data set's budget."""
    budget = DATASETS[dataset]
    return {
        "steps": s.steps or budget.steps,
        "batch_size": s.batch_size or budget.batch_size,
        "layers": s.layers or budget.layers,
        "hidden": list(s.hidden),
        "lr": s.lr,
        "samples": s.samples,
        "eval_points": s.eval_points,
    }


def key(record: dict) -> tuple:
    settings = tuple(tuple(v) if isinstance(v := record[name], list) else v for name in SETTINGS)
    return (record["library"], record["dataset"], record["flow"], record["seed"], *settings)


STEP_SETTINGS = ("batch_size", "layers", "hidden", "lr", "block", "rounds")


def step_settings(dataset: str, s: argparse.Namespace) -> dict:
    settings = resolve(dataset, s) | {"block": s.block, "rounds": s.rounds}
    return {name: settings[name] for name in STEP_SETTINGS}


def step_key(record: dict) -> tuple:
    settings = tuple(
        tuple(v) if isinstance(v := record[name], list) else v for name in STEP_SETTINGS
    )
    return (record["library"], record["dataset"], record["flow"], *settings)


# ----------------------------------------------------------------------------- tables


def _nll(value: float, digits: int = 3) -> str:
    """A log-likelihood in nats: fixed point, or 3 significant digits beyond 10⁴ in magnitude
    (over-fitted models give such test NLLs)."""
    return fmt(value, ".2e" if abs(value) >= 1e4 else f".{digits}f")


def _spread(group: list[dict], field: str) -> str:
    values = [r[field] for r in group if r.get(field) is not None]
    if len(values) < 2:
        return ""
    return f" ({_nll(min(values), 2)} – {_nll(max(values), 2)})"


def table(records: list[dict], dataset: str) -> str:
    """Markdown tables for one data set: every library × flow, then the goals per flow."""
    mine = [r for r in records if r["dataset"] == dataset]
    if not mine:
        return ""
    r0 = mine[0]
    rows = [
        f"**{dataset}** — {r0['steps']} steps of {r0['batch_size']}, {r0['layers']} layers, "
        f"hidden {tuple(r0['hidden'])}, Adam lr {r0['lr']}",
        "",
        "| flow | library | test NLL (min–max) | train NLL | ms/step | ÷ flowvi | samples/s "
        "| log_prob/s | params | seeds |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    goals = [
        "| flow | flowvi NLL | best peer NLL | NLL ≤ best peer | flowvi ms/step "
        "| fastest peer ms/step | speed-up | ≥ 1.5× |",
        "|---|---:|---:|:---:|---:|---:|---:|:---:|",
    ]
    notes = []
    for flow in [f for f in FLOWS if any(r["flow"] == f for r in mine)]:
        cell = {
            lib: [r for r in mine if r["flow"] == flow and r["library"] == lib] for lib in LIBRARIES
        }
        ok = {lib: [r for r in group if not r.get("error")] for lib, group in cell.items()}
        ms_flowvi = median(ok["flowvi"], "ms_per_step")
        for lib in LIBRARIES:
            if not cell[lib]:
                continue
            group = ok[lib]
            ms = median(group, "ms_per_step")
            n_params = group[0]["n_params"] if group else cell[lib][0].get("n_params")
            rows.append(
                f"| {flow} | {lib} | {_nll(median(group, 'test_nll'))}"
                f"{_spread(group, 'test_nll')} | {_nll(median(group, 'train_nll'))} "
                f"| {fmt(ms, '.2f')} | {fmt(ms / ms_flowvi, '.2f×')} "
                f"| {fmt(median(group, 'samples_per_s'), ',.0f')} "
                f"| {fmt(median(group, 'log_prob_per_s'), ',.0f')} | {n_params:,} "
                f"| {len(group)}/{len(cell[lib])} |"
            )
            for r in cell[lib]:
                if r.get("error") or r.get("sample_error") or r.get("test_nll") is None:
                    why = r.get("error") or r.get("sample_error") or "non-finite test NLL"
                    notes.append(f"- {lib} {flow} seed {r['seed']}: {why[:200]}")
        peers = [lib for lib in PEERS if ok[lib]]
        if ok["flowvi"] and peers:
            nll = median(ok["flowvi"], "test_nll")
            best = min(peers, key=lambda lib: _nan_last(median(ok[lib], "test_nll")))
            fast = min(peers, key=lambda lib: _nan_last(median(ok[lib], "ms_per_step")))
            best_nll, fast_ms = median(ok[best], "test_nll"), median(ok[fast], "ms_per_step")
            goals.append(
                f"| {flow} | {_nll(nll)} | {_nll(best_nll)} ({best}) "
                f"| {'yes' if nll <= best_nll else 'no'} | {fmt(ms_flowvi, '.2f')} "
                f"| {fmt(fast_ms, '.2f')} ({fast}) | {fmt(fast_ms / ms_flowvi, '.2f×')} "
                f"| {'yes' if fast_ms / ms_flowvi >= 1.5 else 'no'} |"
            )
    if len(goals) == 2:  # no flow with both flowvi and a peer
        goals = []
    return "\n".join([*rows, *([""] if goals else []), *goals, *([""] if notes else []), *notes])


def _nan_last(value: float) -> float:
    return math.inf if math.isnan(value) else value


def tables(records: list[dict]) -> str:
    out = [table(records, name) for name in DATASETS]
    out = [t for t in out if t]
    if out:
        out.append(
            "NLL: -mean ln p(x) of the test (train) data in nats per example, in data units, "
            "medians over seeds (min–max); ms/step: training loop wall time ÷ steps, one "
            "thread; ÷ flowvi: ms/step over flowvi's; samples/s and log_prob/s: medians of "
            "timed calls under no_grad; params: trainable parameters; seeds: successful/run. "
            "speed-up: fastest peer's ms/step ÷ flowvi's."
        )
    return "\n\n".join(out)


def step_table(records: list[dict]) -> str:
    """Markdown table of the interleaved per-step times: the fastest block of each library."""
    if not records:
        return ""
    r0 = records[0]
    rows = [
        f"Interleaved per-step time, ms (fastest of {r0['rounds']} blocks of {r0['block']} "
        "steps; median block in parentheses)",
        "",
        "| data | flow | " + " | ".join(LIBRARIES) + " | speed-up | ≥ 1.5× "
        "| compiled speed-up | ≥ 1.5× |",
        "|---|---|" + "---:|" * len(LIBRARIES) + "---:|:---:|---:|:---:|",
    ]
    for dataset in DATASETS:
        for flow in FLOWS:
            cell = {
                r["library"]: r
                for r in records
                if (r["dataset"], r["flow"]) == (dataset, flow) and not r.get("error")
            }
            if not cell:
                continue
            best = {lib: cell[lib]["ms_per_step_min"] for lib in cell}
            entries = [
                f"{best[lib]:.2f} ({cell[lib]['ms_per_step_median']:.2f})" if lib in cell else "—"
                for lib in LIBRARIES
            ]
            peers = [best[lib] for lib in cell if lib in PEERS]
            ratios = []
            for mine in ("flowvi", "flowvi-compile"):
                ratio = min(peers) / best[mine] if peers and mine in best else math.nan
                met = "n/a" if math.isnan(ratio) else ("yes" if ratio >= 1.5 else "no")
                ratios += [fmt(ratio, ".2f×"), met]
            rows.append(f"| {dataset} | {flow} | {' | '.join(entries + ratios)} |")
    rows += [
        "",
        "speed-up: the fastest peer's ms/step ÷ flowvi's (fastest blocks; compiled: ÷ "
        "flowvi-compile's, `fit_density(compile=True)`, compile time excluded: it falls in the "
        "untimed warm-up); the same training loops as the fits, one thread.",
    ]
    return "\n".join(rows)


# ----------------------------------------------------------------------------- CLI


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--flows", nargs="+", default=list(FLOWS), choices=FLOWS)
    parser.add_argument("--libraries", nargs="+", default=list(LIBRARIES), choices=LIBRARIES)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--steps", type=int, help="training steps (default: moons 5000, breast_cancer 2000)"
    )
    parser.add_argument("--batch-size", type=int, help="default: moons 256, breast_cancer 128")
    parser.add_argument("--layers", type=int, help="flow layers K (default 5)")
    parser.add_argument("--hidden", type=int, nargs="+", default=[64, 64])
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--samples", type=int, default=10_000, help="samples per timed draw")
    parser.add_argument(
        "--eval-points", type=int, default=5_000, help="test points per timed log_prob"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per throughput")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help=f"every combination for {SMOKE_STEPS} steps, one seed, results in a temporary file",
    )
    parser.add_argument(
        "--interleaved",
        action="store_true",
        help="instead of the fits: per-step time in interleaved blocks (seed 0), robust to a "
        "shared machine's load; default --out benchmarks/results/density_steps.jsonl",
    )
    parser.add_argument("--block", type=int, default=200, help="steps per interleaved block")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved blocks per library")
    parser.add_argument(
        "--out",
        type=Path,
        help="default: benchmarks/results/density.jsonl (--interleaved: density_steps.jsonl)",
    )
    parser.add_argument("--markdown", action="store_true", help="print the tables of medians")
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps = args.steps or SMOKE_STEPS
        args.seeds, args.samples, args.eval_points, args.repeats = [0], 500, 500, 1
        args.out = args.out or Path(tempfile.gettempdir()) / "flowvi-density-smoke.jsonl"
    default = "density_steps.jsonl" if args.interleaved else "density.jsonl"
    args.out = args.out or RESULTS / default
    for name in ("steps", "batch_size", "layers"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer")
    for name in ("samples", "eval_points", "repeats", "block", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer")
    if any(h < 1 for h in args.hidden) or not args.lr > 0:
        parser.error("--hidden sizes and --lr must be positive")
    if "maf" in args.flows and len(set(args.hidden)) > 1:
        parser.error("MAF: nflows' and normflows' MADE need equal --hidden sizes")
    for lib in args.libraries:
        if lib in PEERS:
            try:
                __import__(lib)
            except ImportError:
                parser.error(
                    f'{lib} is not installed: pip install -e ".[bench]", or --libraries flowvi'
                )
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    one_thread()
    for name in args.datasets:
        DATA[name] = load_data(name)

    if args.interleaved:
        main_interleaved(args)
        return
    records = load_records(args.out)
    done = {key(r) for r in records}
    combos = [
        (lib, name, flow, seed)
        for name in args.datasets
        for flow in args.flows
        for seed in args.seeds
        for lib in args.libraries
    ]

    def wanted(lib: str, name: str, flow: str, seed: int) -> tuple:
        return key(
            {"library": lib, "dataset": name, "flow": flow, "seed": seed, **resolve(name, args)}
        )

    todo = [combo for combo in combos if wanted(*combo) not in done]
    if len(todo) < len(combos):
        print(f"{args.out}: skipping records already there, {len(todo)} to run", file=sys.stderr)
    warm = set()
    bar = tqdm(todo, desc="density", unit="run", disable=not todo)
    for lib, name, flow, seed in bar:
        bar.set_postfix_str(f"{lib} {name} {flow} seed={seed}")
        if (lib, name, flow) not in warm:
            warm_up(lib, name, flow, args)
            warm.add((lib, name, flow))
        record = run(lib, name, flow, seed, args)
        records.append(record)
        save_records(args.out, records)
        if record.get("error") or record.get("sample_error"):
            why = record.get("error") or record.get("sample_error")
            tqdm.write(f"{lib} {name} {flow} seed {seed}: {why}")

    if args.markdown:
        keys = {wanted(*combo) for combo in combos}
        print(tables([r for r in records if key(r) in keys]))


def main_interleaved(args: argparse.Namespace) -> None:
    records = load_records(args.out)
    done = {step_key(r) for r in records}

    def wanted(lib: str, name: str, flow: str) -> tuple:
        return step_key(
            {"library": lib, "dataset": name, "flow": flow, **step_settings(name, args)}
        )

    cells = [(name, flow) for name in args.datasets for flow in args.flows]
    todo = [c for c in cells if any(wanted(lib, *c) not in done for lib in args.libraries)]
    bar = tqdm(todo, desc="interleaved", unit="cell", disable=not todo)
    for name, flow in bar:
        bar.set_postfix_str(f"{name} {flow}")
        new = interleaved(name, flow, args)
        keys = {step_key(r) for r in new}
        records = [r for r in records if step_key(r) not in keys] + new
        save_records(args.out, records)
    if args.markdown:
        keys = {wanted(lib, *c) for c in cells for lib in args.libraries}
        print(step_table([r for r in records if step_key(r) in keys]))


if __name__ == "__main__":
    main()

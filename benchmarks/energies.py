"""Benchmark: reverse-KL fits of U1–U4 with planar flows, flowvi beside normflows.

Both libraries fit exactly the same densities (flowvi's targets, U2–U4 confined to [-4, 4]² by
flowvi's smooth wall) with planar flows of length K on a standard normal base, and the same
settings: Adam, learning rate, batch size, iteration budget and β_t = min(1, β0 + t/T) (the
`flowvi fit` defaults from `flowvi.app.fit.FitConfig` unless overridden). Both fitted models are
scored by the same code, `flowvi.metrics.evaluate`: KL(q‖p) = F + ln Z with F from 100,000
samples of q and ln Z by quadrature. normflows' planar layers cannot evaluate q at arbitrary
points, so its forward KL is n/a.

Time per iteration is the training loop's wall time over iterations, one thread each
(`torch.set_num_threads(1)`); each library is warmed up (20 iterations) before the first timed
run. The table shows medians over seeds; speed-up = normflows ms/iter ÷ flowvi ms/iter.

    pip install -e ".[bench]"
    python -m benchmarks.energies --markdown             # U1–U4, K = 2, 8, 32, seeds 0 1 2
    python -m benchmarks.energies --iters 200 --anneal-iters 100 --seeds 0 --lengths 2 \\
        --targets U1 --out /tmp/energies.jsonl --markdown  # a smoke test, seconds

Results go to a JSON Lines file, one record per library × target × K × seed (and settings); records
already there are skipped, so an interrupted run resumes where it stopped. A run that fails
(e.g. a non-finite loss) is recorded with its error and not retried; delete it to retry.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

import flowvi
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
from flowvi.app.fit import FitConfig
from flowvi.metrics import evaluate
from flowvi.objectives import beta_schedule
from flowvi.train import NonFiniteLossError

DEFAULTS = FitConfig()
LIBRARIES = ("flowvi", "normflows")
# the settings a record depends on besides (library, target, K, seed), with the values that
# records written before a setting was recorded were produced with
SETTINGS = {
    "iters": None,
    "batch_size": None,
    "lr": None,
    "beta0": 0.01,
    "anneal_iters": None,
    "samples": 100_000,
}
WARMUP_ITERS = 20


# ----------------------------------------------------------------------------- training


def train_flowvi(target, K: int, s: argparse.Namespace) -> tuple[nn.Module, float, dict]:
    """A flowvi planar flow fitted by ``flowvi.fit``; returns (flow, loop seconds, extras)."""
    flow = flowvi.flows.build("planar", 2, length=K)
    start = time.perf_counter()
    flowvi.fit(
        flow,
        target,
        iters=s.iters,
        batch_size=s.batch_size,
        lr=s.lr,
        beta0=s.beta0,
        anneal=s.anneal_iters / s.iters,
        progress=False,
    )
    seconds = time.perf_counter() - start
    flow.eval()
    return flow, seconds, {}


def train_normflows(target, K: int, s: argparse.Namespace) -> tuple[nn.Module, float, dict]:
    """A normflows planar flow fitted by ``reverse_kld`` with flowvi's β_t schedule; returns
    (the model wrapped for ``flowvi.metrics.evaluate``, loop seconds, extras).

    The loop is normflows' own example loop: a step with a non-finite loss is skipped (counted
    in ``skipped_steps``) rather than stopping the run as flowvi does.
    """
    import normflows as nf

    class SameTarget(nf.distributions.Target):
        """flowvi's target density, as a normflows target."""

        def __init__(self) -> None:
            super().__init__()
            self.n_dims = target.dim
            self.max_log_prob = 0.0

        def log_prob(self, z):
            return target.log_prob(z)

    model = nf.NormalizingFlow(
        nf.distributions.DiagGaussian(2, trainable=False),
        [nf.flows.Planar((2,)) for _ in range(K)],
        SameTarget(),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=s.lr)
    skipped = 0
    start = time.perf_counter()
    for t in range(s.iters):
        beta = beta_schedule(t, beta0=s.beta0, anneal_iters=s.anneal_iters)
        loss = model.reverse_kld(s.batch_size, beta=beta)
        optimizer.zero_grad()
        if torch.isfinite(loss):
            loss.backward()
            optimizer.step()
        else:
            skipped += 1
    seconds = time.perf_counter() - start
    model.eval()
    return NormflowsAsFlow(model), seconds, {"skipped_steps": skipped}


class NormflowsAsFlow(nn.Module):
    """Just enough of a flowvi flow for ``flowvi.metrics.evaluate``: samples with their ln q.

    normflows' tanh planar layers have no inverse, so ``log_prob`` at given points is NaN (the
    forward KL that ``evaluate`` computes from it is discarded).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def rsample_and_log_prob(self, sample_shape) -> tuple[torch.Tensor, torch.Tensor]:
        (n,) = sample_shape
        return self.model.sample(n)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return torch.full(value.shape[:-1], math.nan, dtype=value.dtype, device=value.device)


TRAINERS = {"flowvi": train_flowvi, "normflows": train_normflows}


def run(library: str, name: str, K: int, seed: int, s: argparse.Namespace) -> dict:
    """One record: fit, then score with ``flowvi.metrics.evaluate``."""
    start = time.perf_counter()
    target = flowvi.targets.get(name)
    torch.manual_seed(seed)
    record = {"library": library, "target": name, "K": K, "seed": seed}
    record |= {key: getattr(s, key) for key in SETTINGS}
    try:
        q, train_s, extras = TRAINERS[library](target, K, s)
    except NonFiniteLossError as error:
        return record | {"error": str(error), "total_s": time.perf_counter() - start}
    metrics = evaluate(q, target, samples=s.samples)
    if library != "flowvi":
        metrics["forward_kl"] = None
    return finite(
        record
        | {
            "kl": metrics["kl"],
            "kl_se": metrics["kl_se"],
            "free_energy": metrics["free_energy"],
            "log_Z": metrics["log_Z"],
            "forward_kl": metrics["forward_kl"],
            "ess_fraction": metrics["ess_fraction"],
            "mass_outside_box": metrics["mass_outside_box"],
            "ms_per_iter": 1000 * train_s / s.iters,
            "train_s": train_s,
            "total_s": time.perf_counter() - start,
            **extras,
            "threads": torch.get_num_threads(),
            **(provenance() if library == "flowvi" else provenance(library)),
        }
    )


def warm_up(library: str, s: argparse.Namespace) -> None:
    """A few iterations untimed, so that one-time costs (lazy imports, allocator) stay out of
    the first timed run."""
    quick = argparse.Namespace(
        **{**vars(s), "iters": WARMUP_ITERS, "anneal_iters": WARMUP_ITERS // 2}
    )
    torch.manual_seed(0)
    TRAINERS[library](flowvi.targets.get("U1"), 2, quick)


# ----------------------------------------------------------------------------- records


def key(record: dict) -> tuple:
    settings = tuple(
        record.get(name, default) if default is not None else record[name]
        for name, default in SETTINGS.items()
    )
    return (record["library"], record["target"], record["K"], record["seed"], *settings)


# ----------------------------------------------------------------------------- table


def table(records: list[dict]) -> str:
    """Markdown table of medians over seeds, flowvi beside normflows, one row per target × K."""
    rows = [
        "| target | K | flowvi KL | normflows KL | flowvi ms/iter | normflows ms/iter | speed-up "
        "| flowvi F | normflows F | flowvi total s | normflows total s | seeds |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    failed = []
    for name, K in sorted({(r["target"], r["K"]) for r in records}):
        cell = [r for r in records if (r["target"], r["K"]) == (name, K)]
        failed += [r for r in cell if r.get("error")]
        mine, theirs = (
            [r for r in cell if r["library"] == lib and not r.get("error")] for lib in LIBRARIES
        )
        ms_mine, ms_theirs = median(mine, "ms_per_iter"), median(theirs, "ms_per_iter")
        seeds = f"{len(mine)}" if len(mine) == len(theirs) else f"{len(mine)}/{len(theirs)}"
        rows.append(
            f"| {name} | {K} | {fmt(median(mine, 'kl'), '.3f')} "
            f"| {fmt(median(theirs, 'kl'), '.3f')} "
            f"| {fmt(ms_mine, '.2f')} | {fmt(ms_theirs, '.2f')} "
            f"| {fmt(ms_theirs / ms_mine, '.2f×')} "
            f"| {fmt(median(mine, 'free_energy'), '.3f')} "
            f"| {fmt(median(theirs, 'free_energy'), '.3f')} "
            f"| {fmt(median(mine, 'total_s'), '.1f')} "
            f"| {fmt(median(theirs, 'total_s'), '.1f')} "
            f"| {seeds} |"
        )
    if records:
        r = records[0]
        rows += [
            "",
            f"KL(q‖p) and F = E_q[ln q − ln p̃] in nats, medians over seeds; {r['iters']} "
            f"iterations of {r['batch_size']} samples, Adam lr {r['lr']}, "
            f"β0 {r.get('beta0', 0.01)}, T {r['anneal_iters']}; ms/iter: training loop only, one "
            "thread; total s: build + train + evaluate; speed-up: normflows ms/iter ÷ flowvi "
            "ms/iter.",
        ]
    for r in failed:
        rows.append(
            f"- failed: {r['library']} {r['target']} K={r['K']} seed {r['seed']}: {r['error']}"
        )
    return "\n".join(rows)


# ----------------------------------------------------------------------------- CLI


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--iters", type=int, default=DEFAULTS.iters)
    parser.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size)
    parser.add_argument("--lr", type=float, default=DEFAULTS.lr)
    parser.add_argument("--beta0", type=float, default=DEFAULTS.beta0)
    parser.add_argument("--anneal-iters", type=int, default=5_000)
    parser.add_argument(
        "--samples", type=int, default=DEFAULTS.samples, help="samples of q for the metrics"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--lengths", type=int, nargs="+", default=[2, 8, 32])
    parser.add_argument("--targets", nargs="+", default=["U1", "U2", "U3", "U4"])
    parser.add_argument("--libraries", nargs="+", default=list(LIBRARIES), choices=LIBRARIES)
    parser.add_argument("--out", type=Path, default=RESULTS / "energies.jsonl")
    parser.add_argument("--markdown", action="store_true", help="print the table of medians")
    args = parser.parse_args(argv)
    try:  # flowvi's own checks of the settings, before any work
        replace(
            DEFAULTS,
            iters=args.iters,
            batch_size=args.batch_size,
            lr=args.lr,
            beta0=args.beta0,
            anneal=args.anneal_iters / args.iters,
            samples=args.samples,
        ).validate()
        for K in args.lengths:
            replace(DEFAULTS, length=K).validate()
        for name in args.targets:
            flowvi.targets.get(name)
    except (ValueError, KeyError) as error:
        parser.error(str(error))
    if "normflows" in args.libraries:
        try:
            import normflows  # noqa: F401
        except ImportError:
            parser.error(
                'normflows is not installed: pip install -e ".[bench]", or --libraries flowvi'
            )
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    one_thread()

    records = load_records(args.out)
    done = {key(r) for r in records}
    settings = {name: getattr(args, name) for name in SETTINGS}
    todo = [
        (lib, name, K, seed)
        for name in args.targets
        for K in args.lengths
        for seed in args.seeds
        for lib in args.libraries
        if key({"library": lib, "target": name, "K": K, "seed": seed, **settings}) not in done
    ]
    if len(todo) < len(args.targets) * len(args.lengths) * len(args.seeds) * len(args.libraries):
        print(f"{args.out}: skipping records already there, {len(todo)} to run", file=sys.stderr)
    warm = set()
    bar = tqdm(todo, desc="energies", unit="run", disable=not todo)
    for lib, name, K, seed in bar:
        bar.set_postfix_str(f"{lib} {name} K={K} seed={seed}")
        if lib not in warm:
            warm_up(lib, args)
            warm.add(lib)
        record = run(lib, name, K, seed, args)
        records.append(record)
        save_records(args.out, records)
        if record.get("error"):
            tqdm.write(f"{lib} {name} K={K} seed {seed} failed: {record['error']}")

    if args.markdown:
        wanted = {
            key({"library": lib, "target": name, "K": K, "seed": seed, **settings})
            for name in args.targets
            for K in args.lengths
            for seed in args.seeds
            for lib in args.libraries
        }
        print(table([r for r in records if key(r) in wanted]))


if __name__ == "__main__":
    main()

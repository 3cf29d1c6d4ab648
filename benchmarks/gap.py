"""Benchmark: the inference gap of VAEs (issue 6), Cremer, Li & Duvenaud (2018) style.

For each trained ``flowvi vae train`` run given (a diagonal and a flow posterior, the same
decoder architecture), on the first ``--n`` test images (Fashion-MNIST thresholded at 0.5 in the
runs recorded):

1. **AIS check**: on the first ``--check-points`` of those images, AIS with ``--steps`` and with
   twice as many intermediate distributions, the same chains and leapfrog steps; the mean change
   of ln p(x) must be below 0.1 nat for the settings to count as converged.
2. **BDMC**: ``--bdmc-points`` images simulated from the model, forward and reverse AIS with the
   same settings; the mean gap upper - lower certifies ln p(x) of model-like data.
3. **The gap table** (:func:`flowvi.vae.gap.inference_gap`): ln p(x) by AIS, L[q*] (per-image
   optimum of the same family, decoder frozen), L[q] (amortized), approximation and amortization
   gaps, mean ± standard error over the images; seconds per image (AIS plus local optimization).

Timings are on one thread (``torch.set_num_threads(1)``) of a shared 2-core machine; they vary
with the load.

    python -m benchmarks.gap --runs RUN_DIAGONAL RUN_FLOW --n 100 --markdown

Results go to ``--out`` (default ``benchmarks/results/gap.jsonl``, JSON Lines), one record per
run (its directory's name) and settings, replaced when rerun.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from pathlib import Path

import torch

from benchmarks.common import (
    RESULTS,
    fmt,
    load_records,
    one_thread,
    provenance,
    save_records,
)
from flowvi.app.gap import gap_table
from flowvi.settings import DTYPES
from flowvi.vae.config import load_splits, load_vae
from flowvi.vae.evaluate import mean_and_se
from flowvi.vae.gap import GapSettings, ais_log_likelihood, bdmc, inference_gap


def ais_check(model, x, settings: GapSettings, chains: int) -> dict:
    """ln p(x) with ``steps`` and ``2 * steps``: the mean change and its standard error."""
    options = {"chains": chains, "leapfrog": settings.leapfrog, "kind": settings.kind}
    start = time.perf_counter()
    base = ais_log_likelihood(model, x, steps=settings.steps, **options).log_Z
    seconds = time.perf_counter() - start
    doubled = ais_log_likelihood(model, x, steps=2 * settings.steps, **options).log_Z
    change, change_se = mean_and_se(doubled - base)
    return {
        "check_points": len(x),
        "check_chains": chains,
        "log_px_T": float(base.mean()),
        "log_px_2T": float(doubled.mean()),
        "change": change,
        "change_se": change_se,
        "converged": abs(change) < 0.1,
        "ais_seconds_per_point_T": seconds / len(x),
    }


def run_one(directory: Path, args: argparse.Namespace, settings: GapSettings) -> dict:
    model, config = load_vae(directory)
    model.eval()
    x = load_splits(config).test[: args.n].to(dtype=DTYPES[config.dtype])
    torch.manual_seed(args.seed)
    check = ais_check(model, x[: args.check_points], settings, args.check_chains or args.chains)
    change = f"{check['change']:+.3f} ± {check['change_se']:.3f}"
    print(f"{directory.name}: AIS T -> 2T changes ln p(x) by {change} nats", flush=True)
    if args.only_check:
        return {"run": directory.name, "settings": asdict(settings), "n": -1, "ais_check": check}
    torch.manual_seed(args.seed)
    sim = bdmc(model, args.bdmc_points, chains=settings.chains, steps=settings.steps,
               leapfrog=settings.leapfrog, kind=settings.kind)  # fmt: skip
    gap, gap_se = mean_and_se(sim["gap"])
    print(f"{directory.name}: BDMC upper - lower {gap:.3f} ± {gap_se:.3f} nats", flush=True)
    torch.manual_seed(args.seed)
    result = inference_gap(model, x, settings)
    return {
        "run": directory.name,
        "data": config.data,
        "posterior": config.posterior,
        "length": config.length,
        "latent": config.latent,
        "hidden": list(config.hidden),
        "n": len(x),
        "settings": asdict(settings),
        "ais_check": check,
        "bdmc": {"points": args.bdmc_points, "gap": gap, "gap_se": gap_se,
                 "lower": float(sim["lower"].mean()), "upper": float(sim["upper"].mean())},
        "summary": result["summary"],
        "seconds": result["seconds"],
        "seconds_per_point": result["seconds_per_point"],
        "local_iterations_mean": sum(result["per_point"]["local_iterations"]) / len(x),
        **provenance(),
    }  # fmt: skip


def markdown(records: list[dict]) -> str:
    rows = [
        "| posterior | ln p(x) (AIS) | L[q*] | L[q] | approximation gap | amortization gap | "
        "inference gap | amortization share | AIS T→2T | BDMC gap | s / image |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        s = r["summary"]

        def cell(key: str, s=s) -> str:
            return f"{s[key]['mean']:.2f} ± {fmt(s[key]['se'], '.2f')}"

        name = r["posterior"] + ("" if r["posterior"] == "diagonal" else f" K={r['length']}")
        share = s["amortization"]["mean"] / s["inference"]["mean"]
        check, sim = r["ais_check"], r["bdmc"]
        rows.append(
            f"| {name} | {cell('log_px')} | {cell('L_qstar')} | {cell('L_q')} | "
            f"{cell('approximation')} | {cell('amortization')} | {cell('inference')} | "
            f"{100 * share:.0f}% | {check['change']:+.3f} | {sim['gap']:.3f} ± "
            f"{sim['gap_se']:.3f} | {r['seconds_per_point']:.1f} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=Path, nargs="+", required=True, help="vae run dirs")
    parser.add_argument("--n", type=int, default=100, help="test images")
    parser.add_argument("--chains", type=int, default=16)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--leapfrog", type=int, default=5)
    parser.add_argument("--schedule", default="sigmoid")
    parser.add_argument("--local-iters", type=int, default=2000)
    parser.add_argument("--local-lr", type=float, default=1e-2)
    parser.add_argument("--elbo-samples", type=int, default=1000)
    parser.add_argument("--check-points", type=int, default=20)
    parser.add_argument("--check-chains", type=int, default=None, help="default: --chains")
    parser.add_argument("--bdmc-points", type=int, default=10)
    parser.add_argument("--only-check", action="store_true", help="the AIS check alone")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "gap.jsonl")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    one_thread()
    settings = GapSettings(chains=args.chains, steps=args.steps, kind=args.schedule,
                           leapfrog=args.leapfrog, local_iters=args.local_iters,
                           local_lr=args.local_lr, elbo_samples=args.elbo_samples)  # fmt: skip
    settings.validate()
    records = load_records(args.out)
    new = []
    for directory in args.runs:
        record = run_one(directory, args, settings)
        key = (record["run"], record["settings"], record["n"])
        records = [r for r in records if (r["run"], r["settings"], r["n"]) != key] + [record]
        save_records(args.out, records)
        new.append(record)
    if args.only_check:
        return
    print(gap_table(new))
    if args.markdown:
        print(markdown(new))


if __name__ == "__main__":
    main()

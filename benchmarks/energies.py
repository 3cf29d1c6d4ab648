"""Benchmark: reverse-KL fits of U1–U4 with planar flows, flowvi beside normflows.

Both libraries fit exactly the same densities (flowvi's targets, U2–U4 confined to [-4, 4]²)
with the same settings: Adam, learning rate, batch size, iteration budget and β_t schedule (the
`flowvi fit` defaults unless overridden). KL(q‖p) = F + ln Z for both, F from 100,000 samples of
q and ln Z by quadrature. Time per iteration is the training loop's wall time over iterations,
one thread each.

    pip install -e ".[bench]"
    python benchmarks/energies.py --markdown            # U1–U4, K = 2, 8, 32, seeds 0 1 2

Results go to a JSON file (one record per library × target × K × seed); records already there
are skipped, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

import flowvi
from flowvi.fitting import fit
from flowvi.metrics import effective_sample_size, evaluate, log_normalizer
from flowvi.objectives import beta_schedule
from flowvi.run import FitConfig

DEFAULTS = FitConfig()
SAMPLES = 100_000


def run_flowvi(target, K: int, seed: int, args) -> dict:
    torch.manual_seed(seed)
    flow = flowvi.flows.build("planar", 2, length=K)
    start = time.perf_counter()
    fit(
        flow,
        target,
        iters=args.iters,
        batch_size=args.batch_size,
        lr=args.lr,
        anneal_iters=args.anneal_iters,
        progress=False,
    )
    seconds = time.perf_counter() - start
    metrics = evaluate(flow, target, samples=SAMPLES)
    return {
        "kl": metrics["kl"],
        "kl_se": metrics["kl_se"],
        "free_energy": metrics["free_energy"],
        "forward_kl": metrics["forward_kl"],
        "ess_fraction": metrics["ess_fraction"],
        "ms_per_iter": 1000 * seconds / args.iters,
        "train_s": seconds,
    }


def run_normflows(target, K: int, seed: int, args) -> dict:
    import normflows as nf

    class Wrapped(nf.distributions.Target):
        def __init__(self) -> None:
            super().__init__()

        def log_prob(self, z):
            return target.log_prob(z)

    torch.manual_seed(seed)
    model = nf.NormalizingFlow(
        nf.distributions.DiagGaussian(2, trainable=False),
        [nf.flows.Planar((2,)) for _ in range(K)],
        Wrapped(),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    start = time.perf_counter()
    for t in range(args.iters):
        beta = beta_schedule(t, anneal_iters=args.anneal_iters)
        loss = model.reverse_kld(args.batch_size, beta=beta)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    seconds = time.perf_counter() - start
    with torch.no_grad():
        z, log_q = model.sample(SAMPLES)
        f = (log_q - target.log_prob(z)).double()
    mean = float(f.mean())
    log_z = log_normalizer(target)
    return {
        "kl": mean + log_z,
        "kl_se": float(f.std()) / math.sqrt(SAMPLES),
        "free_energy": mean,
        "forward_kl": None,
        "ess_fraction": float(effective_sample_size(-f)) / SAMPLES,
        "ms_per_iter": 1000 * seconds / args.iters,
        "train_s": seconds,
    }


RUNNERS = {"flowvi": run_flowvi, "normflows": run_normflows}


def key(record: dict) -> tuple:
    return record["library"], record["target"], record["K"], record["seed"]


def table(records: list[dict]) -> str:
    """Markdown table of medians over seeds, flowvi beside normflows."""

    def median(group, field):
        values = [r[field] for r in group if r[field] is not None and math.isfinite(r[field])]
        return statistics.median(values) if values else math.nan

    rows = [
        "| target | K | KL flowvi | KL normflows | F flowvi | F normflows | ms/iter flowvi | "
        "ms/iter normflows | speed-up | train s flowvi | train s normflows | seeds |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for target, K in sorted({(r["target"], r["K"]) for r in records}):
        mine, theirs = (
            [r for r in records if (r["target"], r["K"], r["library"]) == (target, K, lib)]
            for lib in ("flowvi", "normflows")
        )
        ms_mine, ms_theirs = median(mine, "ms_per_iter"), median(theirs, "ms_per_iter")
        rows.append(
            f"| {target} | {K} | {median(mine, 'kl'):.3f} | {median(theirs, 'kl'):.3f} | "
            f"{median(mine, 'free_energy'):.3f} | {median(theirs, 'free_energy'):.3f} | "
            f"{ms_mine:.2f} | {ms_theirs:.2f} | {ms_theirs / ms_mine:.1f}x | "
            f"{median(mine, 'train_s'):.0f} | {median(theirs, 'train_s'):.0f} | {len(mine)} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iters", type=int, default=DEFAULTS.iters)
    parser.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size)
    parser.add_argument("--lr", type=float, default=DEFAULTS.lr)
    parser.add_argument("--anneal-iters", type=int, default=DEFAULTS.anneal_iters)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--lengths", type=int, nargs="+", default=[2, 8, 32])
    parser.add_argument("--targets", nargs="+", default=["U1", "U2", "U3", "U4"])
    parser.add_argument("--libraries", nargs="+", default=list(RUNNERS), choices=list(RUNNERS))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/energies.json"))
    parser.add_argument("--markdown", action="store_true", help="print the table of medians")
    args = parser.parse_args()
    torch.set_num_threads(1)

    warm = argparse.Namespace(**{**vars(args), "iters": 20})
    for lib in args.libraries:  # one-time costs (torch's lazy imports) out of the timings
        RUNNERS[lib](flowvi.targets.get("U1"), 2, 0, warm)

    records = json.loads(args.out.read_text()) if args.out.exists() else []
    done = {key(r) for r in records}
    todo = [
        (lib, name, K, seed)
        for name in args.targets
        for K in args.lengths
        for seed in args.seeds
        for lib in args.libraries
        if (lib, name, K, seed) not in done
    ]
    for lib, name, K, seed in tqdm(todo, desc="benchmark"):
        result = RUNNERS[lib](flowvi.targets.get(name), K, seed, args)
        records.append(
            {
                "library": lib,
                "target": name,
                "K": K,
                "seed": seed,
                "iters": args.iters,
                "batch_size": args.batch_size,
                "lr": args.lr,
                "anneal_iters": args.anneal_iters,
                **result,
            }
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(records, indent=1) + "\n")
    if args.markdown:
        print(table([r for r in records if r["target"] in args.targets]))


if __name__ == "__main__":
    main()

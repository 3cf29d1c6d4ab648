"""Benchmark: a Pyro model with a subsampled likelihood, fitted by flowvi: time per step vs N.

A synthetic Bayesian logistic regression (``--features`` weights with N(0, 1) priors, N rows
drawn from the model) written as a Pyro model whose likelihood sits in
``pyro.plate("data", N, subsample_size=B)``: each step scores ``--particles`` draws of an IAF
guide on one random minibatch of B rows, scaled by N / B (an unbiased estimate of the full
log joint). Time per step should not grow with N. For each N the fit runs ``--warmup``
untimed steps, then ``--steps`` timed ones; the weights' posterior mean is compared with the
true weights at the end (a sanity check that the minibatch fit learns).

    python -m benchmarks.subsample                  # N = 10^4, 10^5, 10^6; prints a table
    python -m benchmarks.subsample --sizes 10000 --steps 50      # a quick check

With ``--out`` (e.g. ``benchmarks/results/subsample.jsonl``) the records are appended as JSON
Lines with the git commit, the versions and the machine.
"""

from __future__ import annotations

import argparse
import json
import time

import pyro
import pyro.distributions as dist
import torch

import flowvi
import flowvi.pyro
from benchmarks.common import provenance
from flowvi.inference.guides import build_guide


def model(x, y, batch):
    d = x.shape[1]
    w = pyro.sample("w", dist.Normal(torch.zeros(d), 1.0).to_event(1))
    with pyro.plate("data", len(y), subsample_size=batch) as i:
        logits = (x[i] * w).sum(-1)  # w: (particles, 1, d) broadcasts against x[i]: (B, d)
        pyro.sample("y", dist.Bernoulli(logits=logits), obs=y[i])


def run(n: int, args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    true_w = torch.randn(args.features)
    x = torch.randn(n, args.features)
    y = torch.bernoulli(torch.sigmoid(x @ true_w))
    target = flowvi.pyro.target(model, x, y, args.batch)
    guide = build_guide("iaf", target.dim, loc=target.initial_point())
    options = {"batch_size": args.particles, "lr": 1e-2, "progress": False}
    flowvi.fit(guide, target, iters=args.warmup, **options)
    start = time.perf_counter()
    flowvi.fit(guide, target, iters=args.steps, **options)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        mean = guide.sample((4000,)).mean(0)
    return {
        "n": n,
        "batch": args.batch,
        "particles": args.particles,
        "features": args.features,
        "ms_per_step": 1e3 * seconds / args.steps,
        "max_abs_error_of_mean": float((mean - true_w).abs().max()),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10**4, 10**5, 10**6])
    parser.add_argument("--batch", type=int, default=1000, help="subsample size B")
    parser.add_argument("--particles", type=int, default=64, help="guide draws per step")
    parser.add_argument("--features", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--out", default=None, help="append the records (JSON Lines) here")
    args = parser.parse_args(argv)
    flowvi.set_num_threads(1)
    made = provenance("pyro-ppl")
    print("| N | ms per step | max error of the posterior mean |")
    print("|---:|---:|---:|")
    for n in args.sizes:
        record = run(n, args) | made
        print(f"| {n:,} | {record['ms_per_step']:.2f} | {record['max_abs_error_of_mean']:.3f} |")
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(record, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    main()

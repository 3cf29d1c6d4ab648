"""Benchmark: classical variational inference (issue 5).

``cavi``: flowvi's CAVI beside scikit-learn's ``BayesianGaussianMixture`` set to the same model
(the Bayesian mixture of K unit-variance Gaussians with N(0, σ² I) priors on the means and
weights fixed at 1/K, Blei et al. 2017, Section 3; the mapping of priors is in
``flowvi.inference.sklearn_mixture``), at N = 10^3, 10^4, 10^5 training points, d = 2 and 10,
K = 5 and 20. Data are simulated from the model (σ = ``--prior-std``, seed = the record's seed),
with ``--n-test`` held-out points from the same components. Both start from the same
responsibilities (k-means++ seeding, one-hot rows at K points, seed = the record's seed).
flowvi stops when the relative ELBO change is below ``--tol``; scikit-learn then runs exactly
as many iterations (``tol=0``): set to this model its lower bound holds terms of order 10^15
and is rounded to ~0.1-1 nats, so its own stopping rule fires on rounding noise (recorded
too: ``sklearn_own_stop_*``, its default ``tol=1e-3``). Both fits are scored by the same code:
``flowvi.inference.cavi.mixture_elbo`` (the full ELBO with the optimal local factors, a function of
q(μ) alone) and the held-out log predictive density, both per datum in nats.

Timings, one thread each: torch at ``torch.set_num_threads(1)``, numpy's BLAS (OpenBLAS) for
scikit-learn at one thread through ``threadpoolctl``; wall time of the whole fit (from the
given responsibilities to the fitted q), the minimum over ``--repeats`` identical runs, after an
untimed warm-up fit of each library; ms/iter = wall ÷ iterations; speed-up = scikit-learn's
ms/iter ÷ flowvi's.

``svi``: SVI (Hoffman et al. 2013) on one large simulated set (``--n`` points), one run per
minibatch size, from the same starting responsibilities as a CAVI run to convergence on the
same data; the full-data ELBO per datum (at the current q(μ), optimal local factors) against
examples seen, beside CAVI's (one sweep = N examples). Writes a figure beside the records
(``--out`` with the suffix ``.png``).

    python -m benchmarks.classical cavi --markdown                # 12 settings × 3 seeds
    python -m benchmarks.classical cavi --sizes 1000 --dims 2 --ks 5 --seeds 0 \\
        --out /tmp/cavi.jsonl --markdown                          # a smoke test, seconds
    python -m benchmarks.classical svi --markdown                 # N = 10^6, 4 batch sizes

Results go to JSON Lines files (one record per run, with its settings, the git commit, the
versions and the machine); records already there are
skipped, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from pathlib import Path

import torch
from threadpoolctl import threadpool_limits

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
from flowvi.inference.cavi import (
    cavi,
    initial_responsibilities,
    log_predictive,
    mixture_elbo,
    simulate,
)
from flowvi.inference.sklearn_mixture import sklearn_mixture, sklearn_posterior
from flowvi.inference.svi import svi
from flowvi.plot import elbo_curves_figure

PEERS = ("scikit-learn", "numpy", "threadpoolctl")  # versions recorded beside flowvi's


def make_data(n: int, d: int, k: int, *, n_test: int, prior_std: float, seed: int):
    sample = simulate(n + n_test, k, d, prior_std=prior_std, seed=seed)
    return sample.x[:n], sample.x[n:]


def start(x: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """The shared starting responsibilities: k-means++ seeding, one-hot rows at K points."""
    return initial_responsibilities(
        x, k, init="kmeans++", generator=torch.Generator().manual_seed(seed)
    )


# ----------------------------------------------------------------------------- CAVI


def fit_flowvi(x, k, resp0, s):
    fit = cavi(x, k, prior_std=s.prior_std, init=resp0, tol=s.tol, max_iter=s.max_iter)
    return fit.means, fit.variances, fit.iterations, fit.converged, fit.elbo


def fit_sklearn(x_np, k, resp0, s, *, tol, max_iter):
    est = sklearn_mixture(
        k, x_np.shape[1], prior_std=s.prior_std, resp0=resp0, tol=tol, max_iter=max_iter
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a ConvergenceWarning is recorded as converged = False
        est.fit(x_np)
    means, variances = (torch.from_numpy(a) for a in sklearn_posterior(est))
    return means, variances, est.n_iter_, bool(est.converged_)


def timed(fn, repeats: int):
    best, out = math.inf, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def run_cavi(n: int, d: int, k: int, seed: int, s: argparse.Namespace) -> dict:
    x, test = make_data(n, d, k, n_test=s.n_test, prior_std=s.prior_std, seed=seed)
    resp0 = start(x, k, seed)
    x_np, resp0_np = x.numpy(), resp0.numpy()
    (m1, v1, it1, conv1, _), t1 = timed(lambda: fit_flowvi(x, k, resp0, s), s.repeats)
    with threadpool_limits(limits=1):
        (m2, v2, it2, _), t2 = timed(
            lambda: fit_sklearn(x_np, k, resp0_np, s, tol=0.0, max_iter=it1), s.repeats
        )
        m3, v3, it3, conv3 = fit_sklearn(x_np, k, resp0_np, s, tol=1e-3, max_iter=s.max_iter)
    score = {}
    fits = (("flowvi", (m1, v1)), ("sklearn", (m2, v2)), ("sklearn_own_stop", (m3, v3)))
    for name, (m, v) in fits:
        score[f"{name}_elbo_per_datum"] = float(mixture_elbo(x, m, v, prior_std=s.prior_std)) / n
        score[f"{name}_heldout_lpd"] = float(log_predictive(test, m, v).mean())
    return finite(
        {
            "n": n,
            "d": d,
            "k": k,
            "seed": seed,
            **{name: getattr(s, name) for name in CAVI_SETTINGS},
            "repeats": s.repeats,
            **score,
            "flowvi_iterations": it1,
            "sklearn_iterations": it2,
            "flowvi_converged": conv1,
            "sklearn_own_stop_iterations": it3,
            "sklearn_own_stop_converged": conv3,
            "flowvi_s": t1,
            "sklearn_s": t2,
            "flowvi_ms_per_iter": 1000 * t1 / it1,
            "sklearn_ms_per_iter": 1000 * t2 / it2,
            "max_abs_mean_diff": float((m1 - m2).abs().max()),
            "threads": {"torch": torch.get_num_threads(), "sklearn_blas": 1},
            **provenance(*PEERS),
        }
    )


CAVI_SETTINGS = ("prior_std", "tol", "max_iter", "n_test")  # what a record's results depend on


def cavi_key(r: dict) -> tuple:
    return (r["n"], r["d"], r["k"], r["seed"], *(r[name] for name in CAVI_SETTINGS))


def cavi_table(records: list[dict]) -> str:
    rows = [
        "| N | d | K | ELBO/N flowvi | ELBO/N sklearn | held-out flowvi | held-out sklearn "
        "| max abs Δm | iters | s flowvi | s sklearn | ms/iter flowvi | ms/iter sklearn "
        "| speed-up | sklearn own stop: iters, ELBO/N gap | seeds |",
        "|" + "---:|" * 16,
    ]
    for n, d, k in sorted({(r["n"], r["d"], r["k"]) for r in records}):
        g = [r for r in records if (r["n"], r["d"], r["k"]) == (n, d, k)]
        gap = median(
            [{"x": r["flowvi_elbo_per_datum"] - r["sklearn_own_stop_elbo_per_datum"]} for r in g],
            "x",
        )
        speed = median([{"x": r["sklearn_ms_per_iter"] / r["flowvi_ms_per_iter"]} for r in g], "x")
        rows.append(
            f"| {n:,} | {d} | {k} "
            f"| {fmt(median(g, 'flowvi_elbo_per_datum'), '.5f')} "
            f"| {fmt(median(g, 'sklearn_elbo_per_datum'), '.5f')} "
            f"| {fmt(median(g, 'flowvi_heldout_lpd'), '.5f')} "
            f"| {fmt(median(g, 'sklearn_heldout_lpd'), '.5f')} "
            f"| {fmt(max(r['max_abs_mean_diff'] for r in g), '.1e')} "
            f"| {fmt(median(g, 'flowvi_iterations'), '.0f')} "
            f"| {fmt(median(g, 'flowvi_s'), '.3f')} | {fmt(median(g, 'sklearn_s'), '.3f')} "
            f"| {fmt(median(g, 'flowvi_ms_per_iter'), '.3f')} "
            f"| {fmt(median(g, 'sklearn_ms_per_iter'), '.3f')} "
            f"| {fmt(speed, '.1f×')} "
            f"| {fmt(median(g, 'sklearn_own_stop_iterations'), '.0f')}, {fmt(gap, '.1e')} "
            f"| {len(g)} |"
        )
    if records:
        r = records[0]
        rows += [
            "",
            f"Medians over seeds (max abs Δm: the maximum over seeds of the largest "
            f"difference between the fitted means). σ = {r['prior_std']}; iters: flowvi's "
            f"iterations to a relative ELBO change below {r['tol']}, which scikit-learn then "
            "runs too; sklearn own stop: scikit-learn's iterations under its own rule "
            "(tol 1e-3 on its rounded lower bound) and flowvi's ELBO/N minus that fit's; "
            f"{r['n_test']:,} held-out points; ELBO/N and "
            "held-out log predictive in nats per point, both fits scored by "
            "`flowvi.inference.cavi.mixture_elbo` and `log_predictive`; s: wall time of the "
            "whole fit, minimum of 3 runs (1 at N = 100,000); one thread each; speed-up: "
            "sklearn ms/iter ÷ flowvi ms/iter.",
        ]
    return "\n".join(rows)


def main_cavi(s: argparse.Namespace) -> None:
    records = load_records(s.out)
    done = {cavi_key(r) for r in records}
    settings = {name: getattr(s, name) for name in CAVI_SETTINGS}
    wanted = [(n, d, k, seed) for n in s.sizes for d in s.dims for k in s.ks for seed in s.seeds]
    keys = {
        w: cavi_key({"n": w[0], "d": w[1], "k": w[2], "seed": w[3], **settings}) for w in wanted
    }
    todo = [w for w in wanted if keys[w] not in done]
    if len(todo) < len(wanted):
        print(f"{s.out}: skipping records already there, {len(todo)} to run", file=sys.stderr)
    if todo:  # untimed warm-up of both libraries
        warm = argparse.Namespace(**{**vars(s), "repeats": 1})
        run_cavi(500, 2, 3, 0, warm)
    for n, d, k, seed in todo:
        t0 = time.perf_counter()
        record = run_cavi(n, d, k, seed, s)
        records.append(record)
        save_records(s.out, records)
        print(
            f"N={n} d={d} K={k} seed {seed}: {record['flowvi_iterations']}/"
            f"{record['sklearn_iterations']} iters, {record['flowvi_ms_per_iter']:.3f}/"
            f"{record['sklearn_ms_per_iter']:.3f} ms/iter, Δm {record['max_abs_mean_diff']:.1e} "
            f"({time.perf_counter() - t0:.1f} s)",
            file=sys.stderr,
        )
    if s.markdown:
        print(cavi_table([r for r in records if cavi_key(r) in set(keys.values())]))


# ----------------------------------------------------------------------------- SVI


SVI_SETTINGS = (
    "n",
    "d",
    "k",
    "prior_std",
    "epochs",
    "tau",
    "kappa",
    "evaluations",
    "seed",
    "restarts",
    "start",
)
REACHED = 1e-3  # nats per datum: an SVI run within this of CAVI's optimum has reached it


def svi_key(r: dict) -> tuple:
    return (r["method"], r["batch_size"], r.get("svi_seed"), *(r[name] for name in SVI_SETTINGS))


def cavi_reference(x, test, s, settings) -> dict:
    """CAVI from ``--restarts`` k-means++ starts (seeds ``seed``, ``seed + 1``, ...), to a
    relative change of 1e-10. The start SVI uses: ``--start``, else the first start whose final
    ELBO is within 1e-9 (relative) of the best."""
    runs = []
    for r in range(s.restarts):
        resp0 = start(x, s.k, s.seed + r)
        t0 = time.perf_counter()
        fit = cavi(x, s.k, prior_std=s.prior_std, init=resp0, tol=1e-10, max_iter=1000)
        runs.append((fit, time.perf_counter() - t0, s.seed + r))
        print(f"CAVI from start {s.seed + r}: {fit.iterations} sweeps", file=sys.stderr)
    top = max(run[0].elbo for run in runs)
    if s.start is None:
        chosen = next(run for run in runs if run[0].elbo >= top - 1e-9 * abs(top))
    else:
        chosen = next((run for run in runs if run[2] == s.start), None)
        if chosen is None:
            raise SystemExit(f"--start {s.start} is not among the CAVI starts {s.seed}..")
    best = max(runs, key=lambda run: run[0].elbo)[0]
    fit, seconds, start_seed = chosen
    trace = fit.trace.tolist()
    return {
        "method": "cavi",
        "batch_size": s.n,
        **settings,
        "start_seed": start_seed,
        "restart_elbos_per_datum": [run[0].elbo / s.n for run in runs],
        "restart_iterations": [run[0].iterations for run in runs],
        "examples": [s.n * (t + 1) for t in range(len(trace))],
        "elbo_per_datum": [v / s.n for v in trace],
        "final_elbo_per_datum": float(
            mixture_elbo(x, fit.means, fit.variances, prior_std=s.prior_std)
        )
        / s.n,
        "best_elbo_per_datum": float(
            mixture_elbo(x, best.means, best.variances, prior_std=s.prior_std)
        )
        / s.n,
        "heldout_lpd": float(fit.log_predictive(test).mean()),
        "iterations": fit.iterations,
        "seconds": seconds,
        **provenance(*PEERS),
    }


def main_svi(s: argparse.Namespace) -> None:
    records = load_records(s.out)
    settings = {name: getattr(s, name) for name in SVI_SETTINGS}
    done = {svi_key(r) for r in records}
    x, test = make_data(s.n, s.d, s.k, n_test=s.n_test, prior_std=s.prior_std, seed=s.seed)
    wanted = svi_key({"method": "cavi", "batch_size": s.n, **settings})
    ref = next((r for r in records if svi_key(r) == wanted), None)
    if ref is None:
        ref = finite(cavi_reference(x, test, s, settings))
        records.append(ref)
        save_records(s.out, records)
    resp0 = start(x, s.k, ref["start_seed"])
    for b in s.batch_sizes:
        for seed in s.svi_seeds:
            rec = {"method": "svi", "batch_size": b, "svi_seed": seed, **settings}
            if svi_key(rec) in done:
                continue
            steps = max(1, round(s.epochs * s.n / b))
            t0 = time.perf_counter()
            fit = svi(
                x,
                s.k,
                prior_std=s.prior_std,
                batch_size=b,
                steps=steps,
                tau=s.tau,
                kappa=s.kappa,
                init=resp0,
                evaluations=s.evaluations,
                seed=seed,
            )
            seconds = time.perf_counter() - t0
            rec |= {
                "steps": steps,
                "examples": fit.trace[:, 1].tolist(),
                "elbo_per_datum": (fit.trace[:, 3] / s.n).tolist(),
                "final_elbo_per_datum": fit.elbo_per_datum,
                "heldout_lpd": float(fit.log_predictive(test).mean()),
                "seconds": seconds,
                **provenance(*PEERS),
            }
            records.append(finite(rec))
            save_records(s.out, records)
            gap = ref["final_elbo_per_datum"] - fit.elbo_per_datum
            print(
                f"SVI |B| = {b} seed {seed}: {steps} steps, {seconds:.1f} s, gap {gap:.2e}",
                file=sys.stderr,
            )
    mine = [
        r
        for r in records
        if all(r[name] == settings[name] for name in SVI_SETTINGS)
        and (
            r["method"] == "cavi"
            or (r["batch_size"] in s.batch_sizes and r["svi_seed"] in s.svi_seeds)
        )
    ]
    figure(mine, s)
    if s.markdown:
        print(svi_table(mine, s))


def figure(records: list[dict], s: argparse.Namespace) -> None:
    """Gap to CAVI's optimum against examples seen: CAVI, and SVI's first seed per batch size."""
    ref = next(r for r in records if r["method"] == "cavi")
    opt = ref["final_elbo_per_datum"]
    first = s.svi_seeds[0]
    runs = sorted(
        (r for r in records if r["method"] == "svi" and r["svi_seed"] == first),
        key=lambda r: r["batch_size"],
    )
    curves = {}
    for r in [ref, *runs]:
        label = (
            "CAVI (a full pass per sweep)"
            if r["method"] == "cavi"
            else f"SVI |B| = {r['batch_size']:,}"
        )
        curves[label] = (r["examples"], [opt - v for v in r["elbo_per_datum"]])
    path = s.out.with_suffix(".png")
    elbo_curves_figure(
        curves,
        path,
        logy=True,
        ylabel="CAVI optimum − ELBO, nats per datum",
        title=f"N = {s.n:,}, d = {s.d}, K = {s.k}, ρ_t = (t + {s.tau:g})^-{s.kappa:g}, "
        f"SVI seed {first}",
    )
    print(f"figure: {path}", file=sys.stderr)


def _gap_at(r: dict, examples: float, opt: float) -> float:
    seen = [v for e, v in zip(r["examples"], r["elbo_per_datum"], strict=True) if e <= examples]
    return opt - seen[-1] if seen and seen[-1] is not None else math.nan


def svi_table(records: list[dict], s: argparse.Namespace) -> str:
    ref = next(r for r in records if r["method"] == "cavi")
    opt = ref["final_elbo_per_datum"]
    marks = sorted({f for f in (0.01, 0.1, 1.0, s.epochs) if f <= s.epochs})
    head = " | ".join(f"gap at {f:g} epoch{'s' if f != 1 else ''}" for f in marks)
    rows = [
        f"| method | batch | steps | {head} | reached | held-out | s | runs |",
        "|---|---:|---:|" + "---:|" * len(marks) + "---:|---:|---:|---:|",
    ]
    groups = [("CAVI", s.n, [ref])] + [
        ("SVI", b, [r for r in records if r["method"] == "svi" and r["batch_size"] == b])
        for b in sorted(s.batch_sizes)
    ]
    for method, b, g in groups:
        if not g:
            continue
        cells = [
            fmt(median([{"x": _gap_at(r, f * s.n, opt)} for r in g], "x"), ".2e") for f in marks
        ]
        finals = [opt - r["final_elbo_per_datum"] for r in g]
        steps = g[0].get("steps", g[0].get("iterations"))
        rows.append(
            f"| {method} | {b:,} | {steps:,} | {' | '.join(cells)} "
            f"| {sum(f < REACHED for f in finals)}/{len(g)} "
            f"| {median(g, 'heldout_lpd'):.5f} | {median(g, 'seconds'):.1f} | {len(g)} |"
        )
    restarts = ", ".join(
        f"{v:.5f} ({i} sweeps)"
        for v, i in zip(ref["restart_elbos_per_datum"], ref["restart_iterations"], strict=True)
    )
    rows += [
        "",
        f"Gap: CAVI's optimum minus the ELBO per datum (nats) at the last evaluation within "
        f"that many epochs (1 epoch = {s.n:,} examples; CAVI: the sweeps done by then, 'n/a' "
        "before its first), the median over SVI seeds; the ELBO is evaluated on the full data "
        f"with the optimal local factors. Reached: SVI runs that end within {REACHED:g} nats "
        f"per datum of CAVI's optimum. CAVI from {s.restarts} k-means++ starts (final ELBO per "
        f"datum {restarts}); SVI starts where CAVI start {ref['start_seed']} did, whose optimum "
        f"is {opt:.6f} nats per datum. Held-out: log predictive density per point of "
        f"{s.n_test:,} held-out points (median). s: wall time of one run (median). "
        f"ρ_t = (t + {s.tau:g})^-{s.kappa:g}.",
    ]
    return "\n".join(rows)


# ----------------------------------------------------------------------------- CLI


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parts = parser.add_subparsers(dest="part", required=True)
    c = parts.add_parser("cavi", help="CAVI beside scikit-learn's BayesianGaussianMixture")
    c.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    c.add_argument("--dims", type=int, nargs="+", default=[2, 10])
    c.add_argument("--ks", type=int, nargs="+", default=[5, 20])
    c.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    c.add_argument("--prior-std", type=float, default=5.0)
    c.add_argument("--tol", type=float, default=1e-8)
    c.add_argument("--max-iter", type=int, default=1000)
    c.add_argument("--n-test", type=int, default=10_000)
    c.add_argument("--repeats", type=int, default=3, help="timed runs per fit (minimum kept)")
    c.add_argument("--out", type=Path, default=RESULTS / "classical_cavi.jsonl")
    c.add_argument("--markdown", action="store_true")
    v = parts.add_parser("svi", help="SVI against examples seen, beside CAVI")
    v.add_argument("--n", type=int, default=1_000_000)
    v.add_argument("--d", type=int, default=2)
    v.add_argument("--k", type=int, default=5)
    v.add_argument("--prior-std", type=float, default=5.0)
    v.add_argument("--batch-sizes", type=int, nargs="+", default=[10, 100, 1_000, 10_000])
    v.add_argument("--epochs", type=float, default=2.0, help="examples seen ÷ N per SVI run")
    v.add_argument("--tau", type=float, default=1.0)
    v.add_argument("--kappa", type=float, default=0.7)
    v.add_argument("--evaluations", type=int, default=25)
    v.add_argument("--n-test", type=int, default=10_000)
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--restarts", type=int, default=3, help="CAVI starts")
    v.add_argument("--start", type=int, default=None, help="the CAVI start SVI starts from")
    v.add_argument("--svi-seeds", type=int, nargs="+", default=[0, 1, 2])
    v.add_argument("--out", type=Path, default=RESULTS / "classical_svi.jsonl")
    v.add_argument("--markdown", action="store_true")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    s = parse_args(argv)
    one_thread()
    main_cavi(s) if s.part == "cavi" else main_svi(s)


if __name__ == "__main__":
    main()

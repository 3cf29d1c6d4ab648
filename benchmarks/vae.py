"""Benchmark: VAE posteriors (issue 4), diagonal Gaussian against amortized flows.

Every model has the same MLP encoder and Bernoulli decoder (``--hidden``, default 300-300,
mirrored; latent ``--latent``, default 40); only the posterior differs: diagonal Gaussian,
planar and radial (K = ``--planar-length``, 10), Sylvester O/H/T and IAF (K = ``--length``, 4),
each amortized on the encoder's context (:func:`flowvi.vae.make_posterior`). Each model is trained
by :func:`flowvi.app.vae.run_vae` (the ``flowvi vae train`` run: Adam, KL warm-up, validation
-ELBO every epoch, early stopping, best parameters kept) into ``--runs/<data>-<posterior>``.

Data: ``fashion-mnist`` (Debian package ``dataset-fashion-mnist``) thresholded at 0.5 as in
Cremer et al. (2018), 54,000 training / 6,000 validation images and the official 10,000 test
images; ``digits`` (scikit-learn, 8×8) with the ``flowvi vae train`` defaults.

Scores, in nats per image, by the same code for every model:

- test -ELBO on the whole test set (one latent sample per image, analytic KL for the diagonal
  posterior), with its standard error;
- test -ln p(x) by importance sampling with k = ``--eval-samples`` (5000, Burda et al.) on
  ``--eval-points`` test images drawn by a fixed permutation (seed 0), the same images for every
  model, with its standard error and the paired difference to the diagonal model (mean and
  standard error of the per-image differences, which cancels the images' own spread).

Timings, one thread (``torch.set_num_threads(1)``): s/epoch = training wall time ÷ epochs run
(each epoch includes its validation pass); eval s = wall time of the importance-sampled -ln p(x)
on the ``--eval-points`` images. On a shared machine they vary with the load. The table's gap is
the inference gap -ELBO - (-ln p(x)) on the ``--eval-points`` images (both on the same images).

    python -m benchmarks.vae --markdown                       # Fashion-MNIST, all posteriors
    python -m benchmarks.vae --data digits --epochs 100 --warmup 10 --markdown
    python -m benchmarks.vae --smoke --markdown               # a tiny budget, a minute
    python -m benchmarks.vae --timing                         # ms/step, interleaved blocks

Results go to ``--out`` (default ``benchmarks/results/vae.jsonl``, JSON Lines; ``--timing``:
``vae_timing.jsonl`` beside it), one record per data set × posterior × settings; records
already there are skipped, and an interrupted training run is resumed from its checkpoint.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from benchmarks.common import (
    RESULTS,
    finite,
    fmt,
    load_records,
    one_thread,
    provenance,
    save_records,
)
from flowvi.app.vae import run_vae
from flowvi.fused import BatchLoss, FusedAdamStep
from flowvi.io import WEIGHTS
from flowvi.train import CHECKPOINT, train
from flowvi.vae.config import KLS, VAEConfig, load_splits, load_vae, make_vae
from flowvi.vae.evaluate import log_likelihood, mean_and_se, mean_elbo

POSTERIORS = ("diagonal", "planar", "radial", "sylvester-o", "sylvester-h", "sylvester-t", "iaf")
KL_TAGS = {"mc": " (MC KL)", "split": " (split KL)"}


def lengths(s: argparse.Namespace) -> dict[str, int]:
    """Flow length K of each posterior: planar and radial ``--planar-length`` (10, Rezende &
    Mohamed's Table 2 column), Sylvester and IAF ``--length`` (richer, costlier layers)."""
    short = {"diagonal": 1, "planar": s.planar_length, "radial": s.planar_length}
    return {p: short.get(p, s.length) for p in POSTERIORS}


def settings(s: argparse.Namespace, posterior: str) -> dict:
    """The settings of one run (a diagonal posterior has no flow context to project)."""
    return {
        "data": s.data,
        "epochs": s.epochs,
        "warmup": s.warmup,
        "latent": s.latent,
        "hidden": list(s.hidden),
        "batch_size": s.batch_size,
        "eval_points": s.eval_points,
        "eval_samples": s.eval_samples,
        "seed": s.seed,
        "kl": s.kl,
        "lr": s.lr,
        "flow_context": None if posterior == "diagonal" else s.flow_context,
    }


def key(r: dict) -> tuple:
    return (
        *(str(r[k]) for k in ("posterior", "length", *settings_keys())),
        r.get("kl", "analytic"),
        r.get("lr", 1e-3),
        r.get("flow_context"),
    )


def settings_keys() -> tuple[str, ...]:
    return ("data", "epochs", "warmup", "latent", "hidden", "batch_size", "eval_points", "seed")


def run_one(posterior: str, length: int, s: argparse.Namespace) -> dict:
    context = settings(s, posterior)["flow_context"]
    config = VAEConfig(
        data=s.data,
        posterior=posterior,
        length=length,
        latent=s.latent,
        hidden=tuple(s.hidden),
        epochs=s.epochs,
        warmup=s.warmup,
        patience=max(s.epochs, 1),
        batch_size=s.batch_size,
        seed=s.seed,
        eval_samples=s.eval_samples,
        kl=s.kl,
        lr=s.lr,
        flow_context=context,
        compile=s.compile,
    )
    suffix = "" if s.kl == "analytic" else f"-{s.kl}kl"
    suffix += "" if s.seed == 0 else f"-seed{s.seed}"  # the defaults' runs keep their old names
    suffix += "" if s.lr == 1e-3 else f"-lr{s.lr:g}"
    suffix += "" if context is None else f"-context{context}"
    directory = s.runs / f"{s.data}-{posterior}-K{length}-e{s.epochs}{suffix}"
    train_info: dict = {}
    if not (directory / WEIGHTS).exists():
        resume = (directory / CHECKPOINT).exists()
        if not resume and directory.exists():
            for path in directory.iterdir():  # a run that stopped before its first checkpoint
                path.unlink()
        train_info = run_vae(config, directory, resume=resume, progress=s.progress)
    else:
        train_info = _read(directory / "train.json")
    model, config = load_vae(directory)
    model.eval()
    splits = load_splits(config)
    x = splits.test.to(torch.float32)
    torch.manual_seed(s.seed)
    neg_elbo = -mean_elbo(model, x)
    pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[: s.eval_points]
    start = time.perf_counter()
    nll = -log_likelihood(model, x[pick], samples=s.eval_samples)
    eval_seconds = time.perf_counter() - start
    elbo_mean, elbo_se = mean_and_se(neg_elbo)
    sub_mean, sub_se = mean_and_se(neg_elbo[pick])
    nll_mean, nll_se = mean_and_se(nll)
    epochs_run = train_info.get("epochs", math.nan)
    seconds = train_info.get("train_seconds_this_session", math.nan)
    return finite(
        {
            "posterior": posterior,
            "length": length,
            **settings(s, posterior),
            "parameters": sum(p.numel() for p in model.parameters()),
            "n_train": len(splits.train),
            "n_test": len(x),
            "epochs_run": epochs_run,
            "best_epoch": train_info.get("best_epoch", math.nan),
            "valid_neg_elbo": train_info.get("valid_neg_elbo", math.nan),
            "train_seconds": seconds,
            "epoch_seconds": seconds / epochs_run if epochs_run else math.nan,
            "test_neg_elbo": elbo_mean,
            "test_neg_elbo_se": elbo_se,
            "subset_neg_elbo": sub_mean,
            "subset_neg_elbo_se": sub_se,
            "test_nll": nll_mean,
            "test_nll_se": nll_se,
            "eval_seconds": eval_seconds,
            "nll_per_image": [round(v, 4) for v in nll.tolist()],
            "threads": torch.get_num_threads(),
            **provenance(),
            "compiled": s.compile,
            "config": {k: v for k, v in asdict(config).items() if k != "data_dir"},
        }
    )


def _read(path: Path) -> dict:
    import json

    return json.loads(path.read_text()) if path.exists() else {}


def context_tag(r: dict) -> str:
    """`` (context r)`` for a posterior whose layers read a projection of the context."""
    return "" if r.get("flow_context") is None else f" (context {r['flow_context']})"


def table(records: list[dict], data: str) -> str:
    group = [r for r in records if r["data"] == data]
    if not group:
        return ""
    plain = [r for r in group if r["posterior"] == "diagonal" and r.get("kl") != "mc"]
    base = plain[0] if plain else None
    lines = [
        "| posterior | K | params | epochs | test -ELBO | -ln p(x) | Δ vs diagonal | gap "
        "| s/epoch | ×diag | eval s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in group:
        delta, ratio = "", ""
        if (
            base is not None
            and r is not base
            and len(r["nll_per_image"]) == len(base["nll_per_image"])
        ):
            diff = torch.tensor(r["nll_per_image"]) - torch.tensor(base["nll_per_image"])
            m, se = mean_and_se(diff)
            delta = f"{m:+.2f} ± {se:.2f}"
        if base is not None and base.get("epoch_seconds") and r.get("epoch_seconds"):
            ratio = f"{r['epoch_seconds'] / base['epoch_seconds']:.2f}×"
        k = "" if r["posterior"] == "diagonal" else str(r["length"])
        tags = f" (seed {r['seed']})" if r.get("seed", 0) else ""
        tags += f" (lr {r['lr']:g})" if r.get("lr", 1e-3) != 1e-3 else ""
        tags += context_tag(r)
        lines.append(
            f"| {r['posterior']}{KL_TAGS.get(r.get('kl'), '')}{tags} | {k} "
            f"| {r['parameters'] / 1e6:.2f}M | {r['epochs_run']} "
            f"| {r['test_neg_elbo']:.2f} ± {r['test_neg_elbo_se']:.2f} "
            f"| {r['test_nll']:.2f} ± {r['test_nll_se']:.2f} | {delta} "
            f"| {r['subset_neg_elbo'] - r['test_nll']:.2f} "
            f"| {fmt(r['epoch_seconds'] or math.nan, '.1f')} | {ratio} "
            f"| {fmt(r['eval_seconds'], '.0f')} |"
        )
    return "\n".join(lines)


def seed_table(records: list[dict], data: str) -> str:
    """Each flow posterior's −ln p(x) minus that of the diagonal posterior trained with the
    same seed and settings (epochs, learning rate, KL estimate; ``analytic`` for ``split``):
    mean ± standard error of the per-image differences, one column per seed, then the mean
    over seeds with its standard error over seeds."""

    def setting(r: dict) -> tuple:
        return r["epochs"], r.get("lr", 1e-3), r.get("kl", "analytic"), r["eval_points"]

    def baseline(r: dict) -> tuple:
        # a diagonal posterior's split KL is its analytic one (no flow share)
        epochs, lr, kl, points = setting(r)
        return (epochs, lr, "analytic" if kl == "split" else kl, points), r["seed"]

    group = [r for r in records if r["data"] == data]
    diagonal = {(setting(r), r["seed"]): r for r in group if r["posterior"] == "diagonal"}
    rows: dict[tuple, dict[int, tuple[float, float]]] = {}
    for r in group:
        base = diagonal.get(baseline(r))
        if r["posterior"] == "diagonal" or base is None:
            continue
        diff = torch.tensor(r["nll_per_image"]) - torch.tensor(base["nll_per_image"])
        row = (r["posterior"] + context_tag(r), r["length"], *setting(r)[:3])
        rows.setdefault(row, {})[r["seed"]] = mean_and_se(diff)
    seeds = sorted({seed for row in rows.values() for seed in row})
    lines = [
        "| posterior | K | epochs | lr | KL | "
        + " | ".join(f"seed {seed}" for seed in seeds)
        + " | mean over seeds |",
        "|---|---:|---:|---:|---|" + "---:|" * (len(seeds) + 1),
    ]
    for row, by_seed in rows.items():
        means = torch.tensor([m for m, _ in by_seed.values()], dtype=torch.float64)
        overall = ""
        if len(means) > 1:
            overall = f"{means.mean():+.2f} (SE {means.std() / math.sqrt(len(means)):.2f})"
        posterior, length, epochs, lr, kl = row
        lines.append(
            f"| {posterior} | {length} | {epochs} | {lr:g} | {kl} | "
            + " | ".join(
                f"{by_seed[seed][0]:+.2f} ± {by_seed[seed][1]:.2f}" if seed in by_seed else ""
                for seed in seeds
            )
            + f" | {overall} |"
        )
    return "\n".join(lines)


def timing(s: argparse.Namespace) -> list[dict]:
    """Per-step training time of each posterior, robust to a shared machine's load.

    Every model trains on the same ``--batch-size`` real training images, eagerly with
    :func:`flowvi.train.train` (fused Adam, NaN guard) or, with ``--compile``, by one compiled
    step each (:class:`flowvi.fused.FusedAdamStep`, what ``train(compile=True)`` runs), in
    blocks of ``--timing-steps`` steps, the posteriors taking turns for ``--timing-rounds``
    rounds after one untimed block each (which compiles); the fastest block of each is kept
    (load only ever slows a block down). s/epoch = ms/step × steps per epoch.
    """
    config = VAEConfig(
        data=s.data, latent=s.latent, hidden=tuple(s.hidden), seed=s.seed, lr=s.lr, kl=s.kl
    )
    splits = load_splits(config)
    x = splits.train[: s.batch_size].to(torch.float32)
    per_epoch = math.ceil(len(splits.train) / s.batch_size)
    blocks = {}
    for posterior in s.posteriors:
        torch.manual_seed(s.seed)
        length = lengths(s)[posterior]
        context = settings(s, posterior)["flow_context"]
        model = make_vae(
            replace(config, posterior=posterior, length=length, flow_context=context), x.shape[1]
        )
        blocks[posterior] = (length, model, _block(model, x, s))
    best = dict.fromkeys(blocks, math.inf)
    for warm_up in (True,) + (False,) * s.timing_rounds:
        for posterior, (_, _, block) in blocks.items():
            start = time.perf_counter()
            block()
            if not warm_up:
                seconds = (time.perf_counter() - start) / s.timing_steps
                best[posterior] = min(best[posterior], seconds)
    records = []
    for posterior, (length, model, _) in blocks.items():
        records.append(
            {
                "posterior": posterior,
                "length": length,
                "flow_context": settings(s, posterior)["flow_context"],
                "compiled": s.compile,
                "kl": s.kl,
                "data": s.data,
                "batch_size": s.batch_size,
                "latent": s.latent,
                "hidden": list(s.hidden),
                "parameters": sum(p.numel() for p in model.parameters()),
                "ms_per_step": 1000 * best[posterior],
                "epoch_seconds": best[posterior] * per_epoch,
                "ratio_to_diagonal": best[posterior] / best.get("diagonal", math.nan),
                "rounds": s.timing_rounds,
                "steps_per_block": s.timing_steps,
                "threads": 1,
                **provenance(),
            }
        )
    return records


def _block(model, x: torch.Tensor, s: argparse.Namespace):
    """A function that runs ``--timing-steps`` training steps of ``model`` on the batch ``x``."""

    def loss(xb: torch.Tensor) -> tuple[torch.Tensor, dict]:
        bound = model.elbo(xb)
        return -bound.mean(), {"bound": bound}

    if s.compile:
        step = FusedAdamStep(model, loss, torch.optim.Adam(model.parameters(), lr=s.lr))

        def block() -> None:
            for _ in range(s.timing_steps):
                step((x,), s.lr)

        return block
    return lambda: train(model, BatchLoss(lambda t: x, loss), iters=s.timing_steps, progress=False)


def timing_table(records: list[dict]) -> str:
    lines = [
        "| posterior | K | step | ms/step | s/epoch | ×diagonal |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for r in records:
        k = "" if r["posterior"] == "diagonal" else str(r["length"])
        step = "compiled" if r.get("compiled") else "eager"
        lines.append(
            f"| {r['posterior']}{context_tag(r)} | {k} | {step} | {r['ms_per_step']:.1f} "
            f"| {r['epoch_seconds']:.1f} | {fmt(r['ratio_to_diagonal'], '.2f×')} |"
        )
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="fashion-mnist", choices=["fashion-mnist", "digits"])
    parser.add_argument("--posteriors", nargs="+", default=list(POSTERIORS), choices=POSTERIORS)
    parser.add_argument("--planar-length", type=int, default=10, help="K of planar and radial")
    parser.add_argument("--length", type=int, default=4, help="K of Sylvester and IAF")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1, help="epochs of KL warm-up")
    parser.add_argument("--latent", type=int, default=40)
    parser.add_argument("--hidden", type=int, nargs="+", default=[300, 300])
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--eval-points", type=int, default=500, help="test images for -ln p(x)")
    parser.add_argument("--eval-samples", type=int, default=5000, help="importance samples k")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate")
    parser.add_argument(
        "--kl", default="analytic", choices=list(KLS), help="KL of the training ELBO"
    )
    parser.add_argument(
        "--flow-context",
        type=int,
        default=None,
        help="flow layers read a projection of the context to this size (ProjectedPosterior)",
    )
    parser.add_argument(
        "--compile", action="store_true", help="train (and time) compiled steps (torch.compile)"
    )
    parser.add_argument("--runs", type=Path, default=Path("runs/bench-vae"))
    parser.add_argument("--out", type=Path, default=RESULTS / "vae.jsonl")
    parser.add_argument("--progress", action="store_true", help="progress bars")
    parser.add_argument(
        "--timing", action="store_true", help="only per-step times, interleaved (see timing)"
    )
    parser.add_argument("--timing-rounds", type=int, default=5)
    parser.add_argument("--timing-steps", type=int, default=20)
    parser.add_argument("--markdown", action="store_true", help="print the table")
    parser.add_argument(
        "--by-seed",
        action="store_true",
        help="only print the per-seed differences from the diagonal posterior of --out's records",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="digits, 2 epochs, k = 50: checks the script"
    )
    s = parser.parse_args(argv)
    if s.smoke:
        s.data, s.epochs, s.warmup, s.eval_samples, s.eval_points = "digits", 2, 1, 50, 50
        s.out, s.runs = Path("/tmp/flowvi-vae-smoke.jsonl"), Path("/tmp/flowvi-vae-smoke")
    return s


def main(argv=None) -> None:
    s = parse_args(argv)
    one_thread()
    if s.timing:
        records = timing(s)
        save_records(s.out.with_name(s.out.stem + "_timing.jsonl"), records)
        print(timing_table(records))
        return
    records = load_records(s.out)
    if s.by_seed:
        print(seed_table(records, s.data))
        return
    done = {key(r) for r in records}
    for posterior in s.posteriors:
        length = lengths(s)[posterior]
        probe = {"posterior": posterior, "length": length, **settings(s, posterior)}
        if key(probe) in done:
            continue
        record = run_one(posterior, length, s)
        records.append(record)
        save_records(s.out, records)
        print(
            f"{s.data} {posterior} K={length}: -ELBO {record['test_neg_elbo']:.2f}, "
            f"-ln p(x) {record['test_nll']:.2f} ± {record['test_nll_se']:.2f} nats, "
            f"{record['epoch_seconds']:.1f} s/epoch, eval {record['eval_seconds']:.0f} s",
            flush=True,
        )
    if s.markdown:
        print(table(records, s.data))


if __name__ == "__main__":
    main()

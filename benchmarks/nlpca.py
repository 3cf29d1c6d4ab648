"""Benchmark: nonlinear PCA against VAEs on digits (issue 7): compression and samples.

Three models with the same MLP trunk and Bernoulli decoder (``flowvi vae train`` defaults:
hidden 300-300 mirrored, Adam 1e-3, batches of 100, up to ``--epochs`` epochs with early
stopping on the validation loss after ``patience`` = 20 epochs, best parameters kept), at equal
latent size ``d``:

- ``nlpca``: the deterministic autoencoder of :mod:`flowvi.vae.pca` (reconstruction loss only);
  samples decode draws from a Gaussian fitted to its training codes;
- ``vae``: diagonal-Gaussian posterior, standard-normal prior (KL warm-up over 10 epochs);
- ``vae-maf``: the same with a learned prior, a 2-layer MAF over N(0, I) (:mod:`flowvi.vae.prior`).

Plus linear PCA (scikit-learn, fitted to the binary training images) for the pixel error only.

Scores on the 359 test images (nats per image; data: scikit-learn digits thresholded at 8/16,
the ``load_binary`` split of the seed):

- compression: ``recon`` = :math:`-\\ln p(x \\mid z)` at the model's code (``f(x)`` for nonlinear
  PCA; the posterior mean :math:`\\mu(x)` for a VAE, its most favourable single code), and
  ``pixel err`` = the fraction of pixels wrong after thresholding the decoded probabilities;
- the VAEs' test -ELBO and -ln p(x) (importance sampling, k = ``--eval-samples``);
- samples: ``--n-samples`` decoded means (pixel probabilities) judged by a logistic regression
  trained on all 1797 binarized digits with their labels (scikit-learn; its 5-fold
  cross-validated accuracy is recorded). ``confident`` = the fraction of samples whose top
  class probability is at least 0.9; ``score`` = :math:`\\exp E_x \\mathrm{KL}(p(y \\mid x) \\|
  p(y))`, the Inception score of Salimans et al. (2016) with this judge: between 1 and 10, high
  when samples are both recognisable and spread over the classes. Real test images give the
  reference values. These measure what a classifier can read in a sample, not likelihood: a
  model copying a few training digits would score well.

Timings are not the subject; each record keeps the training seconds (one thread, a machine
shared with other work: indicative only).

    python -m benchmarks.nlpca --markdown              # d = 2, 4, 8, 16; seeds 0-2
    python -m benchmarks.nlpca --smoke --markdown      # tiny budget, a minute

Results go to ``--out`` (default ``benchmarks/results/nlpca.jsonl``, JSON Lines), one record
per model × latent size × seed; records already there are skipped. The figure
(``benchmarks/results/nlpca_samples.png``) shows samples of the three models at
``--figure-latent`` (seed 0) beside real test images.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

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
from flowvi.app.vae import run_vae
from flowvi.io import WEIGHTS
from flowvi.plot import image_panels
from flowvi.vae.config import VAEConfig, load_splits, load_vae
from flowvi.vae.evaluate import log_likelihood, mean_and_se, mean_elbo
from flowvi.vae.pca import load_nlpca, reconstruction_metrics, vae_reconstruction

MODELS = {
    "nlpca": {"model": "nlpca"},
    "vae": {"posterior": "diagonal"},
    "vae-maf": {"posterior": "diagonal", "prior": "maf", "prior_length": 2},
}


def judge(seed: int = 0):
    """Logistic regression on all binarized digits (pixel level > 8) and its 5-fold CV
    accuracy."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    x, y = load_digits(return_X_y=True)  # the images of flowvi.data.digits, with labels
    x = (x / 16 > 0.5).astype(np.float64)
    clf = LogisticRegression(max_iter=5000, random_state=seed)
    accuracy = float(cross_val_score(clf, x, y, cv=5).mean())
    return clf.fit(x, y), accuracy


def sample_scores(clf, images: torch.Tensor) -> dict[str, float]:
    """``confident`` (top class probability >= 0.9), ``score`` (Inception score with the
    judge) and ``classes`` (exp of the entropy of the mean class distribution: the effective
    number of classes) of ``images: (n, 64)`` in [0, 1]."""
    p = np.clip(clf.predict_proba(images.double().cpu().numpy()), 1e-12, 1)
    py = p.mean(0)
    kl = (p * (np.log(p) - np.log(py))).sum(1).mean()
    return {
        "confident": float((p.max(1) >= 0.9).mean()),
        "score": float(np.exp(kl)),
        "classes": float(np.exp(-(py * np.log(py)).sum())),
    }


@torch.no_grad()
def samples_of(directory: Path, model_name: str, n: int, seed: int) -> torch.Tensor:
    """``n`` decoded means of a trained run: prior draws (VAE) or code-Gaussian draws."""
    torch.manual_seed(seed)
    if model_name == "nlpca":
        model, _ = load_nlpca(directory)
        return model.sample(n)
    model, _ = load_vae(directory)
    return model.decoder(model.prior().sample((n,))).base_dist.probs


@torch.no_grad()
def run_one(s: argparse.Namespace, model_name: str, d: int, seed: int, clf) -> dict:
    config = VAEConfig(latent=d, epochs=s.epochs, seed=seed, **MODELS[model_name])
    directory = s.runs / f"{model_name}-d{d}-s{seed}-e{s.epochs}"
    start = time.perf_counter()
    if not (directory / WEIGHTS).exists():
        with torch.enable_grad():
            run_vae(
                config,
                directory,
                resume=(directory / "checkpoint.safetensors").exists(),
                progress=False,
            )
    seconds = time.perf_counter() - start
    splits = load_splits(config)
    test, train = splits.test.float(), splits.train.float()
    record = {"model": model_name, "latent": d, "seed": seed, "epochs_max": s.epochs}
    if model_name == "nlpca":
        model, _ = load_nlpca(directory)

        def reconstruct(x):
            out = model.decoder(model.encode(x))
            return out.log_prob(x), out.base_dist.probs

    else:
        model, _ = load_vae(directory)
        model.eval()

        def reconstruct(x):
            return vae_reconstruction(model, x)

    log_lik, probs = reconstruct(test)
    record |= reconstruction_metrics(log_lik, test, probs)
    record["train_reconstruction"] = float(-reconstruct(train)[0].double().mean())
    if model_name != "nlpca":
        torch.manual_seed(0)
        record["test_neg_elbo"] = mean_and_se(-mean_elbo(model, test))[0]
        record["test_nll"] = mean_and_se(
            -log_likelihood(model, test, samples=s.eval_samples, chunk=500)
        )[0]
    record |= {
        f"sample_{k}": v
        for k, v in sample_scores(clf, samples_of(directory, model_name, s.n_samples, seed)).items()
    }
    training = json.loads((directory / "train.json").read_text())
    record |= {
        "best_epoch": training["best_epoch"],
        "epochs": training["epochs"],
        "train_seconds": training["train_seconds_this_session"],
        "wall_seconds": seconds,
    }
    return finite(record | provenance())


def linear_pca_pixel_error(d: int, seed: int) -> float:
    """Pixel error of linear PCA with ``d`` components on the same binary split."""
    from sklearn.decomposition import PCA

    splits = load_splits(VAEConfig(seed=seed))
    pca = PCA(n_components=d, random_state=seed).fit(splits.train.numpy())
    recon = pca.inverse_transform(pca.transform(splits.test.numpy()))
    return float(((recon > 0.5) != (splits.test.numpy() > 0.5)).mean())


def figure(s: argparse.Namespace, d: int) -> Path:
    config = VAEConfig(seed=0)
    splits = load_splits(config)
    panels = {"test images": splits.test[:64]}
    names = {"vae": "VAE, N(0, I) prior", "vae-maf": "VAE, MAF prior", "nlpca": "nonlinear PCA"}
    for name, title in names.items():
        directory = s.runs / f"{name}-d{d}-s0-e{s.epochs}"
        panels[title] = samples_of(directory, name, 64, 0)
    return image_panels(
        panels,
        s.out.with_name(f"{s.out.stem}_samples.png"),
        shape=splits.image_shape,
        title=f"digits, latent size d = {d}: decoded means (nonlinear PCA: draws from a "
        "Gaussian fitted to its training codes)",
    )


def markdown(records: list[dict], accuracy: float, real: dict) -> str:
    lines = [
        f"Judge: logistic regression, 5-fold CV accuracy {accuracy:.3f}; real test images: "
        f"confident {real['confident']:.2f}, score {real['score']:.2f}, "
        f"classes {real['classes']:.2f}.",
        "",
        "| d | model | train recon | test recon | pixel err | test -ELBO | test -ln p(x) | "
        "confident | score | classes | best epoch | seeds |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for d in sorted({r["latent"] for r in records}):
        for name in (*MODELS, "pca"):
            group = [r for r in records if r["latent"] == d and r["model"] == name]
            if not group:
                continue
            cells = [
                fmt(median(group, "train_reconstruction"), ".2f"),
                fmt(median(group, "test_reconstruction"), ".2f"),
                fmt(median(group, "test_pixel_error"), ".3f"),
                fmt(median(group, "test_neg_elbo"), ".2f"),
                fmt(median(group, "test_nll"), ".2f"),
                fmt(median(group, "sample_confident"), ".2f"),
                fmt(median(group, "sample_score"), ".2f"),
                fmt(median(group, "sample_classes"), ".2f"),
                fmt(median(group, "best_epoch"), ".0f"),
            ]
            lines.append(f"| {d} | {name} | " + " | ".join(cells) + f" | {len(group)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latents", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--eval-samples", type=int, default=1000)
    parser.add_argument("--n-samples", type=int, default=1000)
    parser.add_argument("--figure-latent", type=int, default=8)
    parser.add_argument("--runs", type=Path, default=Path("runs/bench-nlpca"))
    parser.add_argument("--out", type=Path, default=RESULTS / "nlpca.jsonl")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="d = 2, one seed, 3 epochs")
    s = parser.parse_args()
    if s.smoke:
        s.latents, s.seeds, s.epochs, s.eval_samples, s.n_samples = [2], [0], 3, 50, 100
        s.out, s.runs = Path("/tmp/flowvi-nlpca-smoke.jsonl"), Path("/tmp/flowvi-nlpca-smoke")
        s.figure_latent = 2
    one_thread()
    clf, accuracy = judge()
    real = sample_scores(clf, load_splits(VAEConfig(seed=0)).test)
    records = load_records(s.out)
    done = {(r["model"], r["latent"], r["seed"], r.get("epochs_max")) for r in records}
    for seed in s.seeds:
        for d in s.latents:
            for name in MODELS:
                if (name, d, seed, s.epochs) in done:
                    continue
                record = run_one(s, name, d, seed, clf)
                records.append(record)
                save_records(s.out, records)
                print(
                    f"{name} d={d} seed={seed}: recon {record['test_reconstruction']:.2f}, "
                    f"confident {record['sample_confident']:.2f}",
                    flush=True,
                )
            if ("pca", d, seed, None) not in {
                (r["model"], r["latent"], r["seed"], r.get("epochs_max")) for r in records
            }:
                records.append(
                    {
                        "model": "pca",
                        "latent": d,
                        "seed": seed,
                        "test_pixel_error": linear_pca_pixel_error(d, seed),
                    }
                    | provenance()
                )
                save_records(s.out, records)
    if s.figure_latent in s.latents and 0 in s.seeds:
        print("figure:", figure(s, s.figure_latent))
    mine = [r for r in records if r.get("epochs_max") in (s.epochs, None)]
    if s.markdown:
        print(markdown(mine, accuracy, real))
    if math.isnan(accuracy):
        raise SystemExit("the judge did not train")


if __name__ == "__main__":
    main()

"""VAE posteriors in a 2-D latent space (Kingma et al. 2016, Figure 1): VAEs on digits with a
planar K = 10, a diagonal and an IAF K = 4 posterior; for four test images the true posterior
p(z|x) on a grid beside each q(z|x), drawn exactly.

    python docs/gallery/vae_latent2d.py           # 60 epochs per model, as the committed picture
    python docs/gallery/vae_latent2d.py --quick   # 2 epochs and k = 100: checks that it runs
"""

from __future__ import annotations

import argparse
import sys

from flowvi.app.cli import main

POSTERIORS = {"planar": "--length 10", "diagonal": "", "iaf": "--length 4"}


def commands(out: str, *, quick: bool) -> list[list[str]]:
    """Three ``flowvi vae train`` command lines, then the ``flowvi vae eval`` that draws them."""
    budget = "--epochs 2 --warmup 1" if quick else "--epochs 60 --warmup 10"
    train = "vae train --data digits --latent 2 --patience 20 --seed 0"
    trains = [
        f"{train} --posterior {name} {options} {budget} --out {out}/{name}".split()
        for name, options in POSTERIORS.items()
    ]
    samples = "--samples 100" if quick else ""
    evaluate = f"vae eval {out}/planar --compare {out}/diagonal {out}/iaf {samples}"
    return [*trains, evaluate.split()]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/gallery/latent2d", help="parent of the runs")
    parser.add_argument("--quick", action="store_true", help="a tiny training budget")
    args = parser.parse_args()
    for argv in commands(args.out, quick=args.quick):
        if status := main(argv):
            sys.exit(status)
    print(f"picture: {args.out}/planar/posterior2d.png")

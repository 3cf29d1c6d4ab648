"""A density fit: a 5-layer neural spline flow fitted to two moons by maximum likelihood, drawn
as data, model density (exact on a grid) and samples.

    python docs/gallery/density.py                # the fit of docs/gallery/density.png
    python docs/gallery/density.py --quick        # 300 iterations on 2000 points
"""

from __future__ import annotations

import argparse
import sys

from flowvi.app.cli import main


def arguments(out: str, *, quick: bool) -> list[str]:
    """The ``flowvi density`` command line."""
    budget = "--iters 300 --n-train 2000" if quick else ""
    return f"density --data moons --flow nsf --length 5 --seed 0 --out {out} {budget}".split()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/gallery/density", help="run directory")
    parser.add_argument("--quick", action="store_true", help="a tiny training budget")
    args = parser.parse_args()
    status = main(arguments(args.out, quick=args.quick))
    print(f"picture: {args.out}/density.png")
    sys.exit(status)

"""Rezende & Mohamed (2015), Figure 1: a unit Gaussian and a uniform box after K = 1, 2, 10
planar and radial layers, each density exact on a grid.

    python docs/gallery/figure1.py                # the picture of docs/figure1.png
    python docs/gallery/figure1.py --quick        # a coarse grid, seconds
"""

from __future__ import annotations

import argparse
import sys

from flowvi.app.cli import main


def arguments(out: str, *, quick: bool) -> list[str]:
    """The ``flowvi show`` command line (random layers from seed 3, as the committed picture)."""
    return ["show", "--seed", "3", "--out", out, *(["--resolution", "60"] if quick else [])]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/gallery/figure1", help="run directory")
    parser.add_argument("--quick", action="store_true", help="a coarse grid")
    args = parser.parse_args()
    status = main(arguments(args.out, quick=args.quick))
    print(f"picture: {args.out}/figure1.png")
    sys.exit(status)

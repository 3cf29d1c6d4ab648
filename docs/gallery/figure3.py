"""Rezende & Mohamed (2015), Figure 3, the K = 32 column: planar K = 32 fitted to each of the
energies U1–U4 by the annealed free energy, drawn as true density, fitted density and samples.

    python docs/gallery/figure3.py                # the full fits (a few minutes on 2 cores)
    python docs/gallery/figure3.py --quick        # 300 iterations per energy, a rough picture
"""

from __future__ import annotations

import argparse
import sys

from flowvi.app.cli import main


def arguments(out: str, *, quick: bool) -> list[str]:
    """The ``flowvi fit`` command line: its defaults are this figure's column."""
    budget = "--iters 300 --samples 5000" if quick else ""
    return (
        f"fit --target U1 U2 U3 U4 --flow planar --length 32 --seed 0 --out {out} {budget}".split()
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/gallery/figure3", help="run directory")
    parser.add_argument("--quick", action="store_true", help="a tiny training budget")
    args = parser.parse_args()
    status = main(arguments(args.out, quick=args.quick))
    print(f"picture: {args.out}/fit.png")
    sys.exit(status)

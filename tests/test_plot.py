"""flowvi.plot: importing it leaves matplotlib's backend alone; figures save without a display."""

from __future__ import annotations

import os
import subprocess
import sys


def _python(code: str) -> str:
    """Run ``code`` in a fresh interpreter without a display or MPLBACKEND; its stdout."""
    hidden = ("DISPLAY", "WAYLAND_DISPLAY", "MPLBACKEND")
    env = {k: v for k, v in os.environ.items() if k not in hidden}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_importing_flowvi_plot_keeps_the_backend_a_user_chose():
    code = (
        "import matplotlib\n"
        "matplotlib.use('svg')\n"
        "import flowvi, flowvi.plot\n"
        "print(matplotlib.get_backend(), matplotlib.rcParams['backend'])\n"
    )
    assert _python(code) == "svg svg"


def test_figures_save_without_a_display(tmp_path):
    path = tmp_path / "trace.png"
    code = (
        "import torch, matplotlib\n"
        "import flowvi.plot\n"
        f"flowvi.plot.trace_figure({{'a': torch.linspace(3, 1, 50)}}, {str(path)!r})\n"
        "print(matplotlib.get_backend().lower())\n"
    )
    assert _python(code) == "agg"  # matplotlib's own fallback without a display
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

"""The ``flowvi fit`` command end to end, and its refusals."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import flowvi
from flowvi.app.cli import main

TINY = ["--length", "2", "--iters", "30", "--samples", "2000", "--quiet"]


def test_tiny_fit_end_to_end_and_load(tmp_path):
    out = tmp_path / "run"
    assert main(["fit", "--target", "U1", *TINY, "--out", str(out)]) == 0
    for name in ["config.json", "model.safetensors", "metrics.json", "fit.png", "trace.csv"]:
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert config["target"] == "U1" and config["length"] == 2 and config["iters"] == 30
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["kl"] == pytest.approx(metrics["free_energy"] + metrics["log_Z"])
    assert metrics["log_Z"] == pytest.approx(1.8775, abs=1e-3)
    rows = list(csv.DictReader((out / "trace.csv").open()))
    assert len(rows) == 30 and float(rows[0]["beta"]) == pytest.approx(0.01)

    flow = flowvi.load(out)
    assert isinstance(flow, torch.distributions.Distribution)
    x, log_q = flow.rsample_and_log_prob((100,))
    torch.testing.assert_close(flow.log_prob(x), log_q, atol=1e-4, rtol=1e-4)
    weights = load_file(out / "model.safetensors")
    for name, value in flow.state_dict().items():
        assert torch.equal(weights[name], value)


def test_default_multi_target_layout(tmp_path):
    out = tmp_path / "runs"
    assert main(["fit", "--target", "U1", "U3", *TINY, "--out", str(out)]) == 0
    assert (out / "fit.png").is_file()
    assert set(json.loads((out / "metrics.json").read_text())) == {"U1", "U3"}
    assert json.loads((out / "U3" / "config.json").read_text())["confine"] is True
    flowvi.load(out / "U3")
    with pytest.raises(ValueError, match="U1") as refused:  # a RunError naming the runs
        flowvi.load(out)
    assert isinstance(refused.value, FileNotFoundError)


def test_resume_from_the_cli_matches_an_uninterrupted_run(tmp_path):
    args = [
        "fit",
        "--target",
        "U2",
        "--length",
        "2",
        "--samples",
        "500",
        "--quiet",
        "--checkpoint-every",
        "7",
        "--anneal",  # β's schedule is a share of --iters: extending the run would stretch it
        "0",
    ]
    assert main([*args, "--iters", "40", "--out", str(tmp_path / "full")]) == 0
    assert main([*args, "--iters", "25", "--out", str(tmp_path / "cut")]) == 0
    assert main(["fit", "--resume", str(tmp_path / "cut"), "--iters", "40", "--quiet"]) == 0
    full = load_file(tmp_path / "full" / "model.safetensors")
    resumed = load_file(tmp_path / "cut" / "model.safetensors")
    assert full.keys() == resumed.keys()
    for name in full:
        assert torch.equal(full[name], resumed[name]), name


def test_user_target_module_function(tmp_path, monkeypatch):
    (tmp_path / "mytarget.py").write_text(
        "import torch\ndef logp(z):\n    return -0.5 * ((z - 1.0) ** 2).sum(-1)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "run"
    code = main(
        [
            "fit",
            "--target",
            "mytarget:logp",
            "--dim",
            "3",
            "--flow",
            "affine",
            "--length",
            "1",
            "--iters",
            "300",
            "--lr",
            "0.05",
            "--anneal",
            "0",
            "--samples",
            "2000",
            "--quiet",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["kl"] is None  # no ln Z for a 3-D user density
    mean = flowvi.load(out).sample((4000,)).mean(0)
    torch.testing.assert_close(mean, torch.ones(3), atol=0.2, rtol=0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target", "U9"], "U1"),
        (["--flow", "nope"], "planar"),
        (["--length", "0"], "length"),
        (["--lr", "0"], "learning rate"),
        (["--lr=-1e-3"], "learning rate"),
        (["--iters", "0"], "iters"),
        (["--target", "U1", "--dim", "3"], "2-dimensional"),
        (["--optimizer", "sgdx"], "rmsprop"),
        (["--dtype", "float16"], "float64"),
        (["--beta0", "0"], "beta0"),
        (["--target", "no_such_module:f", "--dim", "2"], "cannot import"),
        (["--target", "math:sin"], "dimension"),
    ],
)
def test_bad_settings_are_refused_before_any_work(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    assert main(["fit", *args, "--quiet", "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_existing_run_is_not_overwritten(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["fit", "--target", "U1", *TINY, "--out", str(out)]) == 0
    before = (out / "model.safetensors").read_bytes()
    assert main(["fit", "--target", "U1", *TINY, "--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert (out / "model.safetensors").read_bytes() == before


def test_nan_target_stops_with_a_message(tmp_path, monkeypatch, capsys):
    (tmp_path / "badtarget.py").write_text(
        "import torch\n"
        "def logp(z):\n"
        "    return torch.where(z[:, 0] > -100, float('nan'), -0.5 * (z ** 2).sum(-1))\n"
    )
    monkeypatch.chdir(tmp_path)  # module:function is found in the current directory
    out = tmp_path / "run"
    assert main(["fit", "--target", "badtarget:logp", "--dim", "2", *TINY, "--out", str(out)]) == 3
    err = capsys.readouterr().err
    assert "iteration 0" in err and "target log density: 256 of 256" in err
    assert (out / "checkpoint.safetensors").is_file()


def test_a_few_non_finite_samples_are_dropped_and_recorded(tmp_path, monkeypatch):
    (tmp_path / "edge.py").write_text(
        "import torch\n"
        "def logp(z):\n"
        "    rare = (z[:, 0] * 1e4).floor() % 50 == 0  # about 2% of the points, everywhere\n"
        "    return torch.where(rare, -float('inf'), -0.5 * (z ** 2).sum(-1))\n"
    )
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    with pytest.warns(RuntimeWarning, match="non-finite"):
        assert main(["fit", "--target", "edge:logp", "--dim", "2", *TINY, "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    rows = list(csv.DictReader((out / "trace.csv").open()))
    assert metrics["dropped_samples"] == sum(int(r["dropped"]) for r in rows) > 0


def test_console_entry_point():
    result = subprocess.run(
        [sys.executable, "-m", "flowvi", "fit", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0 and "--target" in result.stdout


@pytest.mark.parametrize("flow", ["realnvp", "nice", "maf", "iaf", "nsf", "nsf-ar"])
def test_networked_flows_fit_save_load_and_resume(tmp_path, flow):
    out = tmp_path / "run"
    args = [
        "fit",
        "--target",
        "banana",
        "--flow",
        flow,
        "--length",
        "2",
        "--hidden",
        "8,8",
        "--samples",
        "500",
        "--quiet",
        "--checkpoint-every",
        "5",
    ]
    assert main([*args, "--iters", "10", "--out", str(out)]) == 0
    assert main(["fit", "--resume", str(out), "--iters", "15", "--quiet"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["iters"] == 15 and config["hidden"] == [8, 8]
    loaded = flowvi.load(out)
    x = loaded.sample((50,))
    assert torch.isfinite(loaded.log_prob(x)).all()
    assert len(loaded.layers) == 2 and loaded.layers[0].spec["hidden"] == [8, 8]


def test_bad_hidden_sizes_are_refused(tmp_path, capsys):
    assert (
        main(
            ["fit", "--flow", "realnvp", "--hidden", "8,0", "--quiet", "--out", str(tmp_path / "r")]
        )
        == 2
    )
    assert "hidden" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flow", "option", "value", "spec"),
    [
        ("realnvp", "--mask", "alternate", "mask"),
        ("maf", "--order", "random", "order"),
    ],
)
def test_fit_takes_the_mask_and_order_of_networked_layers(tmp_path, flow, option, value, spec):
    out = tmp_path / "run"
    args = ["fit", "--target", "gaussian", "--flow", flow, "--length", "2", "--hidden", "8"]
    args += [option, value, "--iters", "5", "--samples", "200", "--quiet", "--out", str(out)]
    assert main(args) == 0
    assert json.loads((out / "config.json").read_text())[spec] == value
    loaded = flowvi.load(out)
    assert all(layer.spec[spec] == value for layer in loaded.layers)


def test_fit_refuses_an_unknown_mask(tmp_path, capsys):
    argv = ["fit", "--flow", "realnvp", "--mask", "stripes", "--out", str(tmp_path / "r")]
    assert main(argv) == 2  # argparse's refusal, returned as main's other codes are
    assert "--mask" in capsys.readouterr().err
    assert main(["--version"]) == 0 and "flowvi" in capsys.readouterr().out


def test_threads_option_sets_torch_threads_and_refuses_negative(tmp_path, capsys, monkeypatch):
    before = torch.get_num_threads()
    seen = []
    (tmp_path / "probe.py").write_text(
        "import torch\nseen = []\n"
        "def logp(z):\n    seen.append(torch.get_num_threads())\n    return -0.5 * (z**2).sum(-1)\n"
    )
    monkeypatch.chdir(tmp_path)
    try:
        for threads in (2, 1):
            argv = ["fit", "--target", "probe:logp", "--dim", "2", "--flow", "affine"]
            argv += ["--iters", "3", "--samples", "100", "--quiet", "--out", f"run{threads}"]
            assert main([*argv, "--threads", str(threads)]) == 0
            import probe

            seen.append(set(probe.seen[1:]))
            probe.seen.clear()
        assert seen == [{2}, {1}]  # the whole command, evaluation included
        assert torch.get_num_threads() == before  # and torch's setting is restored
        assert main(["density", "--threads", "-1", "--out", str(tmp_path / "d")]) == 2
        assert "--threads" in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)
        flowvi.set_num_threads(1)

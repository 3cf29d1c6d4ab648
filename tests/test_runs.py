"""Runs that lose nothing: ``kill -9`` at random points, Ctrl-C, and a table of bad inputs.

Every kill leaves a run that ``flowvi.load`` loads or refuses with a ``RunError``, and that
``--resume`` finishes bitwise equal to an uninterrupted run; every bad input over every command
is refused with exit code 2, a message and no traceback, before any run directory changes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import flowvi
from flowvi.app.cli import main
from flowvi.io import STATES, RunError, read_status

FIT = ["fit", "--target", "U1", "--length", "2", "--checkpoint-every", "50"]
FIT += ["--samples", "500", "--quiet"]
DENSITY = ["density", "--data", "moons", "--flow", "realnvp", "--length", "2", "--hidden", "8"]
DENSITY += ["--n-train", "300", "--n-valid", "100", "--n-test", "100", "--batch-size", "64"]
DENSITY += ["--valid-every", "25", "--checkpoint-every", "25", "--quiet"]


# ----------------------------------------------------------------------------- kill -9


def _start(argv: list[str]) -> subprocess.Popen:
    """``python -m flowvi argv`` in a fresh process, silent (a fresh interpreter, not a fork:
    forking a process whose torch and tqdm threads hold locks can deadlock the child)."""
    return subprocess.Popen(
        [sys.executable, "-m", "flowvi", *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _run_killed(argv: list[str], directory: Path, rng: random.Random, *, early: bool) -> None:
    """Run ``flowvi argv`` in a child process and SIGKILL it: right after its config.json
    appears (``early``: before its first checkpoint), or at a random time after its next
    checkpoint (mid-run)."""
    config, checkpoint = directory / "config.json", directory / "checkpoint.safetensors"

    def stamp(path: Path) -> int | None:
        return path.stat().st_mtime_ns if path.exists() else None

    watched = config if early else checkpoint
    before = stamp(watched)
    process = _start(argv)
    try:
        deadline = time.monotonic() + 60
        while process.poll() is None and time.monotonic() < deadline:
            if stamp(watched) != before:
                break
            time.sleep(0.001)
        if not early:
            time.sleep(rng.uniform(0.0, 0.05))
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=60)


def _run(argv: list[str]) -> None:
    process = _start(argv)
    assert process.wait(timeout=300) == 0, argv


def _loads_or_refuses(directory: Path) -> None:
    """``flowvi.load`` of a killed run gives a flow or a RunError, never another exception."""
    if not (directory / "config.json").exists():
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # an unfinished run: its last checkpoint
        try:
            flow = flowvi.load(directory)
        except RunError:
            return
    assert torch.isfinite(flow.log_prob(flow.sample((5,)))).all()


def _resume_or_start(argv: list[str], directory: Path) -> list[str]:
    """The command that continues a killed run (a fresh start if it never got a config)."""
    if (directory / "config.json").exists():
        return [argv[0], "--resume", str(directory), "--quiet"]
    return [*argv, "--out", str(directory)]


def _same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    for name, value in wa.items():
        assert torch.equal(value, wb[name]), name


@pytest.mark.parametrize(
    ("argv", "first", "extended"),
    [(FIT, 300, 400), (DENSITY, 150, 250)],
    ids=["fit", "density"],
)
def test_killed_runs_resume_bitwise_equal_to_uninterrupted_ones(tmp_path, argv, first, extended):
    rng = random.Random(20)
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    assert main([*argv, "--iters", str(first), "--out", str(reference)]) == 0
    first_reference = tmp_path / "first"
    shutil.copytree(reference, first_reference)
    assert main([argv[0], "--resume", str(reference), "--iters", str(extended), "--quiet"]) == 0

    start = [*argv, "--iters", str(first)]
    _run_killed([*start, "--out", str(killed)], killed, rng, early=True)  # before a checkpoint
    _loads_or_refuses(killed)
    for _ in range(2):  # twice mid-run
        _run_killed(_resume_or_start(start, killed), killed, rng, early=False)
        _loads_or_refuses(killed)
    _run(_resume_or_start(start, killed))
    _same_weights(killed, first_reference)
    more = [argv[0], "--resume", str(killed), "--iters", str(extended), "--quiet"]
    _run_killed(more, killed, rng, early=False)  # while extending a finished run
    _loads_or_refuses(killed)
    _run([argv[0], "--resume", str(killed), "--iters", str(extended), "--quiet"])
    _same_weights(killed, reference)
    assert json.loads((killed / "config.json").read_text())["iters"] == extended


# ----------------------------------------------------------------------------- Ctrl-C


def test_ctrl_c_checkpoints_and_resumes_bitwise(tmp_path, monkeypatch, capsys):
    import flowvi.fitting

    full, cut = tmp_path / "full", tmp_path / "cut"
    argv = [*FIT, "--iters", "120"]
    assert main([*argv, "--out", str(full)]) == 0
    original = flowvi.fitting.fit

    def interrupted_fit(flow, target, **kwargs):
        log_prob = target.log_prob
        calls = []

        def pressing_ctrl_c(z):
            calls.append(1)
            if len(calls) == 70:
                os.kill(os.getpid(), signal.SIGINT)
            return log_prob(z)

        monkeypatch.setattr(target, "log_prob", pressing_ctrl_c)
        return original(flow, target, **kwargs)

    monkeypatch.setattr("flowvi.app.fit.fit", interrupted_fit)
    capsys.readouterr()
    assert main([*argv, "--out", str(cut)]) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "interrupted after iteration" in err and f"flowvi fit --resume {cut}" in err
    monkeypatch.setattr("flowvi.app.fit.fit", original)
    status = read_status(cut)
    assert status["state"] == "interrupted" and 0 < status["iteration"] < 120
    with pytest.warns(UserWarning, match=r"unfinished run: loaded the last checkpoint .*iteration"):
        assert torch.isfinite(flowvi.load(cut).sample((3,))).all()
    assert main(["fit", "--resume", str(cut), "--quiet"]) == 0
    _same_weights(cut, full)
    assert read_status(cut)["state"] == "finished"


# ----------------------------------------------------------------------------- created, unstarted


def test_a_run_stopped_before_its_first_checkpoint_resumes_from_zero(tmp_path, capsys):
    full, unstarted = tmp_path / "full", tmp_path / "unstarted"
    argv = [*FIT, "--iters", "60"]
    assert main([*argv, "--out", str(full)]) == 0
    unstarted.mkdir()
    shutil.copy(full / "config.json", unstarted / "config.json")  # as at creation
    with pytest.raises(RunError, match="has not saved its model yet"):
        flowvi.load(unstarted)
    capsys.readouterr()
    assert main([*argv, "--out", str(unstarted)]) == 2
    assert f"continue it with --resume {unstarted}" in capsys.readouterr().err
    assert main(["fit", "--resume", str(unstarted), "--quiet"]) == 0
    _same_weights(unstarted, full)


# ----------------------------------------------------------------------------- states


def test_a_run_records_its_state_atomically_at_every_stage(runs, tmp_path, capsys):
    """created (config written) -> training -> finished | interrupted | failed, in status.json;
    a run killed at once is created or training, and its resume finishes it."""
    for name in ("fit", "density", "vae", "nlpca", "cavi"):
        status = read_status(runs / name)
        assert status["state"] == "finished", name
        assert set(status) >= {"state", "time"}
    killed = tmp_path / "killed"
    argv = [*FIT, "--iters", "100"]
    _run_killed([*argv, "--out", str(killed)], killed, random.Random(0), early=True)
    assert read_status(killed)["state"] in STATES[:2]  # created or training
    assert main(["fit", "--resume", str(killed), "--quiet"]) == 0
    assert read_status(killed)["state"] == "finished"
    # a target whose log density is NaN everywhere: the run stops and says why
    (tmp_path / "broken.py").write_text(
        "import torch\n\ndef log_p(z):\n    return torch.full(z.shape[:-1], float('nan'))\n"
    )
    failed = tmp_path / "failed"
    target = f"{tmp_path / 'broken.py'}:log_p"
    code = main(["fit", "--target", target, "--dim", "2", "--iters", "50", "--quiet",
                 "--out", str(failed)])  # fmt: skip
    assert code == 3
    status = read_status(failed)
    assert status["state"] == "failed" and "NonFiniteLossError" in status["error"]
    assert not list(failed.glob(".*.tmp"))  # every state written whole, no temporary left


# ----------------------------------------------------------------------------- load of every kind


def test_load_gives_the_model_of_every_kind_of_run(runs):
    from flowvi.vae.model import VAE
    from flowvi.vae.pca import NonlinearPCA

    for name in ("fit", "density"):
        flow = flowvi.load(runs / name)
        assert isinstance(flow, flowvi.NormalizingFlow) and not flow.training
    vae = flowvi.load(runs / "vae")
    assert isinstance(vae, VAE) and not vae.training
    nlpca = flowvi.load(runs / "nlpca")
    assert isinstance(nlpca, NonlinearPCA) and not nlpca.training
    with pytest.raises(RunError, match="no model entry"):
        flowvi.load(runs / "cavi")


# ----------------------------------------------------------------------------- bad inputs


def _tree_hash(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(str(path.relative_to(root)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One finished tiny run of each kind, and a plain file, made once."""
    root = tmp_path_factory.mktemp("runs")
    made = [
        ["fit", "--target", "U1", "--length", "2", "--iters", "20", "--checkpoint-every", "10"],
        ["density", *DENSITY[1:], "--iters", "20"],
        ["vae", "train", "--latent", "2", "--hidden", "16", "--length", "2"],
        ["vae", "train", "--model", "nlpca", "--latent", "2", "--hidden", "16"],
        ["cavi", "--n", "100", "--n-test", "50", "--restarts", "1", "--k", "2"],
    ]
    names = ["fit", "density", "vae", "nlpca", "cavi"]
    for name, argv in zip(names, made, strict=True):
        if argv[0] == "vae":
            argv = [*argv, "--batch-size", "400", "--epochs", "2", "--eval-samples", "10"]
        if argv[0] == "fit":
            argv = [*argv, "--samples", "200"]
        assert main([*argv, "--quiet", "--out", str(root / name)]) == 0, name
    (root / "file.txt").write_text("not a directory\n")
    return root


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _foreign_checkpoint(directory: Path) -> None:
    save_file(
        {"model/other": torch.zeros(3), "rng/cpu": torch.get_rng_state()},
        directory / "checkpoint.safetensors",
        metadata={"iteration": "10", "param_groups": "[]"},
    )


DAMAGES = {
    "empty-config": lambda d: (d / "config.json").write_text("{}"),
    "truncated-config": lambda d: _truncate(d / "config.json"),
    "list-config": lambda d: (d / "config.json").write_text("[1, 2]"),
    "string-config": lambda d: (d / "config.json").write_text('"fit"'),
    "binary-config": lambda d: (d / "config.json").write_bytes(b"\xff\xfe\x00"),
    "truncated-checkpoint": lambda d: _truncate(d / "checkpoint.safetensors"),
    "garbage-checkpoint": lambda d: (d / "checkpoint.safetensors").write_bytes(b"\x00" * 64),
    "foreign-checkpoint": _foreign_checkpoint,
    "no-config": lambda d: (d / "config.json").unlink(),
    "truncated-weights": lambda d: _truncate(d / "model.safetensors"),
}

# (argv with {fit} {density} {vae} {nlpca} {cavi} {file} {out} {damaged}, message fragment,
#  [the run copied to {damaged}, its damage])
CASES: list[tuple] = [
    # ---- resume: the wrong kind of run, a damaged config or checkpoint, fewer iterations
    (["fit", "--resume", "{density}"], "is a 'density' run"),
    (["fit", "--resume", "{vae}"], "is a 'vae' run"),
    (["fit", "--resume", "{nlpca}"], "is a 'nlpca' run"),
    (["fit", "--resume", "{cavi}"], "is a 'cavi' run"),
    (["density", "--resume", "{fit}"], "is a 'fit' run"),
    (["density", "--resume", "{vae}"], "is a 'vae' run"),
    (["density", "--resume", "{cavi}"], "is a 'cavi' run"),
    (["vae", "train", "--resume", "{fit}"], "is a 'fit' run"),
    (["vae", "train", "--resume", "{density}"], "is a 'density' run"),
    (["vae", "train", "--resume", "{cavi}"], "is a 'cavi' run"),
    (["fit", "--resume", "{damaged}"], "known kind", "fit", "empty-config"),
    (["fit", "--resume", "{damaged}"], "not valid JSON", "fit", "truncated-config"),
    (["fit", "--resume", "{damaged}"], "holds a JSON list", "fit", "list-config"),
    (["fit", "--resume", "{damaged}"], "holds a JSON str", "fit", "string-config"),
    (["fit", "--resume", "{damaged}"], "not valid JSON", "fit", "binary-config"),
    (["fit", "--resume", "{damaged}"], "not a readable", "fit", "truncated-checkpoint"),
    (["fit", "--resume", "{damaged}"], "not a readable", "fit", "garbage-checkpoint"),
    (["fit", "--resume", "{damaged}"], "state of this run's model", "fit", "foreign-checkpoint"),
    (["fit", "--resume", "{damaged}"], "holds no flowvi run", "fit", "no-config"),
    (["density", "--resume", "{damaged}"], "known kind", "density", "empty-config"),
    (["density", "--resume", "{damaged}"], "not valid JSON", "density", "truncated-config"),
    (["density", "--resume", "{damaged}"], "not a readable", "density", "truncated-checkpoint"),
    (["density", "--resume", "{damaged}"], "state of this run", "density", "foreign-checkpoint"),
    (["vae", "train", "--resume", "{damaged}"], "known kind", "vae", "empty-config"),
    (["vae", "train", "--resume", "{damaged}"], "not valid JSON", "vae", "truncated-config"),
    (["vae", "train", "--resume", "{damaged}"], "not a readable", "vae", "truncated-checkpoint"),
    (["vae", "train", "--resume", "{damaged}"], "state of this", "vae", "foreign-checkpoint"),
    (["vae", "train", "--resume", "{damaged}"], "not a readable", "nlpca", "garbage-checkpoint"),
    (["fit", "--resume", "{fit}", "--iters", "5"], "below the 20 iterations already done"),
    (["density", "--resume", "{density}", "--iters", "10"], "below the 20 iterations"),
    (["fit", "--resume", "{fit}", "--lr", "0.1"], "only --iters"),
    (["density", "--resume", "{density}", "--flow", "maf"], "only --iters"),
    (["vae", "train", "--resume", "{vae}", "--latent", "3"], "only --epochs"),
    (["vae", "train", "--resume", "{vae}", "--epochs", "1"], "below the 2 epochs"),
    (["vae", "train", "--resume", "{nlpca}", "--epochs", "1"], "below the 2 epochs"),
    (["fit", "--resume", "{out}"], "holds no flowvi run"),
    (["density", "--resume", "{out}"], "holds no flowvi run"),
    (["vae", "train", "--resume", "{out}"], "holds no flowvi run"),
    (["fit", "--resume", "{file}"], "holds no flowvi run"),
    # ---- vae eval and gap of runs that are not VAEs
    (["vae", "eval", "{fit}"], "is a 'fit' run"),
    (["vae", "eval", "{density}"], "is a 'density' run"),
    (["vae", "eval", "{cavi}"], "is a 'cavi' run"),
    (["vae", "eval", "{out}"], "holds no flowvi run"),
    (["vae", "eval", "{damaged}"], "not valid JSON", "vae", "truncated-config"),
    (["vae", "eval", "{damaged}"], "not a readable", "vae", "truncated-weights"),
    (["vae", "eval", "{damaged}"], "not a readable", "nlpca", "truncated-weights"),
    (["vae", "eval", "{vae}", "--samples", "0"], "--samples"),
    (["vae", "eval", "{vae}", "--chunk", "0"], "--chunk"),
    (["vae", "gap", "{fit}"], "is a 'fit' run"),
    (["vae", "gap", "{density}"], "is a 'density' run"),
    (["vae", "gap", "{nlpca}"], "nonlinear PCA"),
    (["vae", "gap", "{out}"], "holds no finished"),
    (["vae", "gap", "{vae}", "--n", "0"], "--n"),
    # ---- an existing run is never overwritten; --out a file or under one
    (["fit", "--out", "{fit}"], "already holds a run"),
    (["fit", "--target", "U1", "--out", "{fit}"], "already holds a run"),
    (["density", "--out", "{density}"], "already holds a run"),
    (["vae", "train", "--out", "{vae}"], "already holds a run"),
    (["cavi", "--out", "{cavi}"], "already holds a run"),
    (["fit", "--out", "{file}"], "is a file"),
    (["fit", "--out", "{file}/run"], "lies under the file"),
    (["fit", "--target", "U1", "U2", "--out", "{file}/runs"], "lies under the file"),
    (["density", "--out", "{file}"], "is a file"),
    (["density", "--out", "{file}/run"], "lies under the file"),
    (["vae", "train", "--out", "{file}"], "is a file"),
    (["vae", "train", "--out", "{file}/run"], "lies under the file"),
    (["cavi", "--out", "{file}"], "is a file"),
    (["cavi", "--out", "{file}/run"], "lies under the file"),
    (["estimators", "--out", "{file}"], "is a file"),
    (["estimators", "--out", "{file}/run"], "lies under the file"),
    (["show", "--out", "{file}"], "is a file"),
    (["show", "--out", "{file}/run"], "lies under the file"),
    # ---- absurd sizes: a memory estimate, before any allocation
    (["fit", "--batch-size", "10000000000000"], "GiB of memory"),
    (["fit", "--batch-size", "10000000000000", "--flow", "realnvp"], "GiB of memory"),
    (["density", "--n-train", "10000000000000"], "GiB of memory"),
    (["density", "--n-test", "10000000000000"], "GiB of memory"),
    (["density", "--batch-size", "10000000000000", "--n-train", "10000000000000"], "GiB"),
    (["vae", "train", "--latent", "100000000000"], "GiB of memory"),
    (["vae", "train", "--hidden", "100000000000"], "GiB of memory"),
    (["vae", "train", "--model", "nlpca", "--latent", "100000000000"], "GiB of memory"),
    (["cavi", "--n", "10000000000000"], "GiB of memory"),
    (["fit", "--resume", "{fit}", "--iters", "10000000000000"], "GiB of memory"),
    # ---- wrong answers once accepted
    (["fit", "--flow", "logit"], "no trainable parameters"),
    (["fit", "--flow", "standardize"], "no trainable parameters"),
    (["density", "--data", "mnist"], "--data-dir"),
    (["estimators", "--mu", "nan"], "--mu"),
    (["estimators", "--mu", "inf"], "--mu"),
    (["fit", "--target", "gaussian", "--dim", "-3"], "--dim"),
    (["fit", "--target", "gaussian", "--dim", "0"], "--dim"),
    # ---- settings refused before any work, command by command
    (["fit", "--length", "0"], "length"),
    (["fit", "--iters", "0"], "iters"),
    (["fit", "--batch-size", "0"], "batch-size"),
    (["fit", "--lr", "0"], "learning rate"),
    (["fit", "--lr", "nan"], "learning rate"),
    (["fit", "--optimizer", "sgdx"], "optimizer"),
    (["fit", "--dtype", "float16"], "dtype"),
    (["fit", "--flow", "nope"], "flow"),
    (["fit", "--base", "nope"], "invalid choice"),
    (["fit", "--samples", "0"], "samples"),
    (["fit", "--checkpoint-every", "0"], "checkpoint-every"),
    (["fit", "--init-scale", "0"], "init-scale"),
    (["fit", "--anneal", "1.5"], "anneal"),
    (["fit", "--beta0", "0"], "beta0"),
    (["fit", "--device", "nope"], "device"),
    (["fit", "--target", "nope"], "nope"),
    (["fit", "--data", "x.csv"], "--model"),
    (["fit", "--model", "m.py:f", "--target", "U1"], "not both"),
    (["fit", "--model", "nofile.py:f"], "nofile.py"),
    (["fit", "--compile", "--optimizer", "rmsprop"], "--compile"),
    (["fit", "--hidden", "8,0", "--flow", "realnvp"], "hidden"),
    (["fit", "--iters", "ten"], "invalid int value"),
    (["fit", "--threads", "-1"], "--threads"),
    (["density", "--length", "0"], "length"),
    (["density", "--iters", "0"], "iters"),
    (["density", "--n-train", "0"], "n-train"),
    (["density", "--valid-fraction", "0.7"], "valid-fraction"),
    (["density", "--test-fraction", "0"], "test-fraction"),
    (["density", "--alpha", "0.6"], "alpha"),
    (["density", "--schedule", "linear"], "schedule"),
    (["density", "--flow", "nope"], "flow"),
    (["density", "--mask", "stripes"], "invalid choice"),
    (["density", "--data", "nope"], "unknown data"),
    (["density", "--data", "{file}"], "unknown data"),
    (["density", "--data", "missing.csv"], "missing.csv"),
    (["density", "--patience", "0"], "patience"),
    (["density", "--optimizer", "sgdx"], "optimizer"),
    (["density", "--dtype", "float16"], "dtype"),
    (["density", "--valid-every", "0"], "valid-every"),
    (["cavi", "--k", "0"], "k"),
    (["cavi", "--method", "nope"], "method"),
    (["cavi", "--restarts", "0"], "restarts"),
    (["cavi", "--prior-std", "0"], "prior"),
    (["cavi", "--init", "nope"], "init"),
    (["cavi", "--data", "missing.npy"], "missing.npy"),
    (["cavi", "--method", "svi", "--kappa", "0.4"], "kappa"),
    (["cavi", "--tol", "-1"], "tol"),
    (["estimators", "--samples", "2"], "sample size"),
    (["estimators", "--repeats", "1"], "repeats"),
    (["estimators", "--fit-iters", "0"], "fit-iters"),
    (["show", "--lengths", "0"], "length"),
    (["show", "--resolution", "0"], "resolution"),
    (["show", "--half-width", "0"], "half-width"),
    (["show", "--params", "missing.json"], "missing.json"),
    (["vae", "train", "--posterior", "nope"], "posterior"),
    (["vae", "train", "--data", "nope"], "data set"),
    (["vae", "train", "--latent", "0"], "latent"),
    (["vae", "train", "--epochs", "0"], "epochs"),
    (["vae", "train", "--likelihood", "gaussian", "--binarize", "static"], "--likelihood"),
    (["vae", "train", "--warmup", "-1"], "warmup"),
    (["vae", "train", "--beta0", "2"], "beta0"),
    (["vae", "train", "--prior", "nope"], "prior"),
    (["vae", "train", "--model", "pca"], "invalid choice"),
    (["vae", "train", "--eval-samples", "0"], "eval-samples"),
    (["vae", "gap", "{vae}", "--chains", "0"], "chains"),
    (["vae", "gap", "{vae}", "--schedule", "nope"], "schedule"),
    (["nope"], "invalid choice"),
]


def _case_id(case: tuple) -> str:
    words = [w.strip("-{}") for w in case[0][:4]] + list(case[3:4])
    return "-".join(w for w in words if w)[:60]


@pytest.mark.parametrize("case", CASES, ids=[f"{i}-{_case_id(c)}" for i, c in enumerate(CASES)])
def test_bad_input_is_refused_cleanly_and_changes_nothing(runs, tmp_path, capsys, case):
    argv, fragment = case[0], case[1]
    damaged = tmp_path / "damaged"
    if len(case) > 2:
        shutil.copytree(runs / case[2], damaged)
        DAMAGES[case[3]](damaged)
    out = tmp_path / "out"
    names = {name: str(runs / name) for name in ("fit", "density", "vae", "nlpca", "cavi")}
    names |= {"file": str(runs / "file.txt"), "out": str(out), "damaged": str(damaged)}
    argv = [word.format(**names) for word in argv]
    if "--out" not in argv and "--resume" not in argv and argv[0] in ("fit", "density", "cavi"):
        argv += ["--out", str(out)]
    if argv[:2] == ["vae", "train"] and "--out" not in argv and "--resume" not in argv:
        argv += ["--out", str(out)]
    if argv[0] in ("estimators", "show") and "--out" not in argv:
        argv += ["--out", str(out)]
    before = _tree_hash(runs), _tree_hash(tmp_path)
    capsys.readouterr()
    code = main([*argv, "--quiet"] if _takes_quiet(argv) else argv)  # argparse's too
    err = capsys.readouterr().err
    assert code == 2, err
    assert fragment in err, err
    assert "Traceback" not in err
    assert (_tree_hash(runs), _tree_hash(tmp_path)) == before
    assert not out.exists()


def _takes_quiet(argv: list[str]) -> bool:
    return argv[0] in ("fit", "density", "cavi", "vae") and "--quiet" not in argv


def test_the_table_covers_every_command_and_has_100_cases():
    assert len(CASES) >= 100
    commands = {" ".join(c[0][:2]) if c[0][0] == "vae" else c[0][0] for c in CASES}
    assert commands >= {"fit", "density", "cavi", "estimators", "show", "vae train", "vae eval"}
    assert "vae gap" in commands

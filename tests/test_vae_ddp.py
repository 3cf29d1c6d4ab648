"""Data-parallel VAE training: 2 gloo ranks (as torchrun starts them) give one process's result."""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors import safe_open
from safetensors.torch import load_file

import flowvi
from flowvi.app.vae import run_vae
from flowvi.io import WEIGHTS
from flowvi.vae.config import VAEConfig, make_vae
from flowvi.vae.distributed import DataParallel

# An odd global batch (101 = 51 + 50) and a short last batch (1257 = 12 × 101 + 45 = 23 + 22):
# unequal shards, where a plain per-rank mean would weight images wrongly.
ARGS = {
    "data": "digits",
    "posterior": "planar",
    "length": 2,
    "latent": 4,
    "hidden": (32,),
    "epochs": 1,
    "batch_size": 101,
    "warmup": 1,
    "dtype": "float64",
}


@pytest.mark.parametrize(("n", "world"), [(7, 3), (101, 2), (1, 2), (6, 3)])
def test_shards_are_contiguous_cover_and_differ_by_at_most_one(n, world):
    parts = [
        DataParallel(r, world, torch.device("cpu"), owns_group=False).shard(n) for r in range(world)
    ]
    sizes = [p.stop - p.start for p in parts]
    assert parts[0].start == 0 and parts[-1].stop == n
    assert all(a.stop == b.start for a, b in itertools.pairwise(parts))
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == n


@pytest.mark.parametrize("posterior", ["diagonal", "planar"])
def test_given_noise_reproduces_the_sampled_bound(posterior):
    model = make_vae(VAEConfig(posterior=posterior, length=2, latent=3, hidden=(8,)), 5).double()
    x = torch.bernoulli(torch.full((4, 5), 0.5, dtype=torch.float64))
    torch.manual_seed(3)
    sampled = model.elbo(x, samples=2)
    torch.manual_seed(3)
    noise = torch.randn(2, 4, 3, dtype=torch.float64)
    given = model.elbo(x, samples=2, noise=noise)
    torch.testing.assert_close(given, sampled, rtol=0, atol=1e-12)
    # a slice of the batch with the slice of the noise gives that slice of the bound
    torch.testing.assert_close(model.elbo(x[1:3], samples=2, noise=noise[:, 1:3]), given[1:3])


def _rank(rank: int, port: int, directory: str) -> None:
    """One rank, with the environment torchrun gives it (forked: no re-import of torch)."""
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE="2",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    run_vae(VAEConfig(**ARGS), directory, progress=False)


@pytest.mark.skipif(not dist.is_available(), reason="torch built without torch.distributed")
def test_two_gloo_ranks_match_one_process(tmp_path, monkeypatch):
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    summary = run_vae(VAEConfig(**ARGS), tmp_path / "one", progress=False)
    assert summary["iterations"] == 13

    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ranks = mp.start_processes(
        _rank, args=(port, str(tmp_path / "ddp")), nprocs=2, join=False, start_method="fork"
    )
    deadline = time.monotonic() + 120
    while not ranks.join(timeout=1):
        if time.monotonic() > deadline:
            for process in ranks.processes:
                process.kill()
            pytest.fail("the two ranks did not finish in 120 s")

    parallel = load_file(str(tmp_path / "ddp" / WEIGHTS))
    single = load_file(str(tmp_path / "one" / WEIGHTS))
    assert parallel.keys() == single.keys()
    start, moved = initial_parameters(), 0.0
    for name, value in single.items():
        torch.testing.assert_close(parallel[name], value, rtol=1e-10, atol=1e-10)
        moved = max(moved, float((value - start[name]).abs().max()))
    assert moved > 1e-3  # the parameters did train: the match is not two untouched models
    ddp_trace = (tmp_path / "ddp" / "trace.csv").read_text().splitlines()
    one_trace = (tmp_path / "one" / "trace.csv").read_text().splitlines()
    assert len(ddp_trace) == len(one_trace) == 1 + 13
    ddp_loss = [float(line.split(",")[3]) for line in ddp_trace[1:]]
    one_loss = [float(line.split(",")[3]) for line in one_trace[1:]]
    assert ddp_loss == pytest.approx(one_loss, rel=1e-5)  # rank 0 logs the global batch's loss


def initial_parameters() -> dict[str, torch.Tensor]:
    """The initial parameters of the run (same seed, same construction as run_vae)."""
    from flowvi.vae.config import load_splits

    config = VAEConfig(**ARGS)
    splits = load_splits(config)
    torch.manual_seed(config.seed)
    model = make_vae(config, splits.train.shape[1])
    model.decoder.init_bias(splits.train.mean(0))
    return {k: v.double() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------- Ctrl-C
# A terminal's Ctrl-C sends SIGINT to the whole process group: torchrun and every rank; torchrun
# forwards one more to every rank and kills those still running 30 s later. Small steps (a few
# ms) and many epochs: the ranks are mid-training when it comes, and a resume is short.
CTRL_C_ARGS = [
    "--quiet",
    "--data", "digits",
    "--latent", "2",
    "--hidden", "16",
    "--length", "1",
    "--batch-size", "128",
    "--epochs", "20",
    "--patience", "1000",
    "--checkpoint-every", "1",
]  # fmt: skip


def _torchrun(argv: list[str], log: Path) -> subprocess.Popen:
    """``torchrun --nproc_per_node=2 -m flowvi ...`` in a session of its own (its own process
    group, as a terminal gives a command), stdout and stderr to ``log``.{out,err}."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    env |= {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone"]
    with open(f"{log}.out", "w") as out, open(f"{log}.err", "w") as err:
        return subprocess.Popen(
            [*command, "-m", "flowvi", *argv],
            stdout=out,
            stderr=err,
            env=env,
            start_new_session=True,
        )


def _finish(process: subprocess.Popen, timeout: float) -> int | None:
    """The exit status within ``timeout`` seconds, else None (the group is killed)."""
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        return None


def _kill(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.mark.skipif(not dist.is_available(), reason="torch built without torch.distributed")
@pytest.mark.skipif(importlib.util.find_spec("torch.distributed.run") is None, reason="no torchrun")
def test_ctrl_c_under_torchrun_checkpoints_exits_and_resumes(tmp_path):
    run = tmp_path / "run"
    process = _torchrun(["vae", "train", *CTRL_C_ARGS, "--out", str(run)], tmp_path / "first")
    try:
        deadline = time.monotonic() + 60
        while not (run / "checkpoint.safetensors").exists():  # the first epoch is done
            assert process.poll() is None, (tmp_path / "first.err").read_text()
            assert time.monotonic() < deadline, "no checkpoint within 60 s"
            time.sleep(0.02)
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C in the terminal
        status = _finish(process, timeout=25)  # torchrun kills hung ranks after 30 s
    finally:
        _kill(process)
    err = (tmp_path / "first.err").read_text()
    assert status is not None, f"no exit 25 s after Ctrl-C:\n{err}"
    assert status != 0 and "forcefully exiting" not in err, err  # no rank had to be killed
    # both ranks stopped after the same iteration, and rank 0 says how to continue
    stops = re.findall(r"flowvi: interrupted after iteration (\d+)", err)
    assert len(stops) == 2 and stops[0] == stops[1], err
    assert f"continue it with: flowvi vae train --resume {run}" in err
    with safe_open(str(run / "checkpoint.safetensors"), "pt") as f:
        assert f.metadata()["iteration"] == stops[0]  # the checkpoint holds every step done
    with pytest.warns(UserWarning, match="unfinished run"):
        model = flowvi.load(run)
    assert all(torch.isfinite(p).all() for p in model.parameters())

    again = _torchrun(["vae", "train", "--quiet", "--resume", str(run)], tmp_path / "resume")
    try:
        status = _finish(again, timeout=120)
    finally:
        _kill(again)
    assert status == 0, (tmp_path / "resume.err").read_text()
    summary = json.loads((run / "train.json").read_text())
    assert summary["epochs"] == 20 and summary["iterations"] == 20 * summary["iterations_per_epoch"]

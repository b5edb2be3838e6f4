"""Data-parallel training: ``torchrun -m kgnnls train`` on 2 gloo processes converges,
rank 0 alone writes, and its numbers match a single-process run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from conftest import write_final_layout
from kgnnls import KGNNLS, Config, ConfigError, distributed
from kgnnls.cli import main
from kgnnls.train import fit

# batch_size 63 is odd: every global batch splits 32 / 31 rows between the two ranks,
# which exercises the per-rank weighting that keeps the gradient the global batch mean
SETTINGS = ["--seed", "0", "--set", "dim=8", "--set", "n_neighbors=4", "--set", "lr=0.02",
            "--set", "batch_size=63", "--set", "epochs=6", "--set", "patience=6",
            "--set", "l2_weight=1e-5", "--quiet"]

#: |AUC(2 processes) - AUC(1 process)| allowed. Both runs take the same steps on the same
#: global batches with the same averaged gradient; only the floating-point summation order
#: differs (two partial means all-reduced instead of one mean), which moved the weights by
#: < 1e-6 when measured (AUC difference: 0.0 on validation and test). AUC is rank-based: it
#: changes only where two scores that close swap order, 1/(positives * negatives) ~ 5e-5
#: per swapped pair here, so 1e-3 allows ~20 swaps and still fails any real divergence.
AUC_TOLERANCE = 1e-3
#: weights after training, measured max |difference| 8e-7
WEIGHT_TOLERANCE = 1e-5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_match_one_process(tmp_path, planted, capsys):
    data = write_final_layout(planted, tmp_path / "data")
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
               "-m", "kgnnls", "train", "--dataset", str(data), "--out", str(ddp), *SETTINGS]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the reference, in this process (a third interpreter would only add imports), on
    # the autograd path that DDP runs (one process would otherwise take the fused step,
    # whose float rounding differs; tests/test_fused.py checks that one)
    assert main(["train", "--dataset", str(data), "--out", str(single), *SETTINGS,
                 "--set", "training_path=autograd"]) == 0
    capsys.readouterr()

    # rank 0 alone logs, prints and writes; the checkpoint is gone once the run is done
    assert proc.stderr.count("epoch   1  loss") == 1
    assert "data-parallel on 2 processes" in proc.stderr
    assert proc.stdout.count("popularity") == 1
    assert sorted(p.name for p in ddp.iterdir()) == ["metrics.json", "model.pt"]

    got = json.loads((ddp / "metrics.json").read_text())
    want = json.loads((single / "metrics.json").read_text())
    assert (got["world_size"], want["world_size"]) == (2, 1)
    assert got["test"]["auc"] > 0.7  # it learns the planted signal
    assert [h["val_auc"] for h in got["history"]][-1] > got["history"][0]["val_auc"]
    assert got["epochs_trained"] == want["epochs_trained"]
    assert got["best_epoch"] == want["best_epoch"]
    for part in ("val", "test"):
        assert abs(got[part]["auc"] - want[part]["auc"]) <= AUC_TOLERANCE, part
    for g, w in zip(got["history"], want["history"], strict=True):
        assert abs(g["val_auc"] - w["val_auc"]) <= AUC_TOLERANCE
        assert g["loss"] == pytest.approx(w["loss"], abs=1e-4)
    a, b = KGNNLS.load(ddp).network.state_dict(), KGNNLS.load(single).network.state_dict()
    for name, tensor in b.items():
        if tensor.is_floating_point():
            torch.testing.assert_close(a[name], tensor, atol=WEIGHT_TOLERANCE, rtol=0,
                                       msg=name)
        else:
            assert torch.equal(a[name], tensor), name


#: run by each of two torchrun processes: join the group, train one DDP step, leave, and
#: write the number of gloo threads still running (in /proc/self/task, by the names torch
#: gives them) to DIR/rank-R (a file per rank: the ranks' stdout may interleave)
_TEARDOWN = """
import os, sys, torch
from torch import nn
from kgnnls import distributed

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Linear(2, 1)

    def loss(self, users, items, labels):
        return self.w(users).pow(2).mean(), {}

assert distributed.init()
step = distributed.wrap(Net())
loss, _ = step(torch.ones(4, 2), None, None)
loss.backward()
del step, loss
distributed.finish()
names = [open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")]
left = sum(n.startswith(("pt_gloo", "gloo_")) for n in names)
with open(os.path.join(sys.argv[1], "rank-" + os.environ["RANK"]), "w") as f:
    f.write(str(left))
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="thread names are read "
                    "from /proc/self/task (Linux)")
def test_leaving_the_group_stops_its_gloo_threads(tmp_path):
    # gloo threads alive at interpreter exit can free a finished collective's tensors
    # there and abort the process (it happened to rank 1 once the run had finished);
    # once DistributedDataParallel has run, finish() must still stop them
    script = tmp_path / "teardown.py"
    script.write_text(_TEARDOWN)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(script),
               str(tmp_path)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    left = {p.name: p.read_text() for p in tmp_path.glob("rank-*")}
    assert left == {"rank-0": "0", "rank-1": "0"}, f"gloo threads left per rank: {left}"


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shards_partition_every_batch(world):
    for n in range(0, 20):
        parts = [distributed.shard(n, r, world) for r in range(world)]
        covered = [i for p in parts for i in range(n)[p]]
        assert covered == list(range(n))  # in order, disjoint, complete
        sizes = [p.stop - p.start for p in parts]
        assert max(sizes) - min(sizes) <= 1
    with pytest.raises(ValueError):
        distributed.shard(10, world, world)


def test_sparse_row_updates_are_refused_data_parallel(monkeypatch, planted):
    monkeypatch.setattr(distributed, "active", lambda: True)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "rank", lambda: 0)
    config = Config(seed=0, dim=8, n_neighbors=4, epochs=1, updates="rows")
    with pytest.raises(ConfigError, match=r"updates=rows .* cannot train data-parallel"):
        fit(planted, config, progress=False)


def test_single_process_needs_no_process_group(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    assert not distributed.launched() and not distributed.init()
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert distributed.agree([0.5, 0.25]) == [0.5, 0.25]
    assert distributed.backend() == "gloo"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ConfigError, match="MASTER_ADDR is not"):
        distributed.init()


def test_resume_refuses_another_number_of_processes(tmp_path, planted):
    from kgnnls import CheckpointError
    from kgnnls.storage import load_checkpoint, save_checkpoint

    config = Config(seed=0, dim=8, n_neighbors=4, batch_size=64, epochs=2)
    path = tmp_path / "checkpoint.pt"
    fit(planted, config, progress=False, checkpoint_path=path)
    saved = load_checkpoint(path)
    assert saved["world_size"] == 1
    save_checkpoint(path, {**saved, "world_size": 2})  # as a 2-process run writes it
    with pytest.raises(CheckpointError, match=r"written by a run on 2 process\(es\), resumed "
                                              r"on 1: resume with 2"):
        fit(planted, config, progress=False, checkpoint_path=path, resume=True)

"""Config.device: resolution (kgnnls.device), CPU determinism, the recorded device, CUDA runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kgnnls import KGNNLS, Config, ConfigError
from kgnnls.data.synthetic import planted_dataset
from kgnnls.device import resolve_device
from kgnnls.graph import LabelTable

FIT = dict(dim=8, n_neighbors=4, lr=0.02, batch_size=32, epochs=2, l2_weight=1e-5)
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(),
                               reason="no CUDA GPU visible to torch: the GPU cases run only there")


@pytest.fixture(scope="module")
def data():
    return planted_dataset(seed=0)


@pytest.fixture
def gpu(monkeypatch):
    """Pretend a GPU is (or is not) visible: ``gpu(True)``."""
    return lambda present: monkeypatch.setattr("kgnnls.device.cuda_available", lambda: present)


@pytest.mark.parametrize(("requested", "present", "fused", "parallel", "ready", "expected"), [
    ("cpu", True, False, False, None, "cpu"),
    ("auto", False, False, False, None, "cpu"),
    ("auto", True, True, False, None, "cpu"),     # the fused CPU step wins where it applies
    ("auto", True, False, False, None, "cuda"),   # else autograd on the GPU
    ("auto", True, False, True, None, "cpu"),     # data-parallel: gloo on the CPU
    ("auto", True, False, False, "baseline", "cpu"),
    ("cuda", True, False, False, None, "cuda"),
])
def test_resolution(gpu, requested, present, fused, parallel, ready, expected):
    gpu(present)
    assert resolve_device(requested, fused, parallel, ready).type == expected


@pytest.mark.parametrize(("present", "fused", "parallel", "ready", "message"), [
    (False, False, False, None, "device=cuda but torch sees no CUDA GPU"),
    (True, True, False, None, "training_path=fused asks for the fused step"),
    (True, False, True, None, "does not train data-parallel"),
    (True, False, False, "updates=rows trains on the CPU only", "device=cuda: updates=rows"),
])
def test_cuda_refusals_are_one_line(gpu, present, fused, parallel, ready, message):
    gpu(present)
    with pytest.raises(ConfigError, match=message) as info:
        resolve_device("cuda", fused, parallel, ready)
    assert "\n" not in str(info.value)


def test_config_field():
    assert Config().device == "auto"
    assert Config().with_overrides({"device": "cpu"}).device == "cpu"
    with pytest.raises(ConfigError, match="bad value 'gpu' for device"):
        Config().with_overrides({"device": "gpu"})


def test_cpu_runs_are_identical_and_record_the_device(data):
    runs = [KGNNLS(Config(seed=0, training_path="autograd", device=d, **FIT)).fit(data)
            for d in ("cpu", "cpu", "auto" if not torch.cuda.is_available() else "cpu")]
    histories = [[(h["loss"], h["val_auc"]) for h in m.history] for m in runs]
    assert histories[0] == histories[1] == histories[2]  # deterministic on the CPU
    metrics = runs[0].evaluate()
    assert metrics["device"] == "cpu" and metrics["config"]["device"] == "cpu"
    fused = KGNNLS(Config(seed=0, **FIT)).fit(data).evaluate()
    assert fused["training_path"] == "fused" and fused["device"] == "cpu"  # auto keeps it


def test_explicit_cuda_without_a_gpu_fails_before_training(data, gpu):
    gpu(False)
    with pytest.raises(ConfigError, match="device=cuda but torch sees no CUDA GPU"):
        KGNNLS(Config(seed=0, device="cuda", **FIT)).fit(data)


def test_label_table_moves_and_keeps_its_lookups():
    table = LabelTable(np.array([0, 1, 1]), np.array([2, 0, 3]), np.array([1, 0, 1]), 10)
    users, entities = torch.tensor([[0], [1], [1]]), torch.tensor([[2, 5], [0, 3], [3, 9]])
    moved = table.to("cpu")
    for a, b in zip(table.lookup(users, entities), moved.lookup(users, entities), strict=True):
        assert torch.equal(a, b)
    table.dense = None  # the search path too
    labels, known = table.lookup(users, entities)
    assert labels.tolist() == [[1.0, 0.5], [0.0, 1.0], [1.0, 0.5]]
    assert known.tolist() == [[True, False], [True, True], [True, False]]


@needs_gpu
@pytest.mark.parametrize("loss", ["bce", "bpr"])
def test_cuda_training_matches_the_cpu_closely(data, loss):
    cfg = dict(seed=0, training_path="autograd", loss=loss, **FIT)
    cpu = KGNNLS(Config(device="cpu", **cfg)).fit(data).evaluate()
    model = KGNNLS(Config(device="cuda", **cfg)).fit(data)
    assert model.network.user_emb.device.type == "cpu"  # back on the CPU after training
    gpu_metrics = model.evaluate()
    assert gpu_metrics["device"] == "cuda"
    assert abs(gpu_metrics["test"]["auc"] - cpu["test"]["auc"]) < 0.02
    assert len(model.recommend("u1", k=5)) == 5


@needs_gpu
def test_auto_on_a_gpu_machine_keeps_the_fused_cpu_step(data):
    metrics = KGNNLS(Config(seed=0, **FIT)).fit(data).evaluate()
    assert (metrics["training_path"], metrics["device"]) == ("fused", "cpu")
    deep = KGNNLS(Config(seed=0, training_path="autograd", **FIT)).fit(data).evaluate()
    assert deep["device"] == "cuda"

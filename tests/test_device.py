"""RunOptions.device: resolution (kgnnls.device), CPU determinism, the recorded device, CUDA."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from kgnnls import KGNNLS, Config, ConfigError, RunOptions
from kgnnls.data.synthetic import planted_dataset
from kgnnls.device import network_device, place, resolve_device, scoring_device
from kgnnls.evaluate import topk_metrics
from kgnnls.graph import LabelTable
from kgnnls.scoring import Scorer
from kgnnls.serve import create_app

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


def test_run_option():
    assert RunOptions().device == "auto"
    assert RunOptions().with_overrides({"device": "cpu"}).device == "cpu"
    with pytest.raises(ConfigError, match="bad value 'gpu' for device"):
        RunOptions().with_overrides({"device": "gpu"})


def test_cpu_runs_are_identical_and_record_the_device(data):
    runs = [KGNNLS(Config(seed=0, **FIT), training_path="autograd", device=d).fit(data)
            for d in ("cpu", "cpu", "auto" if not torch.cuda.is_available() else "cpu")]
    histories = [[(h["loss"], h["val_auc"]) for h in m.history] for m in runs]
    assert histories[0] == histories[1] == histories[2]  # deterministic on the CPU
    metrics = runs[0].evaluate()
    assert metrics["device"] == "cpu" and metrics["run"]["device"] == "cpu"
    fused = KGNNLS(Config(seed=0, **FIT)).fit(data).evaluate()
    assert fused["training_path"] == "fused" and fused["device"] == "cpu"  # auto keeps it


def test_explicit_cuda_without_a_gpu_fails_before_training(data, gpu):
    gpu(False)
    with pytest.raises(ConfigError, match="device=cuda but torch sees no CUDA GPU"):
        KGNNLS(Config(seed=0, **FIT), device="cuda").fit(data)


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
    cfg = Config(seed=0, loss=loss, **FIT)
    cpu = KGNNLS(cfg, training_path="autograd", device="cpu").fit(data).evaluate()
    model = KGNNLS(cfg, training_path="autograd", device="cuda").fit(data)
    assert model.network.user_emb.device.type == "cuda"  # it ranks where it trained
    gpu_metrics = model.evaluate()
    assert gpu_metrics["device"] == gpu_metrics["ranking_device"] == "cuda"
    assert abs(gpu_metrics["test"]["auc"] - cpu["test"]["auc"]) < 0.02
    assert len(model.recommend("u1", k=5)) == 5


@needs_gpu
def test_auto_on_a_gpu_machine_keeps_the_fused_cpu_step(data):
    metrics = KGNNLS(Config(seed=0, **FIT)).fit(data).evaluate()
    assert (metrics["training_path"], metrics["device"]) == ("fused", "cpu")
    deep = KGNNLS(Config(seed=0, **FIT), training_path="autograd").fit(data).evaluate()
    assert deep["device"] == "cuda"


# ------------------------------------------------------------------ ranking and serving


@pytest.mark.parametrize(("requested", "trained", "present", "ready", "expected"), [
    ("cpu", "cuda", True, None, "cpu"),
    ("auto", "cpu", True, None, "cpu"),        # fused / CPU-trained models stay on the CPU
    ("auto", "cuda", True, None, "cuda"),      # it ranks where it trained
    ("auto", "cuda", False, None, "cpu"),      # a GPU checkpoint on a CPU-only machine
    ("auto", "cuda", True, "baseline", "cpu"),
    ("cuda", "cpu", True, None, "cuda"),
])
def test_scoring_device(gpu, requested, trained, present, ready, expected):
    gpu(present)
    assert scoring_device(requested, trained, ready).type == expected


@pytest.mark.parametrize(("requested", "present", "ready", "message"), [
    ("cuda", False, None, "device=cuda but torch sees no CUDA GPU"),
    ("cuda", True, "model 'ripplenet' ranks on the CPU only", "device=cuda: model 'ripplenet'"),
    ("gpu", True, None, "device must be auto, cpu or cuda"),
])
def test_scoring_device_refusals_are_one_line(gpu, requested, present, ready, message):
    gpu(present)
    with pytest.raises(ConfigError, match=message) as info:
        scoring_device(requested, "cuda", ready)
    assert "\n" not in str(info.value)


@pytest.fixture(scope="module")
def saved(data, tmp_path_factory):
    """A two-layer autograd model on the CPU, saved, with its checkpoint path."""
    model = KGNNLS(Config(seed=0, n_layers=2, **FIT), training_path="autograd",
                   device="cpu").fit(data)
    path = tmp_path_factory.mktemp("device") / "model.pt"
    model.save(path)
    return model, path


def _rankings(model):
    net = model.network
    users, items = torch.arange(net.n_users), torch.arange(len(model.item_ids))
    return (model.scorer.score_matrix(users, items), model.recommend(["u1", "u2", "u3"], k=5),
            model.score(["u1", "u2"], [model.item_ids[0], model.item_ids[1]]))


def _assert_same(a, b):
    assert torch.equal(a[0], b[0])
    assert np.array_equal(a[1][0], b[1][0]) and np.array_equal(a[1][1], b[1][1])
    assert np.array_equal(a[2], b[2])


def test_cpu_ranking_and_loading_are_unchanged(saved, gpu):
    model, path = saved
    metrics = model.evaluate()
    assert (metrics["device"], metrics["ranking_device"]) == ("cpu", "cpu")
    assert network_device(model.network).type == "cpu"
    before = _rankings(model)
    for device in ("auto", "cpu"):
        loaded = KGNNLS.load(path, device=device)
        assert network_device(loaded.network).type == "cpu"
        _assert_same(before, _rankings(loaded))
        assert loaded.explain("u1", model.item_ids[0]).to_dict() == \
            model.explain("u1", model.item_ids[0]).to_dict()
    gpu(False)
    with pytest.raises(ConfigError, match="device=cuda but torch sees no CUDA GPU"):
        KGNNLS.load(path, device="cuda")


def test_a_gpu_trained_checkpoint_loads_on_a_cpu_only_machine(saved, gpu, tmp_path):
    model, _ = saved
    model.info["device"] = "cuda"  # as written by a run on a GPU
    try:
        model.save(tmp_path / "model.pt")
    finally:
        model.info["device"] = "cpu"
    gpu(False)
    loaded = KGNNLS.load(tmp_path / "model.pt")
    assert loaded.info["device"] == "cuda" and network_device(loaded.network).type == "cpu"
    _assert_same(_rankings(model), _rankings(loaded))
    assert TestClient(create_app(loaded)).get("/health").json()["device"] == "cpu"


@pytest.mark.parametrize("n_layers", [1, 2])
@pytest.mark.parametrize("variant", ["paper", "authors"])
def test_the_gpu_ranking_path_matches_the_cpu_rankers(data, n_layers, variant):
    """The tensor layer-wise path (what a GPU runs, here on the CPU) against the compiled
    one-layer ranker and the broadcast reference."""
    net = KGNNLS(Config(seed=0, n_layers=n_layers, variant=variant, **FIT),
                 training_path="autograd", device="cpu").fit(data).network
    users, items = torch.arange(net.n_users), torch.arange(40)
    layerwise = net.score_matrix_layerwise(users, items)
    torch.testing.assert_close(layerwise, Scorer(net).score_matrix(users, items), rtol=1e-5,
                               atol=1e-5)
    torch.testing.assert_close(layerwise, net.score_matrix_reference(users, items),
                               rtol=1e-5, atol=1e-5)


def test_place_moves_the_label_table(saved):
    net = copy.deepcopy(saved[0].network)
    labels = net.labels
    assert place(net, "cpu") is net and net.labels is not labels  # a moved copy
    assert torch.equal(net.labels.keys, labels.keys)


@needs_gpu
@pytest.mark.parametrize("n_layers", [1, 2])
@pytest.mark.parametrize("variant", ["paper", "authors"])
def test_gpu_ranking_equals_cpu_ranking(data, n_layers, variant):
    model = KGNNLS(Config(seed=0, n_layers=n_layers, variant=variant, **FIT),
                   training_path="autograd", device="cpu").fit(data)
    cpu_net = model.network
    gpu_net = place(copy.deepcopy(cpu_net), "cuda")
    assert gpu_net.adj_entity.is_cuda and gpu_net.slot_counts.is_cuda
    assert gpu_net.labels.keys.is_cuda
    users, items = torch.arange(cpu_net.n_users), torch.arange(len(model.item_ids))
    on_gpu_scorer, cpu_scorer = Scorer(gpu_net), Scorer(cpu_net, compiled=False)
    on_gpu = on_gpu_scorer.score_matrix(users, items)
    assert on_gpu_scorer.last_path == "tensor"  # the compiled ranker is CPU code
    assert on_gpu.device.type == "cpu" and on_gpu.dtype == torch.float32
    torch.testing.assert_close(on_gpu, cpu_scorer.score_matrix(users, items), rtol=1e-5,
                               atol=1e-5)
    rows = np.stack([users.numpy(), users.numpy() % len(items)], 1)
    torch.testing.assert_close(on_gpu_scorer.score_pairs(users, torch.from_numpy(rows[:, 1])),
                               cpu_scorer.score_pairs(users, torch.from_numpy(rows[:, 1])),
                               rtol=1e-5, atol=1e-5)
    assert on_gpu_scorer.last_path == "tensor"
    split = model._split
    cpu_top = topk_metrics(cpu_scorer, split.train, split.test, cpu_net.n_users, len(items),
                           (5, 10))
    gpu_top = topk_metrics(on_gpu_scorer, split.train, split.test, cpu_net.n_users, len(items),
                           (5, 10))
    assert gpu_top == pytest.approx(cpu_top, abs=0.02)  # near-ties may swap
    model.network = gpu_net  # the model's scorer follows the network it holds
    assert model.scorer.model is gpu_net
    item = model.item_ids[0]
    assert model.explain("u1", item).probability == pytest.approx(
        float(model.score(["u1"], [item])[0]), abs=1e-5)
    assert len(model.recommend("u1", k=5)) == 5


@needs_gpu
def test_a_cuda_model_saves_cpu_tensors_loads_on_cpu_and_serves_on_cuda(data, tmp_path):
    model = KGNNLS(Config(seed=0, **FIT), device="cuda").fit(data)
    assert network_device(model.network).type == "cuda"
    model.save(tmp_path / "model.pt")
    payload = torch.load(tmp_path / "model.pt", weights_only=True)  # no map_location
    assert all(v.device.type == "cpu" for v in payload["state_dict"].values())
    users, items = torch.arange(model.network.n_users), torch.arange(len(model.item_ids))
    expected = model.scorer.score_matrix(users, items)
    on_cpu = KGNNLS.load(tmp_path / "model.pt", device="cpu")
    assert network_device(on_cpu.network).type == "cpu"
    torch.testing.assert_close(on_cpu.scorer.score_matrix(users, items), expected,
                               rtol=1e-5, atol=1e-5)
    served = KGNNLS.load(tmp_path / "model.pt")  # auto: where it trained
    assert network_device(served.network).type == "cuda"
    client = TestClient(create_app(served))
    assert client.get("/health").json()["device"] == "cuda"
    assert len(client.get("/recommend", params={"user": "u1", "k": 5}).json()["items"]) == 5
    assert client.post("/recommend/batch", json={"users": ["u1", "u2"], "k": 3}).status_code == 200
    assert client.get("/explain", params={"user": "u1", "item": model.item_ids[0]}
                      ).status_code == 200
    assert served.evaluate(data)["ranking_device"] == "cuda"

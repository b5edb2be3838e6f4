"""CompiledForward: built once, the reference forward's numbers; the trainer's view
reads its flat buffer without a copy; the kernels' thread scope restores torch's."""

from __future__ import annotations

import numba
import numpy as np
import pytest
import torch

from kgnnls.fused import PARALLEL_MIN_ROWS, CompiledForward, FusedTrainer, logits
from kgnnls.optim import make_optimizer
from kgnnls.threads import numba_threads
from test_fused import random_net


@pytest.mark.parametrize("fields", [dict(variant="paper", n_layers=1),
                                    dict(variant="authors", aggregator="concat", n_layers=3),
                                    dict(variant="paper", n_layers=2, dim=64)])
def test_compiled_forward_equals_the_reference_and_logits(fields):
    net, rows = random_net(7, **fields)
    net.eval()
    users, items = rows[:, 0], rows[:, 1]
    with torch.no_grad():
        reference = net.forward(torch.from_numpy(users), torch.from_numpy(items)).numpy()
    forward = CompiledForward(net)
    np.testing.assert_allclose(forward.logits(users, items), reference, atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(forward.logits(users, items), logits(net, users, items))
    many = np.resize(np.arange(len(users)), 3 * PARALLEL_MIN_ROWS)  # the parallel kernel
    np.testing.assert_array_equal(forward.logits(users[many], items[many], threads=2),
                                  forward.logits(users[many], items[many], threads=1))
    assert forward.logits(users[:0], items[:0]).shape == (0,)
    with pytest.raises(ValueError):
        forward.logits(users, items[:-1])


def test_trainer_forward_reads_the_flat_buffer_without_a_copy():
    net, rows = random_net(8, variant="paper", n_layers=2)
    trainer = FusedTrainer(net, make_optimizer(net, net.config.lr, net.config.l2_weight))
    trainer.pull()
    forward = trainer.forward()
    assert forward is trainer.forward() and forward.flat is trainer.flat
    users = np.ascontiguousarray(rows[:, 0], np.int64)
    items = np.ascontiguousarray(rows[:, 1], np.int64)
    labels = np.ascontiguousarray(rows[:, 2], np.float32)
    before = forward.logits(users, items)
    trainer.steps(users, items, labels, 0, len(users), 32)  # no push: the network is stale
    after = forward.logits(users, items)
    assert not np.allclose(before, after)
    np.testing.assert_array_equal(before, logits(net, users, items))
    trainer.push()
    np.testing.assert_array_equal(after, logits(net, users, items))


def test_compile_reports_seconds_and_keeps_the_parameters():
    net, _ = random_net(9, variant="authors", n_layers=1)
    trainer = FusedTrainer(net, make_optimizer(net, net.config.lr, net.config.l2_weight))
    trainer.pull()
    flat = trainer.flat.copy()
    assert trainer.compile(net.config.batch_size) >= 0.0
    np.testing.assert_array_equal(trainer.flat, flat)
    assert trainer.step_count == 0 and not trainer.grad.any()


def test_numba_threads_restores_both_counts():
    outer = torch.get_num_threads()
    before = numba.get_num_threads()  # starts numba's pool (OpenMP: resets torch's count)
    torch.set_num_threads(1)
    try:
        with numba_threads(64) as count:
            assert count == numba.config.NUMBA_NUM_THREADS == numba.get_num_threads()
        assert (numba.get_num_threads(), torch.get_num_threads()) == (before, 1)
    finally:
        torch.set_num_threads(outer)

"""train/distributed.py: device choice per rank and torchrun's environment."""

from __future__ import annotations

import pytest
import torch

from leap_cli.errors import LeapError
from leap_cli.train import distributed


def _gpus(monkeypatch, n: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)


@pytest.mark.parametrize("pref", ["auto", "cuda"])
def test_each_local_rank_gets_its_own_gpu(monkeypatch, pref):
    _gpus(monkeypatch, 2)
    assert distributed.pick_device(pref, 0) == torch.device("cuda", 0)
    assert distributed.pick_device(pref, 1) == torch.device("cuda", 1)


@pytest.mark.parametrize("pref", ["auto", "cuda"])
def test_more_processes_than_gpus_is_one_line_naming_nproc(monkeypatch, pref):
    """torchrun --nproc_per_node 4 on a 2-GPU node: not CUDA's raw 'invalid device ordinal' later."""
    _gpus(monkeypatch, 2)
    with pytest.raises(LeapError) as e:
        distributed.pick_device(pref, 2)
    assert "LOCAL_RANK is 2" in str(e.value) and "2 CUDA device" in str(e.value)
    assert "--nproc_per_node 2" in e.value.fix

"""The per-step host-to-device paths (DSA's transforms, fresh networks, expert segments) leave a
CUDA device's queue running: under ``torch.cuda.set_sync_debug_mode("error")`` any operation that
makes the host wait for the device raises. They need a CUDA device; the values themselves are
checked against the same work on the CPU."""
import contextlib

import pytest
import torch

from datadistill import dsa
from datadistill.methods.mtt import ExpertSegments
from datadistill.models import build_model
from datadistill.nets import fresh_nets
from datadistill.transfer import to_device

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA device: checks that no step waits for the device")


@contextlib.contextmanager
def no_waiting():
    """Raise at any host-device synchronisation inside the block."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_a_host_tensor_reaches_the_device_unchanged_and_without_waiting():
    t = torch.randperm(1000)
    with no_waiting():
        on_device = to_device(t, "cuda")
    assert on_device.is_cuda and torch.equal(on_device.cpu(), t)


def test_dsa_transforms_do_not_wait_for_the_device():
    x = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    on_device = x.cuda()
    for family in dsa.FAMILIES:
        for rows in (1, 6):  # one draw for the batch, one per image
            params = dsa.DsaParams(family, torch.rand(rows, 3, generator=torch.Generator().manual_seed(1),
                                                      dtype=torch.float64))
            with no_waiting():
                out = dsa.apply(on_device, params)
            torch.testing.assert_close(out.cpu(), dsa.apply(x, params), atol=1e-5, rtol=1e-5)


def test_dsa_by_group_does_not_wait_for_the_device():
    x = torch.randn(9, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    draws = [dsa.sample_params(torch.Generator().manual_seed(s), dsa.FAMILIES) for s in range(3)]
    groups = torch.arange(3).repeat_interleave(3)
    on_device = x.cuda()
    with no_waiting():
        out = dsa.apply_by_group(on_device, groups, draws)
    torch.testing.assert_close(out.cpu(), dsa.apply_by_group(x, groups, draws), atol=1e-5, rtol=1e-5)


def test_fresh_networks_and_expert_segments_do_not_wait_for_the_device():
    model = build_model("ConvNet", 1, 28, 10, width=16)
    with no_waiting():
        nets = fresh_nets(model, "default", 1.0, [3, 4], "cuda")
    for k, v in fresh_nets(model, "default", 1.0, [3, 4], "cpu").items():
        assert torch.equal(nets[k].cpu(), v)
    trajectories = {k: torch.stack([v, v + 1, v + 2], 1) for k, v in fresh_nets(model, "xavier", 1.0, [5, 6],
                                                                                  "cpu").items()}
    segments = ExpertSegments(trajectories, expert_epochs=1, max_start_epoch=2, device=torch.device("cuda"))
    experts, starts = torch.tensor([1]), torch.tensor([1])
    with no_waiting():
        segment = segments.segment(experts, starts)
    for k, v in trajectories.items():
        assert torch.equal(segment["start"][k].cpu(), v[experts, starts])
        assert torch.equal(segment["target"][k].cpu(), v[experts, starts + 1])

"""Host-to-device copies that leave the device's queue running.

``tensor.to("cuda")`` from ordinary (pageable) host memory waits for the copy to finish, and the
copy waits behind every kernel queued before it: the host stops queueing work until the device
has caught up. A training loop that sends a few small tensors a step that way (augmentation
parameters, a batch order) runs in lock step with the device instead of ahead of it, which is
where a loop of small kernels spends its time. Staged in pinned memory, the copy is queued like a
kernel (``non_blocking``); PyTorch's pinned-memory cache keeps the staging block until the copy
has run, so the host tensor may be dropped at once.
"""
from __future__ import annotations

import torch


def to_device(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``t`` on ``device``, the same values; from the host to a CUDA device without waiting for
    the device (see the module's doc). Elsewhere it is ``t.to(device)``."""
    device = torch.device(device)
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    # contiguous first, so that the copy reads the pinned block itself, not a gathered temporary
    return t.contiguous().pin_memory().to(device, non_blocking=True)

"""oneDNN for the local model's `Linear` layers on the CPU: weights packed once at load.

PyTorch's CPU `Linear` calls its BLAS (MKL in the official builds), which on AMD CPUs runs well
below what the vector units can do; oneDNN's own kernels do not. On this project's 2-core AMD EPYC
development machine, in a one-off microbenchmark (float32, min of 5 calls), ViT-L/14's MLP layer
at a batch of 16 (4112 x 1024 @ 1024 x 4096) ran at 70 GFLOP/s through
`torch.nn.functional.linear` and at 104-107 GFLOP/s through oneDNN, packed or not;
`benchmarks/pipeline_peer.py` measures the whole pipeline. Imported only by `clip_client.local`,
which needs torch anyway.
"""

from __future__ import annotations

import logging

import torch

from ._constants import LOGGER_NAME

__all__ = ["PackedLinear", "pack_linears"]

logger = logging.getLogger(LOGGER_NAME)


class PackedLinear(torch.nn.Module):
    """`nn.Linear.forward` through oneDNN (`torch.ops.mkldnn._linear_pointwise`), its weight
    reordered once into oneDNN's blocked layout. Inference only: the packed weight has no gradient."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), None)
        self.bias = None if linear.bias is None else linear.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        return out

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, oneDNN packed"


def pack_linears(model: torch.nn.Module, dtype: torch.dtype) -> bool:
    """Swap each `nn.Linear` of `model` (on the CPU) for a `PackedLinear`. Returns False, and leaves
    the model untouched, when the dtype is not float32/bfloat16, this torch build lacks oneDNN or
    its kernels, or a probe on a small random layer disagrees with `nn.Linear` beyond rounding."""
    if dtype not in (torch.float32, torch.bfloat16) or not torch._C._has_mkldnn:
        return False
    linears = [(name, m) for name, m in model.named_modules() if type(m) is torch.nn.Linear]
    if not linears:
        return False
    try:
        with torch.inference_mode():
            probe = torch.nn.Linear(64, 48).to(dtype)
            x = torch.randn(3, 5, 64, dtype=dtype)
            expected, got = probe(x).float(), PackedLinear(probe)(x).float()
    except (RuntimeError, AttributeError, NotImplementedError) as exc:  # a build without these kernels
        logger.debug("oneDNN Linear unavailable (%s): keeping nn.Linear", exc)
        return False
    tolerance = 1e-4 if dtype == torch.float32 else 2e-2
    if got.shape != expected.shape or not torch.allclose(got, expected, rtol=tolerance, atol=tolerance):
        logger.debug("oneDNN Linear disagrees with nn.Linear on a probe: keeping nn.Linear")
        return False
    # One layer at a time, so that the load's peak memory is the model plus one layer, not two
    # models. Should one fail after the probe passed, the layers before it stay packed: either
    # kind of layer computes the same Linear.
    packed_any = False
    linears.reverse()
    while linears:
        name, linear = linears.pop()  # no reference left here once it is swapped out: its weight is freed
        try:
            with torch.inference_mode():
                packed = PackedLinear(linear)
        except (RuntimeError, NotImplementedError) as exc:
            logger.debug("oneDNN Linear failed on %s (%s): it and the rest keep nn.Linear", name, exc)
            break
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, packed)
        del linear, packed
        packed_any = True
    return packed_any

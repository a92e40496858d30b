"""oneDNN for the local model's `Linear` layers on the CPU: weights packed once at load.

PyTorch's CPU `Linear` calls its BLAS (MKL in the official builds), which on AMD CPUs runs well
below what the vector units can do; oneDNN's own kernels do not. On this project's 2-core AMD EPYC
development machine, in a one-off microbenchmark (float32, min of 5 calls), ViT-L/14's MLP layer
at a batch of 16 (4112 x 1024 @ 1024 x 4096) ran at 70 GFLOP/s through
`torch.nn.functional.linear` and at 104-107 GFLOP/s through oneDNN, packed or not;
`benchmarks/pipeline_peer.py` measures the whole pipeline. The MLP blocks' activation (QuickGELU
or GELU) runs inside `fc1`'s kernel as a oneDNN post-op (`FusedMLP`). Imported only by
`clip_client.local`, which needs torch anyway.
"""

from __future__ import annotations

import logging

import torch

from ._constants import LOGGER_NAME

__all__ = ["FusedMLP", "PackedLinear", "pack_linears"]

logger = logging.getLogger(LOGGER_NAME)


class PackedLinear(torch.nn.Module):
    """`nn.Linear.forward` through oneDNN (`torch.ops.mkldnn._linear_pointwise`), its weight
    reordered once into oneDNN's blocked layout. Inference only: the packed weight has no gradient.

    `unary`/`algorithm` name a oneDNN eltwise post-op applied to the output inside the same kernel
    (PyTorch's `mkldnn` fusion names: "none", "swish" (x * sigmoid(x)), "gelu" with algorithm "none"
    (erf) or "tanh"); `scale` multiplies the packed weight and `bias_scale` the bias (how `FusedMLP`
    folds QuickGELU's 1.702 into the layers)."""

    def __init__(
        self,
        linear: torch.nn.Linear,
        *,
        unary: str = "none",
        algorithm: str = "",
        scale: float = 1.0,
        bias_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.unary, self.algorithm = unary, algorithm
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), None)
        if scale != 1.0:
            # in place on the packed copy: a scaled copy of a large weight made before packing
            # would be freed after it, and glibc's heap keeps such holes (+1 GB at a ViT-L/14 load)
            self.packed.mul_(scale)
        self.bias = None if linear.bias is None else _scaled(linear.bias, bias_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(
            x, self.packed, self.bias, self.unary, [], self.algorithm
        )
        return out

    def extra_repr(self) -> str:
        fused = "" if self.unary == "none" else f", fused {self.unary}"
        return f"in_features={self.in_features}, out_features={self.out_features}, oneDNN packed{fused}"


def _scaled(tensor: torch.Tensor, scale: float) -> torch.Tensor:
    """`tensor * scale` computed in float32 and cast back (`tensor` itself when scale is 1)."""
    tensor = tensor.detach()
    return tensor if scale == 1.0 else (tensor.float() * scale).to(tensor.dtype)


QUICK_GELU_ALPHA = 1.702
"""QuickGELU(x) = x * sigmoid(1.702 x): OpenAI CLIP's activation (transformers' `QuickGELUActivation`)."""


class FusedMLP(torch.nn.Module):
    """A transformer MLP block, `fc2(activation(fc1(x)))`, with the activation fused into `fc1`'s
    oneDNN kernel as a post-op, so the activation's three elementwise passes over the
    (tokens x 4 x width) hidden tensor are not made: 13% of a ViT-L/14 forward pass on the CPU
    (`torch.profiler`, float32, batch 8, 2 threads: `mul` and `sigmoid` 0.53 s of 4.03 s).

    * exact GELU (transformers' `GELUActivation`, `nn.GELU()`): oneDNN's `gelu` post-op, algorithm
      "none" (erf);
    * QuickGELU: oneDNN's `swish` post-op computes x * sigmoid(x) with no alpha, so `fc1` is packed
      with its weight and bias times 1.702, giving 1.702 * QuickGELU(y), and `fc2`'s weight (not
      its bias) is packed divided by 1.702. The same function, rounded differently (a relative
      difference of about 1e-6 on the block's output)."""

    def __init__(self, fc1: torch.nn.Linear, fc2: torch.nn.Linear, activation: str) -> None:
        super().__init__()
        if activation == "quick_gelu":
            self.fc1 = PackedLinear(fc1, unary="swish", scale=QUICK_GELU_ALPHA, bias_scale=QUICK_GELU_ALPHA)
            self.fc2 = PackedLinear(fc2, scale=1.0 / QUICK_GELU_ALPHA)
        elif activation == "gelu":
            self.fc1 = PackedLinear(fc1, unary="gelu", algorithm="none")
            self.fc2 = PackedLinear(fc2)
        else:
            raise ValueError(f"activation must be 'quick_gelu' or 'gelu', not {activation!r}")

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc2(self.fc1(hidden_states))
        return out


def _mlp_activation(module: torch.nn.Module) -> str | None:
    """'quick_gelu' or 'gelu' when `module` is an MLP block this module can fuse: plain `fc1` and
    `fc2` Linear layers and an activation known by its class (transformers' `QuickGELUActivation`,
    `GELUActivation` on `nn.functional.gelu`, or `nn.GELU(approximate="none")`), else None. The
    block's forward is not inspected here; `pack_linears` checks the fused block against it."""
    fc1, fc2 = getattr(module, "fc1", None), getattr(module, "fc2", None)
    act = getattr(module, "activation_fn", None)
    if type(fc1) is not torch.nn.Linear or type(fc2) is not torch.nn.Linear or act is None:
        return None
    kind = type(act).__name__
    if kind == "QuickGELUActivation":
        return "quick_gelu"
    if kind == "GELUActivation" and getattr(act, "act", None) is torch.nn.functional.gelu:
        return "gelu"
    if isinstance(act, torch.nn.GELU) and act.approximate == "none":
        return "gelu"
    return None


def pack_linears(model: torch.nn.Module, dtype: torch.dtype) -> bool:
    """Swap each `nn.Linear` of `model` (on the CPU) for a `PackedLinear`, and each MLP block whose
    activation can be fused (`_mlp_activation`) for a `FusedMLP`, once one such block of each
    activation has been checked against its own forward (`_fuses`). Returns False, and leaves
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
    # One layer (or MLP block) at a time, so that the load's peak memory is the model plus one
    # block, not two models. Should one fail after the probe passed, the layers before it stay
    # packed: either kind of layer computes the same Linear.
    mlps = {name: kind for name, m in model.named_modules() if (kind := _mlp_activation(m))}
    inside = {f"{name}.{fc}" for name in mlps for fc in ("fc1", "fc2")}
    units = [(name, None) for name, _ in linears if name not in inside] + list(mlps.items())
    checked: dict[str, bool] = {}  # activation -> the fused block agreed with the original
    del linears
    packed_any = False
    units.reverse()
    while units:
        name, activation = units.pop()
        original = model.get_submodule(name)
        try:
            with torch.inference_mode():
                if activation is not None and activation not in checked:
                    checked[activation] = _fuses(original, activation, dtype)
                if activation is not None and checked[activation]:
                    packed: torch.nn.Module = FusedMLP(*_layers(original), activation)
                elif activation is not None:  # a block whose fused form disagreed: its two layers
                    fc1, fc2 = _layers(original)
                    original.fc1, original.fc2 = PackedLinear(fc1), PackedLinear(fc2)
                    packed_any = True
                    continue
                else:
                    assert isinstance(original, torch.nn.Linear)
                    packed = PackedLinear(original)
        except (RuntimeError, NotImplementedError) as exc:
            logger.debug("oneDNN Linear failed on %s (%s): it and the rest keep nn.Linear", name, exc)
            break
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, packed)
        del original, packed  # no reference left here once it is swapped out: its weights are freed
        packed_any = True
    return packed_any


def _fuses(block: torch.nn.Module, activation: str, dtype: torch.dtype) -> bool:
    """Whether `FusedMLP` of `block` agrees with `block`'s own forward on random input (checked
    once per activation per model: a block whose forward is not `fc2(act(fc1(x)))`, or a build
    whose oneDNN lacks the post-op, keeps its two layers packed separately)."""
    try:
        fc1, fc2 = _layers(block)
        x = torch.randn(2, 3, fc1.in_features, dtype=dtype, generator=torch.Generator().manual_seed(0))
        expected = block(x).float()
        got = FusedMLP(fc1, fc2, activation)(x).float()
    except (RuntimeError, AttributeError, NotImplementedError, TypeError) as exc:
        logger.debug("oneDNN fused %s MLP unavailable (%s): packing its layers apart", activation, exc)
        return False
    tolerance = 1e-4 if dtype == torch.float32 else 5e-2
    scale = float(expected.abs().max()) or 1.0
    agrees = got.shape == expected.shape and bool((got - expected).abs().max() <= tolerance * scale)
    if not agrees:
        logger.debug("oneDNN fused %s MLP disagrees with the block: packing its layers apart", activation)
    return agrees


def _layers(block: torch.nn.Module) -> tuple[torch.nn.Linear, torch.nn.Linear]:
    """An MLP block's `fc1` and `fc2` (`_mlp_activation` has checked that both are `nn.Linear`)."""
    fc1, fc2 = block.fc1, block.fc2
    assert isinstance(fc1, torch.nn.Linear)
    assert isinstance(fc2, torch.nn.Linear)
    return fc1, fc2

"""The model's building blocks: the fusable MLP (``mlp``), the transposed-convolution decoder
(``ConvDecoder``) and per-layer standard normals from the run's noise stream (``randn_layers``).

Every MLP is an ``nn.Sequential`` of Linear and LeakyReLU(0.2) layers ending in a Linear, the family
``jebm_kernels.mlp_spec_from_sequential`` reads, so a fused backend can run a chain through it.
"""
from __future__ import annotations

import math

import torch
from torch import nn

import jebm_kernels as jk

__all__ = ["mlp", "randn_layers", "ConvDecoder", "LEAK", "LOG_2PI", "ACTIVATIONS"]

LEAK = 0.2
LOG_2PI = math.log(2 * math.pi)


# The hidden activations an MLP of the model may use (all in the family jebm_kernels fuses).
ACTIVATIONS = {
    "leaky_relu": lambda: nn.LeakyReLU(LEAK),
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "softplus": nn.Softplus,
    "relu": nn.ReLU,
    "elu": nn.ELU,
}


def mlp(sizes: list[int], activation: str = "leaky_relu") -> nn.Sequential:
    """Linear, act, ..., Linear (act = LeakyReLU(0.2) by default, or one of ``ACTIVATIONS``): the
    family jebm_kernels can fuse (no trailing act).

    With a bounded activation (``"tanh"``) the output is bounded for fixed weights: |out_j| <=
    |b_j| + sum_i |W_ji|, whatever the input."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, got {activation!r}")
    mods: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        if i:
            mods.append(ACTIVATIONS[activation]())
        mods.append(nn.Linear(sizes[i], sizes[i + 1]))
    return nn.Sequential(*mods)


def randn_layers(n: int, dims, generator=None, *, device=None, dtype=torch.float32) -> list[torch.Tensor]:
    """Standard normals [n, d_l] per layer. A PhiloxGenerator draws them from its stream (and
    advances it), so chain starts are part of the same reproducible noise as the Langevin steps."""
    dims = [int(d) for d in dims]
    if isinstance(generator, jk.PhiloxGenerator):
        total = n * sum(dims)
        flat = jk.philox_randn(generator.seed, generator.take(total), total, device=device).to(dtype)
        return [c.reshape(n, d) for c, d in zip(flat.split([n * d for d in dims]), dims)]
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError("generator must be a jebm_kernels.PhiloxGenerator, a torch.Generator or None; "
                        f"got {type(generator).__name__}")
    return [torch.randn(n, d, generator=generator, device=device, dtype=dtype) for d in dims]


class ConvDecoder(nn.Module):
    """Transposed convolutions z_1 -> [C, H, W] in [-1, 1] (the LEBM / CVPR CIFAR-10 generator:
    a kernel of H/4 to an H/4 map of ngf*16 channels, two stride-2 upsamplings, a 3x3 output).
    H = W = 32 gives the papers' shapes; any square size divisible by 4 works."""

    def __init__(self, z_dim: int, image_shape, ngf: int = 64):
        super().__init__()
        C, H, W = image_shape
        if H != W or H % 4:
            raise ValueError(f"the conv decoder needs square images with a side divisible by 4, got {H}x{W}; "
                             "use decoder='mlp'")
        self.z_dim = z_dim
        self.net = nn.Sequential(
            nn.ConvTranspose2d(z_dim, ngf * 16, H // 4, 1, 0), nn.LeakyReLU(LEAK),
            nn.ConvTranspose2d(ngf * 16, ngf * 8, 4, 2, 1), nn.LeakyReLU(LEAK),
            nn.ConvTranspose2d(ngf * 8, ngf * 4, 4, 2, 1), nn.LeakyReLU(LEAK),
            nn.ConvTranspose2d(ngf * 4, C, 3, 1, 1), nn.Tanh(),
        )

    def forward(self, z1: torch.Tensor) -> torch.Tensor:
        return self.net(z1.reshape(z1.shape[0], self.z_dim, 1, 1))

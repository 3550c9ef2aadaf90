"""The inference model q_phi(z | x) of the variational scheme, and how a run config builds it."""
from __future__ import annotations

import torch
from torch import nn

from .blocks import LEAK, LOG_2PI, mlp

__all__ = ["InferenceModel", "build_inference_model"]


class InferenceModel(nn.Module):
    """q_phi(z | x) for the variational scheme: bottom-up features h(x), then top-down
    q(z_L | x) = N(mu, sigma^2) from h, q(z_l | z_{l+1}, x) from concat(h, z_{l+1}),
    reparameterised (z = mu + sigma * eps), sigma = softplus(raw) + 1e-3.

    The encoder is an MLP on flattened pixels, or (``encoder="conv"``) the CVPR code's conv
    stack (3x3, then two stride-2 4x4 convolutions) for 32x32 images."""

    SIGMA_FLOOR = 1e-3

    def __init__(self, image_shape, dims, *, hidden=(256, 256), head_hidden=(128,), encoder: str = "mlp",
                 nif: int = 32):
        super().__init__()
        C, H, W = image_shape
        self.dims = tuple(int(d) for d in dims)
        hidden = [int(h) for h in hidden]
        if encoder == "mlp":
            self.features = nn.Sequential(nn.Flatten(), mlp([C * H * W, *hidden]), nn.LeakyReLU(LEAK))
        elif encoder == "conv":
            if H % 4 or W % 4:
                raise ValueError(f"the conv encoder needs H and W divisible by 4, got {H}x{W}")
            self.features = nn.Sequential(
                nn.Conv2d(C, nif * 4, 3, 1, 1), nn.LeakyReLU(LEAK),
                nn.Conv2d(nif * 4, nif * 8, 4, 2, 1), nn.LeakyReLU(LEAK),
                nn.Conv2d(nif * 8, nif * 16, 4, 2, 1), nn.LeakyReLU(LEAK),
                nn.Flatten(), mlp([nif * 16 * (H // 4) * (W // 4), *hidden]), nn.LeakyReLU(LEAK))
        else:
            raise ValueError(f"encoder must be 'mlp' or 'conv', got {encoder!r}")
        h = hidden[-1]
        L = len(self.dims)
        self.top = mlp([h, *head_hidden, 2 * self.dims[-1]])
        self.heads = nn.ModuleList(mlp([h + self.dims[l + 1], *head_hidden, 2 * self.dims[l]]) for l in range(L - 1))

    def _dist(self, out):
        mu, raw = out.chunk(2, dim=-1)
        return mu, nn.functional.softplus(raw) + self.SIGMA_FLOOR

    def forward(self, x: torch.Tensor, noise: list[torch.Tensor] | None = None):
        """(z list [B, d_l], log q(z | x) [B]). ``noise`` (standard normals per layer) makes the
        draw reproducible; None draws with torch's default generator. With noise of zeros the
        result is the top-down chain of means."""
        h = self.features(x)
        L = len(self.dims)
        if noise is None:
            noise = [torch.randn(x.shape[0], d, dtype=x.dtype, device=x.device) for d in self.dims]
        z: list[torch.Tensor] = [None] * L  # type: ignore[list-item]
        log_q = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for l in reversed(range(L)):
            out = self.top(h) if l == L - 1 else self.heads[l](torch.cat([h, z[l + 1]], dim=-1))
            mu, sigma = self._dist(out)
            z[l] = mu + sigma * noise[l]
            log_q = log_q - (0.5 * noise[l].pow(2) + torch.log(sigma) + 0.5 * LOG_2PI).sum(-1)
        return z, log_q


def build_inference_model(cfg: dict, image_shape) -> InferenceModel:
    """The inference model of a run config (``jebm.train.presets``) for images of ``image_shape``."""
    return InferenceModel(image_shape, cfg["dims"], hidden=cfg["infer_hidden"], head_hidden=cfg["infer_head_hidden"],
                          encoder="conv" if cfg["decoder"] == "conv" else "mlp", nif=cfg["nif"])

"""What the kernels' bindings are checked against when a test calls them directly (without
jebm_kernels' Python backends): torch's own definition of every activation in
jebm_kernels/activation_table.py, and a small prior written out in torch with the argument lists
of the CPU and CUDA bindings' Model for the same weights.

torch.nn.functional is the oracle here, not the package's reference backend (itself code under
test), so an activation the kernels gain is checked against torch as soon as the table has it.
Used by tests/test_cpu_bindings.py and tests/test_cuda_build.py.
"""
import math

import torch
import torch.nn.functional as F

from jebm_kernels import activation_table

# name -> f(h, param), as torch.nn.functional computes it; one entry per row of the table
TORCH_ACTIVATIONS = {
    "identity": lambda h, p: h,
    "leaky_relu": lambda h, p: F.leaky_relu(h, p),
    "gelu": lambda h, p: F.gelu(h),
    "gelu_tanh": lambda h, p: F.gelu(h, approximate="tanh"),
    "silu": lambda h, p: F.silu(h),
    "softplus": lambda h, p: F.softplus(h, beta=p),
    "tanh": lambda h, p: torch.tanh(h),
    "relu": lambda h, p: torch.relu(h),
    "elu": lambda h, p: F.elu(h, p),
}
# a parameter other than torch's default where the activation has one (0 where it has none)
TEST_PARAM = {a.name: (0.0 if a.param is None else {"leaky_relu": 0.2, "softplus": 1.5, "elu": 0.7}[a.name])
              for a in activation_table.TABLE}
ACTIVATIONS = activation_table.ACTIVATIONS


def torch_activation(h: torch.Tensor, name: str, param: float) -> torch.Tensor:
    return TORCH_ACTIVATIONS[name](h, param)


class HandPrior:
    """A two-layer prior, dims (d1, d2), with every MLP using one activation ``act``:
    U = -(f_1(z_1) + f_2(z_2) + f_0(concat z)) + [eps-space] |eps|^2 / 2 + [z-space] |z|^2 / 2,
    z-space: z = x (base_sigma 1 on both layers);
    eps-space: z_2 = eps_2, z_1 = mu(z_2) + (exp(raw(z_2)) + floor) eps_1, (mu, raw) = g(z_2).
    Odd widths throughout; the MLPs' weights are plain float32 tensors."""

    def __init__(self, act: str, space: str, dims=(3, 17), hidden=(13, 9), seed=0):
        gen = torch.Generator().manual_seed(seed)
        self.act, self.param, self.space, self.dims = act, TEST_PARAM[act], space, tuple(dims)
        d1, d2 = dims

        def mlp(sizes, gain=1.0):
            ws = [(torch.rand(o, i, generator=gen) * 2 - 1) * gain / math.sqrt(i) for i, o in zip(sizes, sizes[1:])]
            bs = [(torch.rand(o, generator=gen) * 2 - 1) * gain / math.sqrt(i) for i, o in zip(sizes, sizes[1:])]
            return ws, bs

        self.f1, self.f2 = mlp([d1, *hidden, 1]), mlp([d2, *hidden, 1])
        self.f0 = mlp([d1 + d2, hidden[0], 1])
        self.gauss = mlp([d2, hidden[1], 2 * d1], gain=0.5) if space == "eps" else None
        self.floor = 0.01

    def _mlp(self, m, h):
        ws, bs = m
        for i, (w, b) in enumerate(zip(ws, bs)):
            h = F.linear(h, w, b)
            if i + 1 < len(ws):
                h = torch_activation(h, self.act, self.param)
        return h

    def energy(self, xs):
        x1, x2 = xs
        if self.space == "eps":
            out = self._mlp(self.gauss, x2)
            d1 = self.dims[0]
            z1 = out[:, :d1] + (torch.exp(out[:, d1:]) + self.floor) * x1
            z2 = x2
        else:
            z1, z2 = x1, x2
        f = self._mlp(self.f1, z1) + self._mlp(self.f2, z2) + self._mlp(self.f0, torch.cat([z1, z2], 1))
        return -f.squeeze(1) + 0.5 * ((x1 ** 2).sum(1) + (x2 ** 2).sum(1))

    def mlps(self):
        """(sizes, weights, biases) of the MLPs in the bindings' order: f_1, f_2, f_0, [g]."""
        out = []
        for ws, bs in [self.f1, self.f2, self.f0] + ([self.gauss] if self.gauss else []):
            out.append(([ws[0].shape[1]] + [w.shape[0] for w in ws], ws, bs))
        return out

    def layout(self):
        """The keyword arguments both bindings' Model share."""
        eps = self.space == "eps"
        return dict(dims=list(self.dims), terms=[0, 1], joint=2, gaussians=[3] if eps else [],
                    sigma_floors=[self.floor] if eps else [], space=1 if eps else 0, energy_sign=-1.0,
                    base_sigma=[] if eps else [1.0, 1.0], prior_sigma=[])

    def cpu_model_args(self):
        """_C.Model(**args): weights by address (keep self alive while the model lives)."""
        code = activation_table.CODES[self.act]
        mlps = [(sizes, [w.data_ptr() for w in ws], [b.data_ptr() for b in bs], code, self.param,
                 activation_table.CODES["identity"]) for sizes, ws, bs in self.mlps()]
        return dict(self.layout(), mlps=mlps, decoder=-1, sigma_x=1.0)

    def cuda_model_args(self):
        """(_cuda.Model(**args), the weight buffer): per Linear W^T, W and the bias at float offsets
        into one buffer."""
        code = activation_table.CODES[self.act]
        chunks, mlps, at = [], [], 0

        def put(t):
            nonlocal at
            chunks.append(t.reshape(-1))
            at += t.numel()
            return at - t.numel()

        for sizes, ws, bs in self.mlps():
            wt = [put(w.t().contiguous()) for w in ws]
            w_ = [put(w) for w in ws]
            b_ = [put(b) for b in bs]
            mlps.append((sizes, wt, w_, b_, code, self.param, activation_table.CODES["identity"]))
        buf = torch.cat(chunks).contiguous()
        return dict(self.layout(), mlps=mlps, weights=buf.data_ptr(), weights_numel=buf.numel()), buf

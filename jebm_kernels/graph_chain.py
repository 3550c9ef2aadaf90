"""``GraphSafeChain``: a K-step Langevin chain that a CUDA graph can capture and replay with fresh
noise each time; the posterior through a conv decoder is the case it exists for.

A captured graph replays its kernels with the arguments they had at capture, so a Philox offset
passed as a host int would be baked in and every replay would draw the same noise. Here seed and
offset live in a device int64 tensor ``philox``: every kernel reads it on the device, and the last
captured operation adds ``n_steps * stride`` to the offset, on the device. Replay k (counting
from 0 after ``capture``) therefore draws the noise of steps k*K .. (k+1)*K - 1 of the stream:
exactly what ``langevin(energy, z, n_steps=K, generator=(seed, offset0 + k * K * stride))`` draws.

One step, with nothing read back on the host inside the loop:
- a fusable prior (``PriorEnergy``, an ``nn.Sequential`` of the MLP family): the K steps are one
  ``jebm::prior_chain`` op;
- any other energy (a ``PosteriorEnergy`` with a conv decoder, any torch callable): autograd
  gives dU/dz (torch ops: capturable), ``jebm::multi_layer_update`` draws the noise and moves every
  layer in one launch, and MALA's accept/reject is ``chain.run_chain``'s, on the device.
The implementation behind each op is ``dispatch.select``'s choice, as for every other call.

On CPU tensors the same object runs eagerly (the ops' CPU kernels, or with ``kernel="triton"``
the Triton kernels under ``TRITON_INTERPRET=1``): that is how it is tested without a GPU.
"""
from __future__ import annotations

import torch

from . import dispatch
from .arguments import make_problem
from .chain import autograd_energy_and_grad, run_chain
from .device_tables import live_tables
from .philox import philox_tensor, signed_seed, unsigned_seed
from .prior_chain.encoding import encode_prior
from .prior_chain.op import run_prior_chain_op
from .update.op import run_update_op

__all__ = ["GraphSafeChain"]


class GraphSafeChain:
    """K steps of ``langevin`` on fixed input buffers, with the noise position on the device.

    Args are ``langevin``'s (``energy``, ``z`` gives the shapes and the first start, ``n_steps``,
    ``step_size``, ``noise_scale``, ``prior_sigma``, ``generator``, ``mala``, ``precision``: "auto"
    reads the caller's autocast region once, here: a captured graph keeps the precision it was
    built with); float32 only.
    ``kernel``: "auto" (the custom ops, on ``dispatch``'s choice: C++ on CPU, csrc's CUDA kernel or
    Triton on a GPU) or the name of a backend to use ("triton": the Triton kernels, which CPU
    tensors run under ``TRITON_INTERPRET=1``; "cuda"; "cpu"; "reference": the torch loop, its noise
    computed from the device tensor, so it too can be captured).

    ``chain(z)`` copies ``z`` into the input buffers, runs (or replays, after ``capture()``) the K
    steps and returns the final state in ``z``'s structure. After capture the returned tensors
    are the graph's static outputs: the next replay overwrites them (clone to keep). The observed
    images of a ``PosteriorEnergy`` are read from its ``x_obs`` at replay time: ``x_obs.copy_()``
    new images into it between replays.
    """

    def __init__(self, energy, z, *, n_steps: int, step_size, noise_scale: float = 1.0, prior_sigma=None,
                 generator=None, mala: bool = False, kernel: str = "auto", precision: str = "auto"):
        if kernel != "auto" and kernel not in dispatch.PRIORITY:
            raise ValueError(f"kernel must be 'auto' or a backend name {list(dispatch.PRIORITY)}, got {kernel!r}")
        if kernel != "auto" and dispatch.REGISTRY[kernel].unavailable_reason() is not None:
            raise RuntimeError(f"kernel {kernel!r} is not available here: "
                               f"{dispatch.REGISTRY[kernel].unavailable_reason()}")
        problem, _ = make_problem(energy, z, n_steps=n_steps, step_size=step_size, noise_scale=noise_scale,
                                  prior_sigma=prior_sigma, generator=generator, mala=mala, return_info=False,
                                  precision=precision)
        if problem.dtype != torch.float32:
            raise TypeError(f"GraphSafeChain runs float32 chains (the fused kernels' type), got {problem.dtype}")
        self.problem = problem
        self.kernel = kernel
        self._inputs = [t.clone() for t in problem.z]  # the static input buffers
        problem.z = self._inputs
        self.seed, self.start_offset = problem.seed, problem.offset
        self.philox = philox_tensor(problem.seed, problem.offset, device=problem.device)
        self.chunk = problem.n_steps * problem.stride  # counters one chain uses
        # a spec that describes the energy itself (PriorEnergy, an MLP nn.Sequential) is fused; a traced
        # reading is confirmed per call by langevin, which a replayed graph cannot do: it runs the loop
        reading = problem.reading
        self._fused = reading.spec is not None and reading.posterior is None and reading.recognition is None
        self._encoded = encode_prior(problem.spec) if self._fused else None
        self._graph: torch.cuda.CUDAGraph | None = None
        self._static_out: list[torch.Tensor] | None = None
        self._pinned: list[torch.Tensor] = []

    # ------------------------------------------------------------------------------ the chain

    def step(self) -> list[torch.Tensor]:
        """K steps from the input buffers, then ``philox``'s offset += K * stride; device work only,
        so it can be captured. Returns the final layers [B, d_l]."""
        p = self.problem
        if self._fused:
            structure, settings, params = self._encoded
            args = (p.z, params, structure, settings, self.philox, list(p.step_sizes), p.noise_scale,
                    list(p.prior_sigma or ()), p.n_steps, p.mala, False, "bf16" if p.precision.bf16 else "fp32")
            out, _ = (torch.ops.jebm.prior_chain(*args) if self.kernel == "auto"
                      else run_prior_chain_op(*args, backend=self.kernel))
        else:
            with p.precision.context(p.device.type):
                out, _ = run_chain(p, autograd_energy_and_grad(p), self._propose)
        self.philox[1:].add_(self.chunk)
        return out

    def _propose(self, problem, x, g, k):
        args = (x, g, self.philox, k * problem.stride, list(problem.step_sizes), problem.noise_scale, problem.mala)
        moved, noise, uniform = (torch.ops.jebm.multi_layer_update(*args) if self.kernel == "auto"
                                 else run_update_op(*args, backend=self.kernel))
        return moved, (noise if problem.mala else None), (uniform if problem.mala else None)

    def set_input(self, z) -> None:
        """Copy new starting points (``z``'s structure and shapes, as at construction) into the buffers."""
        layers = list(z) if isinstance(z, (list, tuple)) else [z]
        if len(layers) != len(self._inputs):
            raise ValueError(f"z has {len(layers)} layers; this chain was built for {len(self._inputs)}")
        for i, (t, buf, shape) in enumerate(zip(layers, self._inputs, self.problem.shapes)):
            if not torch.is_tensor(t) or t.shape != shape:
                got = tuple(t.shape) if torch.is_tensor(t) else type(t).__name__
                raise ValueError(f"z[{i}] must have shape {tuple(shape)} (as at construction), got {got}")
            buf.copy_(t.reshape(buf.shape))

    def __call__(self, z=None):
        """Run (or replay) one chain of K steps from ``z`` (or from the buffers as they are)."""
        if z is not None:
            self.set_input(z)
        if self._graph is not None:
            self._graph.replay()
            out = self._static_out
        else:
            out = self.step()
        return self.problem.restructure(out)

    # ------------------------------------------------------------------------------- graphs

    def capture(self, warmup: int = 2) -> "GraphSafeChain":
        """Capture one chain into a ``torch.cuda.CUDAGraph``; later calls replay it. The warm-up
        runs (which compile the Triton kernels) leave the noise position where it was."""
        if self.problem.device.type != "cuda":
            raise RuntimeError(f"CUDA graphs need CUDA tensors; this chain is on {self.problem.device} "
                               "(call it eagerly there)")
        saved = self.philox.clone()
        side = torch.cuda.Stream(device=self.problem.device)
        side.wait_stream(torch.cuda.current_stream(self.problem.device))
        with torch.cuda.stream(side):
            for _ in range(warmup):
                self.step()
        torch.cuda.current_stream(self.problem.device).wait_stream(side)
        self.philox.copy_(saved)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                static_out = self.step()
        except Exception:
            self.philox.copy_(saved)  # the chain stays usable, eagerly
            raise
        self._graph, self._static_out = graph, static_out
        # the cached device tables the captured kernels read must outlive the graph
        self._pinned = live_tables()
        return self

    @property
    def captured(self) -> bool:
        """Whether calls replay a captured CUDA graph."""
        return self._graph is not None

    def set_position(self, seed: int, offset: int) -> None:
        """Start the next chain at Philox (seed, offset): two fills on the device (no host-to-device
        copy, so it may sit between replays of a captured graph without a sync)."""
        if not isinstance(seed, int) or not 0 <= seed < 2**64:
            raise ValueError(f"seed must be an int in [0, 2**64), got {seed!r}")
        if not isinstance(offset, int) or not 0 <= offset < 2**63:
            raise ValueError(f"offset must be an int in [0, 2**63), got {offset!r}")
        self.philox[0].fill_(signed_seed(seed))
        self.philox[1].fill_(offset)

    def state(self) -> tuple[int, int]:
        """(seed, offset) where the next chain starts (reads the device tensor: a host sync)."""
        seed, offset = self.philox.tolist()
        return unsigned_seed(seed), offset

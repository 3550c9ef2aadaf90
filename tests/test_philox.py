"""The torch Philox stream against Triton's own tl.randn / tl.rand / tl.randint4x."""
import pytest
import torch

from jebm_kernels import PhiloxGenerator, philox_rand, philox_randn
from jebm_kernels.philox import philox_randint4x

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")


@triton.jit
def _triton_stream(normal_ptr, uniform_ptr, w0_ptr, w1_ptr, seed, offset, n, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = i < n
    counter = offset + i.to(tl.int64)  # a 64-bit counter, as every jebm backend uses
    tl.store(normal_ptr + i, tl.randn(seed, counter), mask=mask)
    tl.store(uniform_ptr + i, tl.rand(seed, counter), mask=mask)
    w0, w1, _, _ = tl.randint4x(seed, counter)
    tl.store(w0_ptr + i, w0.to(tl.int64) & 0xFFFFFFFF, mask=mask)
    tl.store(w1_ptr + i, w1.to(tl.int64) & 0xFFFFFFFF, mask=mask)


def _triton(seed, offset, n):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    normal = torch.empty(n, device=device)
    uniform = torch.empty(n, device=device)
    w0 = torch.empty(n, dtype=torch.int64, device=device)
    w1 = torch.empty(n, dtype=torch.int64, device=device)
    block = 128
    _triton_stream[(triton.cdiv(n, block),)](normal, uniform, w0, w1, seed, offset, n, BLOCK=block)
    return normal.cpu(), uniform.cpu(), w0.cpu(), w1.cpu()


@pytest.mark.parametrize("seed,offset,n", [
    (0, 0, 257),
    (12345, 7, 1000),
    (2**32 + 5, 3, 333),              # seed above 2^32: both key words used
    (2**40 + 17, 2**32 - 100, 300),   # the counter's low word wraps inside the block
    (2**63 + 99, 2**33 + 1, 129),     # offset past 2^32, seed past 2^63
    (2**64 - 1, 2**63 + 11, 64),
])
def test_stream_equals_triton(seed, offset, n):
    normal, uniform, w0, w1 = _triton(seed, offset, n)
    a, b, _, _ = philox_randint4x(seed, offset, n)
    assert torch.equal(a, w0), "Philox word 0 differs from Triton"
    assert torch.equal(b, w1), "Philox word 1 differs from Triton"
    assert torch.equal(philox_rand(seed, offset, n), uniform), "uniforms differ from tl.rand"
    # The words are exact; the normals differ only by float32 rounding of log/sqrt/cos
    # (numpy's and torch's libm differ by at most a few ulp): |n| < 6, so 2e-6 is ~4 ulp.
    assert (philox_randn(seed, offset, n) - normal).abs().max().item() <= 2e-6


def test_stream_is_a_function_of_the_counter_only():
    whole = philox_randn(99, 10, 100)
    assert torch.equal(whole[40:], philox_randn(99, 50, 60))


def test_normals_look_normal():
    x = philox_randn(2024, 0, 200_000).double()
    assert abs(x.mean().item()) < 0.01 and abs(x.var().item() - 1) < 0.01
    assert abs((x ** 4).mean().item() - 3) < 0.05


def test_generator_offsets_advance_and_seed_stays():
    g = PhiloxGenerator.from_torch(torch.Generator().manual_seed(0))
    seed = g.seed
    assert g.take(10) == 0 and g.take(5) == 10 and g.offset == 15 and g.seed == seed
    again = PhiloxGenerator.from_torch(torch.Generator().manual_seed(0))
    assert again.seed == seed, "a seeded torch.Generator must give a reproducible Philox seed"


@pytest.mark.parametrize("bad", [dict(seed=-1), dict(seed=2**64), dict(offset=-3), dict(seed=1.5)])
def test_bad_seed_or_offset_is_rejected(bad):
    args = dict(seed=1, offset=0, n=4) | bad
    with pytest.raises(ValueError, match="seed|offset"):
        philox_randn(**args)

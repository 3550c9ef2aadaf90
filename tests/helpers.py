"""Shared test helpers."""
import torch


def assert_close_where(actual: torch.Tensor, expected: torch.Tensor, *, atol: float, rtol: float = 0.0, what=""):
    """Like torch.testing.assert_close, but the message says *where* the tensors differ most."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    diff = (actual.double() - expected.double()).abs()
    bound = atol + rtol * expected.double().abs()
    bad = diff > bound
    if bool(bad.any()):
        idx = tuple(int(i) for i in torch.nonzero(bad)[0])
        worst = tuple(int(i) for i in torch.unravel_index(torch.argmax(diff - bound), diff.shape))
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.numel()} elements differ; first at {idx}: "
            f"{actual[idx].item()!r} vs {expected[idx].item()!r}; worst at {worst}: "
            f"{actual[worst].item()!r} vs {expected[worst].item()!r} (atol={atol}, rtol={rtol})")

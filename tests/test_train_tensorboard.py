"""TensorBoard events (``jebm.train.tensorboard``): training writes every metrics.jsonl number and
the sample grids when the tensorboard package is installed; a resumed run appends, nothing twice."""
import json

import pytest

import jebm

TINY = dict(dims=[6, 3], ebm_hidden=[16], gauss_hidden=[16], dec_hidden=[32], prior_steps=3, post_steps=3,
            batch_size=50, n_samples=4)


def test_training_writes_tensorboard_events_when_installed(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    run = jebm.train(iters=4, out_dir=tmp_path / "tb", progress=False, sample_every=2, **TINY)
    assert list(run.run_dir.glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(run.run_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    lines = [json.loads(l) for l in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    for key in ("loss_recon", "loss_ebm", "sec_per_iter"):
        events = acc.Scalars(key)
        assert [e.step for e in events] == [l["iter"] for l in lines]
        assert [e.value for e in events] == pytest.approx([l[key] for l in lines], rel=1e-6)
    assert [e.step for e in acc.Images("samples")] == [2, 4]
    assert [e.step for e in acc.Images("reconstructions")] == [2, 4]
    # resuming to more iterations appends; nothing is logged twice
    jebm.train(iters=6, out_dir=run.run_dir, resume=True, progress=False)
    acc = EventAccumulator(str(run.run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("loss_recon")] == [1, 2, 3, 4, 5, 6]

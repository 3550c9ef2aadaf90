"""A small classifier trained on a run's own data set, whose features give an offline Frechet
distance (``jebm.evaluate.frechet.classifier_fd``) on every labelled data set, the 8x8 digits included, where
Inception's 299 x 299 features say little and need weights the user may not have.

Architecture (any image size, 1 or 3 channels): three 3x3 convolutions (32, 64 and 128 channels,
the last two with stride 2), global average pooling, a 128-unit layer (the features, after its
ReLU, as Inception's pool3 features are), then the class logits. Trained with Adam on the run's
training split (the same classes the model saw: a run with ``exclude_class`` trains it without
that class), with a fixed seed, so retraining gives the same classifier.

Saved with the run as ``classifier.pt`` (tensors and plain values, read with
``weights_only=True``): state dict, architecture, the data it was trained on, and its accuracy on
the test split, which says whether its features are worth measuring in.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..data import load_dataset
from ..train.checkpoint import save_checkpoint
from .inception import file_sha256

__all__ = ["SmallClassifier", "train_classifier", "save_classifier", "load_classifier", "ensure_classifier",
           "CLASSIFIER_NAME", "DEFAULT_STEPS"]

CLASSIFIER_NAME = "classifier.pt"
DEFAULT_STEPS = 500    # 0.96 test accuracy on the digits; three times as many steps gain under 0.01
_FORMAT = 1


class SmallClassifier(nn.Module):
    def __init__(self, in_channels: int, n_classes: int, width: int = 32, feature_dim: int = 128):
        super().__init__()
        self.arch = {"in_channels": in_channels, "n_classes": n_classes, "width": width, "feature_dim": feature_dim}
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(4 * w, feature_dim), nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C, H, W] in [-1, 1] -> [N, feature_dim]."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@torch.no_grad()
def _accuracy(clf: SmallClassifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    clf.eval()
    hits = sum(int((clf(images[i:i + batch_size]).argmax(1) == labels[i:i + batch_size]).sum())
               for i in range(0, images.shape[0], batch_size))
    return hits / max(1, images.shape[0])


def train_classifier(images: torch.Tensor, labels: torch.Tensor, *, steps: int = DEFAULT_STEPS,
                     batch_size: int = 128, lr: float = 1e-3, seed: int = 0) -> SmallClassifier:
    """Train a ``SmallClassifier`` on ``images`` [N, C, H, W] in [-1, 1] with int ``labels`` [N]."""
    if not torch.is_tensor(images) or images.dim() != 4 or images.shape[1] not in (1, 3) or images.shape[0] < 2:
        raise ValueError(f"the classifier needs images [N >= 2, 1 or 3, H, W]; got "
                         f"{tuple(images.shape) if torch.is_tensor(images) else type(images).__name__}")
    if labels is None:
        raise ValueError("the classifier Frechet distance needs a labelled data set (this one has no labels); "
                         "use FID with Inception weights (--fid-weights) instead")
    if not torch.is_tensor(labels) or labels.shape != (images.shape[0],) or int(labels.min()) < 0:
        raise ValueError(f"labels must be one int >= 0 per image; got shape {tuple(labels.shape)}")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"classifier steps must be an int >= 1; got {steps!r}")
    images, labels = images.float(), labels.long()
    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG alone
        torch.manual_seed(seed)
        clf = SmallClassifier(images.shape[1], int(labels.max()) + 1)
    opt = torch.optim.Adam(clf.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    b = min(batch_size, images.shape[0])
    order = torch.randperm(images.shape[0], generator=g)
    pos = 0
    clf.train()
    for _ in range(steps):
        if pos + b > order.numel():
            order, pos = torch.randperm(images.shape[0], generator=g), 0
        idx = order[pos:pos + b]
        pos += b
        loss = F.cross_entropy(clf(images[idx]), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return clf.eval()


def save_classifier(clf: SmallClassifier, path, info: dict) -> Path:
    # the same atomic write as the run's checkpoint (no previous file: that name belongs to the run's)
    return save_checkpoint({"format": _FORMAT, "arch": clf.arch, "state_dict": clf.state_dict(), "info": info},
                           path, keep_previous=False)


def load_classifier(path) -> tuple[SmallClassifier, dict]:
    p = Path(path)
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{p}: not a readable classifier file ({type(exc).__name__}: {exc}); delete it and it "
                         "will be retrained") from exc
    if not isinstance(obj, dict) or obj.get("format") != _FORMAT or "state_dict" not in obj:
        raise ValueError(f"{p}: not a jebm classifier file (format {_FORMAT}); delete it and it will be retrained")
    clf = SmallClassifier(**obj["arch"])
    clf.load_state_dict(obj["state_dict"])
    return clf.eval(), obj["info"]


def ensure_classifier(run_dir, cfg: dict, *, data_root=None, steps: int = DEFAULT_STEPS, seed: int = 0):
    """The run's classifier: loaded from ``run_dir/classifier.pt``, or trained on the run's training
    data and saved there first. Returns (classifier, info); info has the file's SHA-256."""
    path = Path(run_dir) / CLASSIFIER_NAME
    root = data_root if data_root is not None else cfg["data_root"]
    want = {"dataset": cfg["dataset"], "exclude_class": cfg["exclude_class"]}
    if path.is_file():
        clf, info = load_classifier(path)
        if any(info.get(k) != v for k, v in want.items()):
            raise ValueError(f"{path} was trained on {info.get('dataset')} (exclude_class "
                             f"{info.get('exclude_class')}), not this run's {want}; delete it to retrain")
    else:
        train = load_dataset(cfg["dataset"], root, split="train", exclude_class=cfg["exclude_class"])
        test = load_dataset(cfg["dataset"], root, split="test", exclude_class=cfg["exclude_class"])
        t0 = time.perf_counter()
        clf = train_classifier(train.images, train.labels, steps=steps, seed=seed)
        info = {**want, "steps": steps, "seed": seed, "n_train": len(train), "n_test": len(test),
                "train_accuracy": _accuracy(clf, train.images, train.labels),
                "test_accuracy": _accuracy(clf, test.images, test.labels) if test.labels is not None else None,
                "seconds": time.perf_counter() - t0, "torch_version": str(torch.__version__)}
        save_classifier(clf, path, info)
    return clf, {**info, "path": str(path), "sha256": file_sha256(path)}

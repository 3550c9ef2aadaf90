"""Inception-v3 up to its pool3 features (2048 per image), for FID with weights the user supplies.

Defined here rather than imported from torchvision: PyPI's torchvision wheel for torch 2.13 is the
CUDA build (it bundles libcudart and libnvjpeg, 7.7 MB, and pins ``torch==2.13.0``), which would
pull the CUDA torch onto machines that have the CPU one. Only the architecture is needed, and it
is small.

Module and parameter names follow torchvision's ``Inception3`` exactly, so two kinds of weights
files load with no renaming (``load_inception``):

- pytorch-fid's FID weights (``pt_inception-2015-12-05-6726825d.pth``), the TensorFlow FID graph
  ported to torch: 1008 output classes, and the TF graph's pooling quirks (average pools that
  exclude the padding, a max pool in the last block). FIDs comparable with the papers' need these.
- torchvision's ImageNet weights (``inception_v3_google-*.pth``): 1000 classes, torchvision's
  pooling. Their FIDs are internally consistent but not comparable with published numbers.

The kind is recognised from the classifier's width (``fc.weight``: 1008 rows = FID weights).
Input: images in [-1, 1] (the scale both weight sets expect, jebm's data scale), any size; they
are resized to 299 x 299 bilinearly (as pytorch-fid does) and gray images get three channels.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["InceptionV3Features", "load_inception", "file_sha256", "FEATURE_DIM"]

FEATURE_DIM = 2048
_FID_CLASSES = 1008      # the TF FID graph's classifier width
_TORCHVISION_CLASSES = 1000


class BasicConv2d(nn.Module):
    def __init__(self, cin: int, cout: int, **kwargs):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg_pool(x, fid: bool):
    # The TF graph's average pools ignore the zero padding; torchvision's count it.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=not fid)


class InceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int, fid: bool):
        super().__init__()
        self.fid = fid
        self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

    def forward(self, x):
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg_pool(x, self.fid))], 1)


class InceptionB(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(nn.Module):
    def __init__(self, cin: int, c7: int, fid: bool):
        super().__init__()
        self.fid = fid
        self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for m in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                  self.branch7x7dbl_5):
            d = m(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg_pool(x, self.fid))], 1)


class InceptionD(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    """``pool``: "avg" (torchvision), "avg_nopad" (TF graph, Mixed_7b), "max" (TF graph, Mixed_7c)."""

    def __init__(self, cin: int, pool: str):
        super().__init__()
        self.pool = pool
        self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        d = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
        if self.pool == "max":
            p = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        else:
            p = _avg_pool(x, self.pool == "avg_nopad")
        return torch.cat([self.branch1x1(x), b3, d, self.branch_pool(p)], 1)


class InceptionV3Features(nn.Module):
    """Inception-v3 from the image to the 2048 pool3 features (the FID feature space).

    ``fid=True`` builds the TF FID graph's variant (pytorch-fid's weights), ``False`` torchvision's.
    ``fc`` is kept only so that a weights file's classifier loads; ``forward`` never uses it.
    """

    def __init__(self, fid: bool = True):
        super().__init__()
        self.fid = fid
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, 32, fid)
        self.Mixed_5c = InceptionA(256, 64, fid)
        self.Mixed_5d = InceptionA(288, 64, fid)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, 128, fid)
        self.Mixed_6c = InceptionC(768, 160, fid)
        self.Mixed_6d = InceptionC(768, 160, fid)
        self.Mixed_6e = InceptionC(768, 192, fid)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, "avg_nopad" if fid else "avg")
        self.Mixed_7c = InceptionE(2048, "max" if fid else "avg")
        self.fc = nn.Linear(FEATURE_DIM, _FID_CLASSES if fid else _TORCHVISION_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, 1 or 3, H, W] in [-1, 1] -> [N, 2048] pool3 features."""
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"Inception expects images [N, 1 or 3, H, W]; got {tuple(x.shape)}")
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
                     "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"):
            x = getattr(self, name)(x)
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def load_inception(path: str | os.PathLike, *, device="cpu") -> InceptionV3Features:
    """Build the network for the weights at ``path`` (a torch state dict, read with
    ``weights_only=True``) and load them; eval mode. Raises ValueError for anything else."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"Inception weights {path}: no such file. FID needs a local weights file: pytorch-fid's "
                         "pt_inception-2015-12-05-6726825d.pth (FIDs comparable with the papers') or torchvision's "
                         "inception_v3_google-*.pth; nothing is downloaded")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"Inception weights {p}: not a readable torch file ({type(exc).__name__}: {exc})") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not torch.is_tensor(state.get("fc.weight")):
        raise ValueError(f"Inception weights {p}: expected an Inception-v3 state dict (torchvision key names, with "
                         "'fc.weight'); got " + (f"keys {sorted(state)[:5]}..." if isinstance(state, dict)
                                                 else type(state).__name__))
    classes = state["fc.weight"].shape[0]
    if classes not in (_FID_CLASSES, _TORCHVISION_CLASSES):
        raise ValueError(f"Inception weights {p}: fc.weight has {classes} rows; expected {_FID_CLASSES} (pytorch-fid's "
                         f"FID weights) or {_TORCHVISION_CLASSES} (torchvision's)")
    net = InceptionV3Features(fid=classes == _FID_CLASSES)
    # torchvision's files also hold the auxiliary classifier, which the features never use.
    state = {k: v for k, v in state.items() if not k.startswith("AuxLogits.")}
    missing, unexpected = net.load_state_dict(state, strict=False)
    # Files saved by older torch have no BatchNorm step counters, which eval mode never reads.
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"Inception weights {p}: do not match Inception-v3 (missing {missing[:4]}, unexpected "
                         f"{unexpected[:4]})")
    return net.to(device).eval()

"""jebm: joint latent-space EBM priors over multi-layer generators (Cui, Wu & Han, CVPR/ICCV 2023).

- ``JEBM``: the model (any number of latent layers, layer-wise and joint energy terms, MLP or
  transposed-convolution decoder), sampled through ``jebm_kernels.langevin`` in z- or eps-space
  (``jebm.model``).
- ``train(...)``: the MLE and variational training schemes (also ``jebm train`` / ``python -m jebm``);
  ``load_run`` loads a trained run back (``jebm.train``).
- ``jebm.data``: the data sets; ``jebm.evaluate``: reconstruction error, hierarchical sampling,
  held-out-class outlier detection, Frechet distances, the HTML report; ``jebm.bench``: the
  benchmark machinery (``jebm bench``).

``jebm.train`` is the training function; its package is reached by ``from jebm.train import ...``.
"""
from jebm_kernels import __version__  # the one version, written in jebm_kernels

from .model import JEBM, ConvDecoder, InferenceModel
from .train import Run, TrainingDiverged, TrainResult, load_run, train
from .train.presets import PRESETS, resolve_config

__all__ = ["JEBM", "ConvDecoder", "InferenceModel", "train", "TrainResult", "TrainingDiverged", "load_run", "Run",
           "PRESETS", "resolve_config", "__version__"]

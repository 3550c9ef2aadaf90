"""jebm: joint latent-space EBM priors over multi-layer generators (Cui, Wu & Han, CVPR/ICCV 2023).

- ``JEBM``: the model (any number of latent layers, layer-wise and joint energy terms, MLP or
  transposed-convolution decoder), sampled through ``jebm_kernels.langevin`` in z- or eps-space.
- ``train(...)``: the MLE and variational training schemes (also ``jebm train`` / ``python -m jebm``).
- ``jebm.eval``: reconstruction error, hierarchical sampling, held-out-class outlier detection.
"""
from .model import JEBM, ConvDecoder, InferenceModel
from .presets import PRESETS, resolve_config
from .training import Run, TrainingDiverged, TrainResult, load_run, train

__all__ = ["JEBM", "ConvDecoder", "InferenceModel", "train", "TrainResult", "TrainingDiverged", "load_run", "Run",
           "PRESETS", "resolve_config"]
__version__ = "0.1.0"

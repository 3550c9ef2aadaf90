"""The JEBM model and its parts.

- ``jebm``: ``JEBM``, the multi-layer Gaussian generator with a joint latent-space EBM prior
  (densities, energies, the specs handed to ``jebm_kernels``, sampling through
  ``jebm_kernels.langevin``);
- ``blocks``: the fusable MLP, the transposed-convolution decoder, per-layer normals from a
  Philox stream;
- ``inference``: the variational scheme's inference model q_phi(z | x);
- ``sampling``: ``SamplingSettings``, the chain settings a trainer or a loaded run passes to every
  sampling call;
- ``config``: the read-only model config and the width-list checks it shares with the run config.
"""
from .blocks import ConvDecoder, mlp, randn_layers
from .inference import InferenceModel, build_inference_model
from .jebm import JEBM, MODEL_KEYS
from .sampling import SamplingSettings

__all__ = ["JEBM", "ConvDecoder", "InferenceModel", "build_inference_model", "mlp", "randn_layers", "MODEL_KEYS",
           "SamplingSettings"]

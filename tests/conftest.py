import os

import torch

# Without a GPU, Triton kernels run only under its interpreter; it reads this variable when a
# kernel is decorated, so it must be set before any test module imports triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

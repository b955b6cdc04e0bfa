"""ProtoPNet ("This Looks Like That") as a scikit-learn classifier."""

from ._backbones import list_backbones
from ._classifier import ProtoPNetClassifier

__version__ = "0.1.0"

__all__ = ["ProtoPNetClassifier", "list_backbones", "__version__"]

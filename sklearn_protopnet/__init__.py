"""ProtoPNet ("This Looks Like That") as a scikit-learn classifier."""

from ._backbones import list_backbones
from ._classifier import ProtoPNetClassifier
from ._explain import Evidence, Explanation

__version__ = "0.1.0"

__all__ = ["ProtoPNetClassifier", "Evidence", "Explanation", "list_backbones", "__version__"]

"""ProtoPNet ("This Looks Like That") as a scikit-learn classifier."""

from ._backbones import list_backbones
from ._classifier import ProtoPNetClassifier
from ._explain import Evidence, Explanation, PrototypeParts
from ._geometry import CellGeometry
from ._prune import NearestPatches
from ._version import __version__

__all__ = [
    "CellGeometry",
    "Evidence",
    "Explanation",
    "NearestPatches",
    "PrototypeParts",
    "ProtoPNetClassifier",
    "__version__",
    "list_backbones",
]

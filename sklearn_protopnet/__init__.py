"""ProtoPNet ("This Looks Like That") as a scikit-learn classifier."""

from ._backbones import list_backbones
from ._classifier import ProtoPNetClassifier
from ._explain import Evidence, Explanation, PrototypeParts
from ._geometry import CellGeometry
from ._params import REFERENCE_SETTINGS
from ._prune import NearestPatches
from ._quality import (
    DeletionResult,
    DuplicatesResult,
    LocalityResult,
    PointingGameResult,
    PurityResult,
    StabilityResult,
    deletion_check,
    evidence_stability,
    locality,
    pointing_game,
    prototype_duplicates,
    prototype_purity,
)
from ._version import __version__

__all__ = [
    "CellGeometry",
    "DeletionResult",
    "DuplicatesResult",
    "Evidence",
    "Explanation",
    "LocalityResult",
    "NearestPatches",
    "PointingGameResult",
    "PrototypeParts",
    "ProtoPNetClassifier",
    "PurityResult",
    "REFERENCE_SETTINGS",
    "StabilityResult",
    "__version__",
    "deletion_check",
    "evidence_stability",
    "list_backbones",
    "locality",
    "pointing_game",
    "prototype_duplicates",
    "prototype_purity",
]

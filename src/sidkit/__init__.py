"""sidkit: Semantic IDs for generative recommendation."""

from .errors import SidkitError
from .types import Codes

__version__ = "0.1.0"
__all__ = ["Codes", "SidkitError", "__version__"]

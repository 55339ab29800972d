"""fastmax: fused, parallel softmax-family kernels for NumPy arrays on the CPU."""

from . import _config  # noqa: F401  (configures Numba before any kernel compiles)
from ._api.softmax import log_softmax, logsumexp, softmax

__version__ = "0.1.0"

__all__ = ["softmax", "log_softmax", "logsumexp", "__version__"]

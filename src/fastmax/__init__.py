"""fastmax: fused, parallel softmax-family kernels for NumPy arrays on the CPU."""

from . import _config  # noqa: F401  (configures Numba before any kernel compiles)
from ._api.hardmax import hardmax
from ._api.jacobian import (
    log_softmax_jvp,
    log_softmax_vjp,
    softmax_jacobian,
    softmax_jvp,
    softmax_vjp,
)
from ._api.softmax import log_softmax, logsumexp, softmax
from ._api.xent import (
    softmax_cross_entropy,
    softmax_cross_entropy_backward,
    softmax_cross_entropy_with_grad,
)

__version__ = "0.1.0"

__all__ = [
    "softmax",
    "log_softmax",
    "logsumexp",
    "hardmax",
    "softmax_jvp",
    "softmax_vjp",
    "log_softmax_jvp",
    "log_softmax_vjp",
    "softmax_jacobian",
    "softmax_cross_entropy",
    "softmax_cross_entropy_backward",
    "softmax_cross_entropy_with_grad",
    "__version__",
]

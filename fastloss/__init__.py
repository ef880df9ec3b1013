"""fastloss: Numba-compiled CPU kernels for logsumexp, softmax and the classification losses.

Same signatures and same numbers as ``torch.nn.functional``, on NumPy arrays. Importing the
package compiles nothing; each kernel compiles on first use (and is cached on disk).
"""

from ._cross_entropy import (
    cross_entropy,
    cross_entropy_backward,
    cross_entropy_with_grad,
    nll_loss,
    nll_loss_backward,
    nll_loss_with_grad,
)
from ._softmax import (
    log_softmax,
    log_softmax_backward,
    logsigmoid,
    logsigmoid_backward,
    logsumexp,
    logsumexp_backward,
    sigmoid,
    sigmoid_backward,
    softmax,
    softmax_backward,
)

__version__ = "0.1.0"

__all__ = [
    "logsumexp",
    "logsumexp_backward",
    "softmax",
    "softmax_backward",
    "log_softmax",
    "log_softmax_backward",
    "sigmoid",
    "sigmoid_backward",
    "logsigmoid",
    "logsigmoid_backward",
    "nll_loss",
    "nll_loss_backward",
    "nll_loss_with_grad",
    "cross_entropy",
    "cross_entropy_backward",
    "cross_entropy_with_grad",
]

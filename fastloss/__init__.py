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
from ._linear import linear_cross_entropy, linear_cross_entropy_with_grad
from ._losses import (
    TargetOutOfRangeError,
    binary_cross_entropy,
    binary_cross_entropy_backward,
    binary_cross_entropy_with_grad,
    binary_cross_entropy_with_logits,
    binary_cross_entropy_with_logits_backward,
    binary_cross_entropy_with_logits_with_grad,
    kl_div,
    kl_div_backward,
    kl_div_with_grad,
    mse_loss,
    mse_loss_backward,
    mse_loss_with_grad,
    multi_margin_loss,
    multi_margin_loss_backward,
    multi_margin_loss_with_grad,
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
from ._state import (
    LogSumExpState,
    logsumexp_from_state,
    logsumexp_state,
    merge_logsumexp_states,
)
from ._threads import get_num_threads, num_threads, set_num_threads

__version__ = "0.1.0"

__all__ = [
    "logsumexp",
    "logsumexp_backward",
    "logsumexp_state",
    "merge_logsumexp_states",
    "logsumexp_from_state",
    "LogSumExpState",
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
    "linear_cross_entropy",
    "linear_cross_entropy_with_grad",
    "kl_div",
    "kl_div_backward",
    "kl_div_with_grad",
    "binary_cross_entropy",
    "binary_cross_entropy_backward",
    "binary_cross_entropy_with_grad",
    "binary_cross_entropy_with_logits",
    "binary_cross_entropy_with_logits_backward",
    "binary_cross_entropy_with_logits_with_grad",
    "mse_loss",
    "mse_loss_backward",
    "mse_loss_with_grad",
    "multi_margin_loss",
    "multi_margin_loss_backward",
    "multi_margin_loss_with_grad",
    "TargetOutOfRangeError",
    "set_num_threads",
    "get_num_threads",
    "num_threads",
]

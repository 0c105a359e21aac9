"""What a policy bundle returns: the networks' result records (`slotformer.networks.results`).

Bundles and networks share one vocabulary and one set of classes; this module keeps the
import path ``slotformer.policy.results`` working.
"""

from slotformer.networks.results import ActionResult, EvalResult, ForwardResult

__all__ = ["ActionResult", "EvalResult", "ForwardResult"]

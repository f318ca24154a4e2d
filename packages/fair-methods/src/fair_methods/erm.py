"""ERM: empirical risk minimisation, the baseline every fairness method is compared with.

Loss: ``L = (1/N) sum_i CE(f(x_i), y_i)``, with no use of the protected attribute; for
segmentation the mean over labelled pixels. This is :class:`fair_core.Method` with no hook
overridden: the loss is the task's default (:meth:`fair_core.tasks.Task.loss`), so ERM runs on
every task.
"""

from fair_core import Method


class ERM(Method):
    """Plain training with the task's own loss: cross-entropy of the class logits
    (classification), of the identity head (verification, the softmax loss), per pixel
    (segmentation)."""

    stage = "baseline"
    tasks = ("*",)
    description = "plain cross-entropy (baseline)"
    paper = "Vapnik, The Nature of Statistical Learning Theory, 1995"

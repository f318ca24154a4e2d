"""ERM: empirical risk minimisation, the baseline every fairness method is compared with.

Loss: ``L = (1/N) sum_i CE(f(x_i), y_i)``, with no use of the protected attribute. This is
:class:`fair_core.Method` with no hook overridden.
"""

from fair_core import Method


class ERM(Method):
    """Plain cross-entropy training."""

    stage = "baseline"
    description = "plain cross-entropy (baseline)"
    paper = "Vapnik, The Nature of Statistical Learning Theory, 1995"

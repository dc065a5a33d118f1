"""The `finite_difference` hypergradient against `exact` (nested tapes) in float64 on a supernet with the real
layers (tests/search/real_supernet.py: BatchNorm in training mode, sep_conv's ReLU → convs → BN, FactorizedReduce,
max-pooling with its BN, two reduction cells): three-stage with the full and the paper's terms, and DARTS' second
order. The smooth toys of test_hypergradient.py cannot see what a ReLU or max-pooling kink does to a central
difference; this model can.

ε is the estimator's (`SearchConfig.fd_epsilon`): each ± step has norm ε (ε/‖v‖ · v), against weights of norm
~11 (E), ~6 (F, W). Measured relative errors ‖fd − exact‖ / ‖exact‖ on this model:

    ε       1e-2   1e-3   1e-4     1e-5     1e-6     1e-7     1e-8
    full    0.55   2.6    4.9e-7   5.1e-9   8.8e-10  5.6e-9   2.4e-7
    paper   0.50   2.4    4.4e-7   4.6e-9   8.6e-10  2.6e-9   2.2e-7
    DARTS   0.48   1.6    1.6e-8   1.7e-10  2.1e-9   2.7e-9   2.3e-7

Below 1e-4 the error falls as ε² (the truncation of a central difference), down to float64 rounding, which
grows as 1/ε below 1e-6. At 1e-3 and above the error no longer follows ε² but is larger at 1e-3 than at 1e-2,
the 1/ε of a jump in the gradient between the ± points (a ReLU input changing sign, a max-pool's argmax
changing; BatchNorm is smooth): the difference of gradients measures the jump, not the curvature, and the
estimate is off by its own size. So agreement needs a step small enough to stay between kinks: ε = 1e-6
here, checked to 1e-7 relative (50× the measured error); and a step of 1e-2 crosses kinks, which shows that
the model has them."""
import numpy as np
import pytest

from capnas_tf.search import hypergradient as hg
from capnas_tf.search.captioning import make_three_stage_problem
from tests.search.real_supernet import ETA, darts_losses, flat
from tests.search.test_captioning import L

EPSILON = 1e-6  # between the truncation error (ε²) and float64 rounding (1/ε): both ~1e-9 here
RTOL = 1e-7
KINKED_EPSILON = 1e-2  # a step that crosses a ReLU or max-pooling kink on this model


def relative_error(estimate, exact) -> float:
    estimate, exact = flat(estimate), flat(exact)
    assert np.linalg.norm(exact) > 1e-5, "the exact hypergradient is ~0 here, so the comparison would prove nothing"
    return float(np.linalg.norm(estimate - exact) / np.linalg.norm(exact))


def _estimates(supernet64, which: str):
    """(exact, finite difference at ε) for `which`: "full", "paper" (three-stage terms) or "darts"."""
    models, batches, A, E, F, W = supernet64
    if which == "darts":
        train_loss, val_loss = darts_losses(models, batches)
        exact = hg.darts_hypergradient(train_loss, val_loss, A, E + F, 0.5, method="exact")[0]
        return exact, lambda eps: hg.darts_hypergradient(train_loss, val_loss, A, E + F, 0.5,
                                                         method="finite_difference", epsilon=eps)[0]
    problem = make_three_stage_problem(models, batches, stage2="soft", max_caption_len=L)
    exact = hg.exact_hypergradient(problem, A, E, F, W, ETA, terms=which).grad_A
    return exact, lambda eps: hg.finite_difference_hypergradient(problem, A, E, F, W, ETA, epsilon=eps,
                                                                 terms=which).grad_A


@pytest.mark.parametrize("which", ["full", "paper", "darts"])
def test_finite_difference_agrees_with_exact_between_the_kinks(supernet64, which):
    exact, finite_difference = _estimates(supernet64, which)
    assert relative_error(finite_difference(EPSILON), exact) < RTOL
    # The same estimator with a step that crosses a kink is off by the hypergradient's own size.
    assert relative_error(finite_difference(KINKED_EPSILON), exact) > 0.1

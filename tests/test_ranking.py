"""LogME, the linear probe, Kendall's tau and the ranking subset, against small cases worked out here."""

from __future__ import annotations

import math

import numpy as np
import pytest

from transferlab.data import make_splits
from transferlab.errors import TransferlabError
from transferlab.ranking import linear_probe, log_evidence, logme, subset_fractions
from transferlab.ranking.logme import maximize_evidence, spectrum
from transferlab.ranking.rank import auto_input_size
from transferlab.results.ranking import kendall_tau


def informative(n: int = 300, k: int = 4, d: int = 16, noise: float = 1.0, seed: int = 0):
    """Features = a class mean + Gaussian noise (labels balanced)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % k
    means = rng.normal(size=(k, d)) * 2
    return means[labels] + noise * rng.normal(size=(n, d)), labels


def direct_log_evidence(f: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> float:
    """log N(y; 0, I/beta + F F^T/alpha): the marginal of y = F w + e written out, no SVD."""
    n = len(y)
    cov = np.eye(n) / beta + f @ f.T / alpha
    sign, logdet = np.linalg.slogdet(cov)
    assert sign > 0
    return float(-0.5 * (n * math.log(2 * math.pi) + logdet + y @ np.linalg.solve(cov, y)))


# -- LogME ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(7, 3), (4, 6)])  # n > D, and D > n (rank-deficient F^T F)
def test_log_evidence_matches_the_gaussian_marginal(shape):
    rng = np.random.default_rng(1)
    f = rng.normal(size=shape)
    y = rng.normal(size=shape[0])
    for alpha, beta in [(1.0, 1.0), (0.3, 5.0), (20.0, 0.1)]:
        assert log_evidence(f, y, alpha, beta) == pytest.approx(direct_log_evidence(f, y, alpha, beta),
                                                                rel=1e-10, abs=1e-10)


def test_fixed_point_reaches_the_maximum_of_the_evidence():
    f, labels = informative(n=40, k=2, d=5, noise=1.5)
    y = (labels == 0).astype(float)
    s, project = spectrum(f)
    score, alpha, beta = maximize_evidence(s, project(y), float(y @ y), len(y), dim=f.shape[1])
    best = direct_log_evidence(f, y, alpha, beta)
    assert score == pytest.approx(best / len(y), rel=1e-9)
    # A brute-force search over a log grid around it never beats the fixed point.
    grid = [direct_log_evidence(f, y, alpha * a, beta * b)
            for a in np.exp(np.linspace(-3, 3, 25)) for b in np.exp(np.linspace(-3, 3, 25))]
    assert max(grid) <= best + 1e-9


def test_features_linear_in_the_labels_score_higher_than_noise():
    rng = np.random.default_rng(0)
    labels = np.arange(200) % 5
    exact = np.eye(5)[labels] @ rng.normal(size=(5, 12))  # an exact linear function of the labels
    noisy, _ = informative(n=200, k=5, d=12, noise=3.0, seed=2)
    noise = rng.normal(size=(200, 12))
    scores = [logme(exact, labels), logme(noisy, labels), logme(noise, labels)]
    assert scores[0] > scores[1] > scores[2]


def test_logme_is_invariant_to_sample_order():
    f, labels = informative()
    perm = np.random.default_rng(3).permutation(len(labels))
    assert logme(f[perm], labels[perm]) == pytest.approx(logme(f, labels), rel=1e-9)


@pytest.mark.parametrize("scale", [1e-3, 0.5, 10.0, 1e3])
def test_logme_is_invariant_to_one_scale_for_all_features(scale):
    # At the fixed point, F -> c F moves alpha to c^2 alpha and leaves the evidence unchanged.
    f, labels = informative()
    assert logme(scale * f, labels) == pytest.approx(logme(f, labels), rel=1e-6)


def test_logme_is_invariant_to_rotations_of_the_features():
    f, labels = informative()
    q, _ = np.linalg.qr(np.random.default_rng(4).normal(size=(f.shape[1], f.shape[1])))
    assert logme(f @ q, labels) == pytest.approx(logme(f, labels), rel=1e-6)


def test_logme_is_not_invariant_to_per_feature_scaling():
    # The prior w ~ N(0, I / alpha) is isotropic, so rescaling single dimensions changes the score
    # (You et al. do not standardise; neither do we). This pins the documented behaviour.
    f, labels = informative()
    scales = np.geomspace(0.01, 100, f.shape[1])
    assert abs(logme(f * scales, labels) - logme(f, labels)) > 1e-3


def test_logme_rejects_bad_input():
    with pytest.raises(ValueError, match="do not match"):
        logme(np.zeros((3, 2)), np.zeros(4))
    with pytest.raises(ValueError, match="NaN"):
        logme(np.full((3, 2), np.nan), np.zeros(3))


# -- linear probe ---------------------------------------------------------------------------------

def test_probe_separates_informative_features_and_not_noise():
    f, labels = informative(n=400, k=4, d=16, noise=1.0)
    good = linear_probe(f[:300], labels[:300], f[300:], labels[300:])
    assert good.val_acc1 > 0.9
    rng = np.random.default_rng(5)
    noise = rng.normal(size=(400, 16))
    bad = linear_probe(noise[:300], labels[:300], noise[300:], labels[300:])
    assert bad.val_acc1 < 0.45  # chance is 0.25


def test_probe_does_not_depend_on_feature_scale():
    f, labels = informative(n=200, k=3, d=8, noise=2.0)
    a = linear_probe(f[:150], labels[:150], f[150:], labels[150:])
    b = linear_probe(1e3 * f[:150], labels[:150], 1e3 * f[150:], labels[150:])
    assert a.val_acc1 == b.val_acc1


# -- Kendall's tau --------------------------------------------------------------------------------

def test_kendall_tau_worked_cases():
    assert kendall_tau([1, 2, 3], [10, 20, 30]) == 1.0
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == -1.0
    # 6 pairs, one discordant (2, 3 swapped): (5 - 1) / 6.
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(2 / 3)
    # tau-b with a tie in a: pairs (0,1), (0,2) concordant, (1,2) tied in a -> 2 / sqrt(2 * 3).
    assert kendall_tau([1, 2, 2], [1, 2, 3]) == pytest.approx(2 / math.sqrt(6))
    assert math.isnan(kendall_tau([1, 1, 1], [1, 2, 3]))
    assert math.isnan(kendall_tau([1], [2]))
    with pytest.raises(ValueError):
        kendall_tau([1, 2], [1, 2, 3])


# -- the subset -----------------------------------------------------------------------------------

@pytest.mark.parametrize("max_images", [100, 5000, 12345])
def test_subset_fractions_give_about_max_images_with_a_fifth_held_out(max_images):
    labels = np.repeat(np.arange(10), 5000)
    val_fraction, train_fraction = subset_fractions(len(labels), max_images)
    split = make_splits(labels, val_fraction=val_fraction, train_fraction=train_fraction, seed=0)
    total = len(split.train) + len(split.val)
    assert abs(total - max_images) <= 10  # per-class rounding, at most 1 per class
    assert abs(len(split.val) - 0.2 * max_images) <= 10


def test_subset_fractions_edge_cases():
    assert subset_fractions(1000, 5000) == (0.2, 1.0)
    with pytest.raises(TransferlabError, match="max-images"):
        subset_fractions(1000, 5)


def test_auto_input_size():
    assert auto_input_size((224, 224), (32, 32)) == 96
    assert auto_input_size((299, 299), (64, 64)) == 192
    assert auto_input_size((224, 224), (500, 375)) == 224

"""The converged linear probe, protocol ``logreg`` (issue 19): equal to sklearn's logistic regression with the same
regularisation on fixed features, converged and saying so, its weight decay chosen from the training features only.

    nice -n 10 python3 -m pytest tests/test_logreg.py -q
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pic_bench.config import ConfigError, build, config_hash, validate
from pic_bench.eval.evaluate import LOGREG_L2_GRID, LOGREG_TOL, logreg_fit, logreg_probe

sklearn = pytest.importorskip("sklearn.linear_model")


def features(rng, n=600, d=24, C=4, noise=2.0):
    """Fresh random class clusters that overlap (so the regularisation matters)."""
    centres = rng.normal(0, 1, (C, d))
    y = rng.integers(0, C, n)
    x = centres[y] + noise * rng.normal(0, 1, (n, d))
    return torch.tensor(x, dtype=torch.float32), y


@pytest.mark.parametrize("l2", [1e-4, 1e-2])
def test_converged_probe_equals_sklearns_logistic_regression_with_the_same_regularisation(l2):
    rng = np.random.default_rng()
    xtr, ytr = features(rng)
    xte, yte = features(rng)
    got = logreg_probe(xtr, ytr, xte, yte, l2, 1000)
    assert got["linear_converged"] and got["linear_grad_norm"] < LOGREG_TOL and got["linear_steps"] >= 1
    # sklearn on the same standardised features: C = 1 / (l2 n) gives the same minimiser
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    a, b = ((xtr - mu) / sd).double().numpy(), ((xte - mu) / sd).double().numpy()
    ref = sklearn.LogisticRegression(C=1 / (l2 * len(ytr)), tol=1e-10, max_iter=10000).fit(a, ytr)
    assert got["linear_top1"] == pytest.approx(100 * ref.score(b, yte), abs=0.34)  # at most 2 of 600 test images
    m = logreg_fit(torch.tensor(a, dtype=torch.float32), torch.as_tensor(ytr), 4, l2, 1000)
    # The same classifier up to the softmax's shift invariance (sklearn's multinomial W rows sum to 0 too), as near
    # as the gradient tolerance lets a fit sit: at l2 = 1e-4 the objective is flat enough that |gradient| < 1e-5
    # leaves W up to ~0.3 % of its scale from the minimiser (a fixed 1e-3 failed CI once in ~40 draws). The Newton
    # step at the fit, -H^+ g, is that distance; one step from the fit must land on sklearn's minimiser.
    C, d = 4, a.shape[1]
    A, Y = torch.tensor(a, dtype=torch.float32).double(), torch.as_tensor(ytr)

    def objective(t):
        return F.cross_entropy(A @ t[:C * d].view(C, d).T + t[C * d:], Y) + 0.5 * l2 * (t[:C * d] ** 2).sum()

    t = torch.cat([m["W"].flatten(), m["b"]])
    g, H = torch.autograd.functional.jacobian(objective, t), torch.autograd.functional.hessian(objective, t)
    step = (torch.linalg.pinv(H) @ g)[:C * d].view(C, d).numpy()
    assert g.abs().max() < LOGREG_TOL  # a fit of sklearn's objective, not of another one

    def centred(M):
        return M - M.mean(0)

    W, scale = m["W"].numpy(), np.abs(ref.coef_).max()
    assert np.abs(centred(W) - centred(ref.coef_)).max() <= 2 * np.abs(centred(step)).max() + 1e-6 * scale
    assert np.abs(centred(W - step) - centred(ref.coef_)).max() < 1e-4 * scale  # measured: under 2e-5


def test_the_weight_decay_is_chosen_on_training_features_only_and_stated():
    rng = np.random.default_rng()
    xtr, ytr = features(rng, n=300)
    xte, yte = features(rng, n=200)
    got = logreg_probe(xtr, ytr, xte, yte, 0.0, 500, seed=3)
    assert got["linear_l2"] in LOGREG_L2_GRID and 0 <= got["linear_heldout_top1"] <= 100
    # another test set (labels shuffled) changes the test score, never the choice
    other = logreg_probe(xtr, ytr, xte, rng.permutation(yte), 0.0, 500, seed=3)
    assert other["linear_l2"] == got["linear_l2"] and other["linear_heldout_top1"] == got["linear_heldout_top1"]
    given = logreg_probe(xtr, ytr, xte, yte, 1e-3, 500)
    assert given["linear_l2"] == 1e-3 and given["linear_heldout_top1"] is None


def test_scale_preset_uses_it_and_small_keeps_its_probe():
    assert build("scale").eval.protocol == "logreg" and build("small").eval.protocol == "probe"
    assert build("paper").eval.protocol == "linear_sgd"
    assert config_hash(build("small")) == config_hash(build("small", {"eval.logreg_l2": 0.0}))  # old rows' hash
    with pytest.raises(ConfigError, match="eval.logreg_l2=-1.0 must be >= 0"):
        validate(build("scale", {"eval.logreg_l2": -1.0}))
    with pytest.raises(ConfigError, match="eval.logreg_max_steps=0 must be >= 1"):
        validate(build("scale", {"eval.logreg_max_steps": 0}))


def test_the_protocol_runs_through_the_evaluation_and_states_itself_in_the_metrics():
    from pic_bench.data.sources import load_source
    from pic_bench.eval.evaluate import evaluate_pixels

    cfg = build("smoke", {"eval.protocol": "logreg", "eval.logreg_l2": 1e-2})
    source = load_source(cfg.data, 0)
    m = evaluate_pixels(source, cfg.data.image_size, cfg.eval, 0)
    assert 0 <= m["knn_top1"] <= 100 and 0 <= m["linear_top1"] <= 100
    assert m["linear_l2"] == 1e-2 and m["linear_converged"] and m["linear_steps"] >= 1


def test_a_warm_start_reaches_the_same_minimiser():
    rng = np.random.default_rng()
    x, y = features(rng, n=300)
    y = torch.as_tensor(y)
    cold = logreg_fit(x, y, 4, 1e-3, 1000)
    warm = logreg_fit(x, y, 4, 1e-3, 1000, start=(cold["W"] + 0.1, cold["b"] - 0.1))
    # the same minimum; W to within what a gradient below LOGREG_TOL allows in its flattest direction (~tol / l2)
    assert warm["converged"] and torch.allclose(warm["W"], cold["W"], atol=2e-2)
    # each stops with max |gradient| < 1e-5, so each loss is within ||g||^2 / (2 l2) of the minimum: with 24 x 4 + 4
    # parameters at most 100 x 1e-10 / 2e-3 = 5e-6 (1e-8 failed about half of fresh seeds: 3.4e-8 seen)
    assert abs(warm["loss"] - cold["loss"]) < 5e-6

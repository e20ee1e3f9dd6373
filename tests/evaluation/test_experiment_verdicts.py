"""E1's analysis reads each verdict from constructed cells (experiments/e1_least_action.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments"))

e1 = pytest.importorskip("e1_least_action")

CFG = dict(e1.CONFIG, depths=[8], actions=["predictive"], anchors=["prior", "stem"], lambdas=[0.1])


def _cell(arm, seed, accuracy, ratio, share, depth=8, lam=0.1):
    measures = dict(
        test_accuracy=accuracy,
        test_nll=0.4,
        test_ece=0.02,
        gap=0.03,
        ratio_prior=ratio,
        unevenness_prior=ratio,
        detour_factor_prior=1.0,
        stem_share=share,
        lens_accuracy_stem=0.7,
        ratio_stem=1.2,
    )
    lam = 0.0 if arm == "plain" else lam
    hparams = dict(arm=arm, depth=depth, lam=lam, kind="residual")
    return dict(id=f"{arm}-{seed}", seed=seed, hparams=hparams, measures=measures, converged=True)


def _cells(gain, stem_shift, prior_shift, ratio=1.3):
    cells = []
    for seed, noise in enumerate([0.0, 0.002, -0.001, 0.001, -0.002]):
        cells.append(_cell("plain", seed, 0.85 + noise, ratio + noise, 0.5 + noise))
        cells.append(
            _cell("predictive@prior", seed, 0.85 + noise + gain[seed], 1.1, 0.5 + prior_shift)
        )
        cells.append(_cell("predictive@stem", seed, 0.85 + noise, 1.1, 0.5 + stem_shift))
    logistic = dict(test_accuracy=0.80, test_nll=0.6, test_ece=0.03, gap=0.01)
    cells.append(
        dict(
            id="logistic",
            seed=0,
            hparams=dict(arm="logistic", depth=0, kind="control", iterations=100, max_iter=2000),
            measures=logistic,
            converged=True,
        )
    )
    return cells


def _verdicts(cells):
    return {v["claim"]: v["verdict"] for v in e1.analyse(cells, CFG)["verdicts"]}


def test_a_harmless_regulariser_that_moves_the_work_into_the_blocks_is_supported():
    verdicts = _verdicts(_cells([0.001, 0.0, 0.002, -0.001, 0.001], 0.1, -0.1))
    assert verdicts["depth matters here, L = 8"] == "supported"
    assert verdicts["(i) near least action, L = 8"] == "supported"
    assert verdicts["(ii) does not hurt: predictive@prior, L = 8"] == "supported"
    assert verdicts["(ii) helps: predictive@prior, L = 8"] == "not established"
    assert verdicts["the stem anchor rewards idle depth, L = 8"] == "supported"
    assert verdicts["the prior anchor does not, L = 8"] == "supported"


def test_a_harmful_regulariser_and_a_far_path_are_contradicted():
    cells = _cells([-0.03, -0.025, -0.035, -0.03, -0.028], -0.1, 0.1, ratio=3.0)
    verdicts = _verdicts(cells)
    assert verdicts["(i) near least action, L = 8"] == "contradicted"
    assert verdicts["(ii) does not hurt: predictive@prior, L = 8"] == "contradicted"
    assert verdicts["(ii) helps: predictive@prior, L = 8"] == "contradicted"
    assert verdicts["the stem anchor rewards idle depth, L = 8"] == "contradicted"
    assert verdicts["the prior anchor does not, L = 8"] == "contradicted"


def test_noisy_arms_are_not_established():
    verdicts = _verdicts(_cells([0.02, -0.03, 0.01, -0.02, 0.015], 0.0, 0.0, ratio=1.5))
    assert verdicts["(ii) does not hurt: predictive@prior, L = 8"] == "not established"
    assert verdicts["(ii) helps: predictive@prior, L = 8"] == "not established"
    assert verdicts["(i) near least action, L = 8"] == "not established"

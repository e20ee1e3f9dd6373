"""The experiments' analyses read each verdict from constructed cells (experiments/e*.py)."""

from __future__ import annotations

import math
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


# ------------------------------------------------------------------- E3 (capacity)

e3 = pytest.importorskip("e3_capacity")
E3_SIZES = [100, 200, 400, 800, 1600, 3200]


def _e3_cells(last_fitted: dict[tuple[str, int], list[int]], per_bit=0.1) -> list[dict]:
    """Cells whose seed s of group g fits every N up to ``last_fitted[g, budget][s]``.

    A fitted network's total action N·Ā is 10 + ``per_bit`` · N log₂10.
    """
    cells = []
    for group in e3.GROUPS:
        for seed in range(5):
            for n in E3_SIZES:
                measures = {"n": float(n)}
                for budget in e3.CONFIG["budgets"]:
                    measures[f"fitted_{budget}"] = float(n <= last_fitted[group, budget][seed])
                if measures["fitted_30000"] and group != "depth-0":
                    measures["action"] = (10 + per_bit * n * math.log2(10)) / n
                cells.append(
                    dict(
                        id=e3.cell_id(group, n, seed),
                        seed=seed,
                        hparams=dict(group=group, n=n),
                        measures=measures,
                        seconds=1.0,
                    )
                )
    return cells


def _e3_verdicts(cells):
    return {v["claim"]: v["verdict"] for v in e3.analyse(cells, e3.CONFIG)["verdicts"]}


def test_e3_capacity_that_depth_adds_and_the_action_costs_is_supported():
    fits = {
        ("residual λ=0", 30000): [1600, 1600, 3200, 1600, 800],
        ("residual λ=0", 3000): [1600, 1600, 1600, 1600, 800],
        ("residual λ=1", 30000): [400, 200, 400, 400, 200],
        ("residual λ=1", 3000): [400, 200, 400, 400, 200],
        ("depth-0", 30000): [200, 200, 100, 200, 200],
        ("depth-0", 3000): [200, 200, 100, 200, 200],
    }
    verdicts = _e3_verdicts(_e3_cells(fits))
    assert verdicts["(iv) the residual blocks add capacity"] == "supported"
    assert verdicts["(iv) an action budget costs capacity"] == "supported"
    assert verdicts["(iv) a failure at 3 000 steps is capacity, not optimisation"] == "supported"
    assert verdicts["(iv) storing costs action"] == "supported"


def test_e3_the_opposite_is_contradicted_and_a_censored_group_is_not_established():
    fits = {
        ("residual λ=0", 30000): [1600, 1600, 800, 1600, 800],
        ("residual λ=0", 3000): [100, 200, 100, 100, 100],  # 3 000 steps were too few
        ("residual λ=1", 30000): [3200, 3200, 1600, 3200, 3200],
        ("residual λ=1", 3000): [800, 800, 800, 800, 800],
        ("depth-0", 30000): [3200] * 5,  # every cell fitted: N* censored above the grid
        ("depth-0", 3000): [3200] * 5,
    }
    verdicts = _e3_verdicts(_e3_cells(fits, per_bit=-0.0005))
    assert verdicts["(iv) the residual blocks add capacity"] == "not established"
    assert verdicts["(iv) an action budget costs capacity"] == "contradicted"
    assert verdicts["(iv) a failure at 3 000 steps is capacity, not optimisation"] == "contradicted"
    assert verdicts["(iv) storing costs action"] == "contradicted"


# ------------------------------------------------------- E4 (re-initialisation)

e4 = pytest.importorskip("e4_reinitialization")
E4_LAYERS = ["stem", *(f"blocks.{i}" for i in range(8)), "head"]


def _e4_cells(stem_damage: float, block_damage: float, trace_sign: float) -> list[dict]:
    """Cells of 5 seeds: a block's damage grows with its index; its tr F with ``trace_sign``."""
    cells = []
    for seed in range(5):
        jitter = 0.001 * (seed - 2)
        for index, layer in enumerate(E4_LAYERS):
            if layer == "stem":
                damage = stem_damage
            elif layer == "head":
                damage = 0.002
            else:
                damage = block_damage + 0.0005 * index + jitter / 10
            measures = dict(trained_error=0.12 + jitter, trained_nll=0.35)
            for column in e4.COLUMNS:
                measures[f"error_{column}"] = measures["trained_error"] + damage + jitter / 5
                measures[f"nll_{column}"] = 0.35 + 3 * damage
            measures.update(
                trace=1.0 + trace_sign * index,
                quadratic_kl=0.01 * (1 + trace_sign * index / 10),
                reset_kl=0.01 * (1 + index / 10),
                distance_l2=0.2,
            )
            cells.append(
                dict(
                    id=f"s{seed}-{layer}",
                    seed=seed,
                    hparams=dict(layer=layer, index=index),
                    measures=measures,
                )
            )
    return cells


def _e4_verdicts(cells):
    return {v["claim"]: v["verdict"] for v in e4.analyse(cells, e4.CONFIG)["verdicts"]}


def test_e4_zhang_bengio_singer_pattern_with_ranked_damage_is_supported():
    verdicts = _e4_verdicts(_e4_cells(stem_damage=0.4, block_damage=0.001, trace_sign=1.0))
    assert verdicts["(v) the stem is critical"] == "supported"
    assert verdicts["(v) residual blocks are re-initialisation robust"] == "supported"
    assert verdicts["(v) residual blocks are re-randomisation robust"] == "supported"
    assert verdicts["(v) Fisher sensitivity ranks the damage within blocks"] == "supported"
    assert verdicts["(v) ½ δᵀFδ ranks the reset's KL within blocks"] == "supported"
    analysis = e4.analyse(_e4_cells(0.4, 0.001, 1.0), e4.CONFIG)
    labels = {e["layer"]: e["damage_0"]["zbs_label"] for e in analysis["layers"]}
    assert labels["stem"] == "critical" and labels["blocks.0"] == "robust"


def test_e4_a_robust_stem_damaging_blocks_and_reversed_ranks_are_contradicted():
    verdicts = _e4_verdicts(_e4_cells(stem_damage=0.0, block_damage=0.05, trace_sign=-0.1))
    assert verdicts["(v) the stem is critical"] == "contradicted"
    assert verdicts["(v) residual blocks are re-initialisation robust"] == "contradicted"
    assert verdicts["(v) Fisher sensitivity ranks the damage within blocks"] == "contradicted"
    assert verdicts["(v) ½ δᵀFδ ranks the reset's KL within blocks"] == "contradicted"

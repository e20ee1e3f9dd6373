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


def test_e3_refinement_sizes_are_quarter_doublings_inside_the_grid_brackets():
    fits = {
        ("residual λ=0", 30000): [1600, 1600, 3200, 1600, 800],  # every seed: 800; none: 3200+
        ("residual λ=0", 3000): [1600, 1600, 1600, 1600, 800],
        ("residual λ=1", 30000): [400] * 5,  # every seed: 400; none: 800
        ("residual λ=1", 3000): [400] * 5,
        ("depth-0", 30000): [3200] * 5,  # every cell fitted: no bracket, no refinement
        ("depth-0", 3000): [3200] * 5,
    }
    cells = _e3_cells(fits)
    sizes = e3.refinement_sizes(cells, e3.CONFIG)
    quarter = [round(400 * 2 ** (k / 4)) for k in (1, 2, 3)]
    assert sizes["residual λ=1"] == quarter
    # λ = 0: at 30 000 steps a seed fits the largest size, so no bracket; at 3 000 steps the
    # bracket is [800, 3200] and its quarter points 1131, 1600, 2263 (1600 is on the grid)
    assert sizes["residual λ=0"] == [1131, 2263]
    assert sizes["depth-0"] == []
    # a refinement cell does not move the brackets it came from
    extra = dict(cells[0], id="extra", hparams=dict(group="residual λ=1", n=quarter[0]))
    extra["measures"] = {"n": float(quarter[0]), "fitted_30000": 0.0, "fitted_3000": 0.0}
    assert e3.refinement_sizes([*cells, extra], e3.CONFIG) == sizes
    # and the analysis keeps the grid-only N* beside the refined one
    entry = e3.analyse([*cells, extra], e3.CONFIG)["groups"]["residual λ=1"]["budget_30000"]
    assert entry["grid_fit"]["n_star"] != entry["fit"]["n_star"]


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


e2 = pytest.importorskip("e2_zoo")
E2_CFG = e2.QUICK


def _e2_cells(sign: float):
    """The quick grid's networks: the claimed measures follow the gap (sign +1) or oppose it."""
    import numpy as np

    from memspace.zoo import expand, load_grid

    rng = np.random.default_rng(0)
    cells = []
    for model in expand(load_grid(E2_CFG["grid"])):
        hp = model["hparams"]
        gap = 0.02 + 0.1 * hp["label_noise"] + 0.02 * (hp["train_size"] == 300) + 0.01 * hp["lam"]
        gap += 0.001 * rng.standard_normal()
        follows = {name: 1.0 + sign * 10 * gap for name in e2.CLAIMED.values()}
        measures = dict(follows, action_ratio_stem=1.0 + rng.random(), PATH_NORM=1.0 + rng.random())
        cells.append(
            dict(
                id=model["id"],
                seed=model["seed"],
                hparams=hp,
                measures=measures,
                gap=gap,
                converged=True,
                epochs=4,
                train_acc=0.9,
                test_acc=0.9 - gap,
            )
        )
    return cells


def test_e2_measures_that_rank_the_gap_are_supported_and_the_best_beats_chance():
    analysis = e2.analyse(_e2_cells(+1.0), E2_CFG)
    verdicts = {v["claim"]: v for v in analysis["verdicts"]}
    for key in e2.CLAIMED:
        assert verdicts[e2.PREDICTIONS[key].claim]["verdict"] == "supported"
    best = verdicts[e2.PREDICTIONS["best"].claim]
    assert best["verdict"] == "supported" and best["p"] == pytest.approx(1 / 50)
    # the point value of every Ψ interval is Ψ itself
    entry = analysis["measures"]["all"]["predictive_action"]
    assert entry["psi_ci"]["value"] == pytest.approx(entry["psi"])
    assert entry["psi_ci"]["low"] <= entry["psi"] <= entry["psi_ci"]["high"]


def test_e2_measures_that_rank_it_backwards_are_contradicted():
    verdicts = {v["claim"]: v["verdict"] for v in e2.analyse(_e2_cells(-1.0), E2_CFG)["verdicts"]}
    for key in e2.CLAIMED:
        assert verdicts[e2.PREDICTIONS[key].claim] == "contradicted"


def test_e2_psi_interval_resamples_groups_by_hand():
    import numpy as np

    groups = {"a": np.array([1.0, 1.0]), "b": np.array([1.0, -1.0]), "c": np.array([])}
    out = e2.psi_interval(groups, 200, 0.95, seed=0)
    assert out["value"] == pytest.approx(0.5) and out["n"] == 4
    # ψ_a is always 1; ψ_b* ∈ {−1, 0, 1}: Ψ* ∈ {0, ½, 1}
    assert out["low"] == pytest.approx(0.0) and out["high"] == pytest.approx(1.0)
    assert e2.psi_interval(groups, 10, 0.95, 0, without="b")["value"] == pytest.approx(1.0)


e5 = pytest.importorskip("e5_disentanglement")
E5_CFG = dict(e5.QUICK, seeds=[0, 1, 2, 3, 4])


def _e5_cells(lam_gain: float, collapsed: str | None = None):
    cells = []
    for seed in E5_CFG["seeds"]:
        for beta in E5_CFG["betas"]:
            for lam in E5_CFG["lams"]:
                bd = 0.6 + 0.02 * seed + lam_gain * lam + 0.1 * (beta > 1)
                measures = {s: 0.1 for s in e5.SCORES}
                measures.update(
                    active_latents=5.0,
                    reconstruction=100.0,
                    kl=10.0,
                    collapsed=0.0,
                    block_diagonality=bd,
                    null_mean=0.5,
                    excess=bd - 0.5,
                    null_p=0.01,
                    mig=0.1 + bd / 2,  # within β, MIG rises with block-diagonality
                )
                key = e5.cell_id(beta, lam, seed)
                if key == collapsed:
                    measures.update(collapsed=1.0, active_latents=1.0, block_diagonality=math.nan)
                cells.append(
                    dict(id=key, seed=seed, hparams=dict(beta=beta, lam=lam), measures=measures)
                )
    return cells


def test_e5_block_diagonal_disentangled_and_helped_by_least_action_is_supported():
    analysis = e5.analyse(_e5_cells(0.05, collapsed=e5.cell_id(1.0, 0.0, 2)), E5_CFG)
    verdicts = {v["claim"]: v["verdict"] for v in analysis["verdicts"]}
    assert set(verdicts.values()) == {"supported"} and len(verdicts) == 4
    assert analysis["collapsed"] == [e5.cell_id(1.0, 0.0, 2)]  # excluded and counted
    arm = next(a for a in analysis["arms"] if a["beta"] == 1.0 and a["lam"] == 0.0)
    assert arm["collapsed"] == 1 and arm["block_diagonality"]["n"] == 4


def test_e5_least_action_that_lowers_block_diagonality_is_contradicted():
    verdicts = {v["claim"]: v["verdict"] for v in e5.analyse(_e5_cells(-0.05), E5_CFG)["verdicts"]}
    assert verdicts[e5.PREDICTIONS["lam-bd"].claim] == "contradicted"
    assert verdicts[e5.PREDICTIONS["lam-mig"].claim] == "contradicted"


def test_e5_the_kl_rule_and_the_grouping_null_by_hand():
    import numpy as np
    import torch

    # KL(N(μ, σ²) ‖ N(0, 1)) = ½(μ² + σ² − 1 − log σ²): μ = 1, σ = 1 → ½; μ = 0, σ = 1 → 0
    kl = e5.latent_kl(np.array([[1.0, 0.0], [1.0, 0.0]]), np.zeros((2, 2)))
    assert kl.tolist() == pytest.approx([0.5, 0.0])
    # a block-diagonal G for groups (0, 0, 1, 1): the true grouping scores 1, every other
    # pairing of the four latents puts weight off its blocks
    G = torch.zeros(1, 4, 4)
    G[0, :2, :2] = 1.0
    G[0, 2:, 2:] = 1.0
    null = e5.grouping_null(G, np.array([0, 0, 1, 1]), draws=60, seed=0)
    assert null.max() == pytest.approx(1.0) and null.min() < 1.0
    assert (null == 1.0).mean() == pytest.approx(1 / 3, abs=0.2)  # 2 of the 6 labelings


def test_the_claims_table_reads_each_verdict_and_names_what_has_not_run(tmp_path):
    import json

    import _publish

    (tmp_path / "e3").mkdir()
    verdict = dict(
        claim="(iv) storing costs action",
        verdict="supported",
        test="t",
        n=5,
        effect=24.7,
        low=24.2,
        high=25.3,
        p=None,
        note="",
    )
    (tmp_path / "e3" / "results.json").write_text(json.dumps({"analysis": {"verdicts": [verdict]}}))
    text = _publish.claims_section(tmp_path)
    assert (
        "| (iv) storing costs action | e3_capacity | **supported** | 5 | 24.7 [24.2, 25.3] |"
        in text
    )
    assert "| (vi) | e5_disentanglement | **not yet run** |" in text


def test_an_experiment_still_running_reads_no_verdict_into_the_claims(tmp_path):
    import json

    import _publish

    (tmp_path / "e2").mkdir()
    verdict = dict(
        claim="(iii) x",
        verdict="supported",
        test="t",
        n=5,
        effect=1.0,
        low=0.5,
        high=1.5,
        p=None,
        note="",
    )
    analysis = {"networks": 16, "expected": 192, "verdicts": [verdict]}
    (tmp_path / "e2" / "results.json").write_text(json.dumps({"analysis": analysis}))
    text = _publish.claims_section(tmp_path)
    assert "| (iii) | e2_zoo (16 of 192 stored) | **running**" in text
    assert "(iii) x" not in text and "**supported**" not in text


def test_an_estimate_that_could_not_be_measured_prints_as_such():
    """A NaN estimate (null in results.json) reads "not measurable", not a crash or a number."""
    from _preregistered import estimate_text

    assert estimate_text({"value": None, "low": None, "high": None, "clusters": 0}) == (
        "— (not measurable)"
    )
    nan = {"value": math.nan, "low": math.nan, "high": math.nan, "clusters": 0}
    assert estimate_text(nan) == "— (not measurable)"
    assert estimate_text({"value": 0.5, "low": 0.25, "high": 0.75, "clusters": 5}) == (
        "0.500 [0.250, 0.750]"
    )

"""E1, residual-CNN arm — least action where depth matters, on convolutions (pre-registered).

E1 (``e1_least_action.py``) runs residual MLPs; the issue asks for the residual CNN beside them.
This arm is pre-registered on its own, in the commit that added this file and before its first
cell ran, because it was added after E1's MLP cells were read: its predictions are E1's, stated
for the CNN, and its verdicts are computed by E1's analysis from its own cells.

Design (sized for a 2-core CPU: one network costs about what E4's did):
Fashion-MNIST, E1's 12 000 training images and the full 10 000-image test set, average-pooled to
14 × 14 as in E4; ``ResidualCNN`` with 16 channels and L = 8 blocks, 10 epochs of Adam
(lr 0.002, batch 128) — E4's recipe. Arms per seed, every one from the same initial weights and
data order (paired): plain; the predictive action under the prior anchor at λ ∈ {0.1, 0.3}
(two doses: a slope, not a curve); its excess under the prior anchor at λ = 0.1; the predictive
action under the stem anchor at λ = 0.1 (the idle-depth control). Five seeds. Controls: a
depth-0 CNN per seed (the stem and the read-out alone) and logistic regression on the same
14 × 14 inputs. Not run: L = 32 (four times the cost) and the stem-anchored excess.

    python experiments/e1_cnn.py run        # train what is missing (resumable, network by network)
    python experiments/e1_cnn.py publish    # results.json and RESULTS.md from the cells
    python experiments/e1_cnn.py run --quick --store /tmp/e1cnn.sqlite   # smoke run
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

import e1_least_action as e1  # noqa: E402
from _preregistered import (  # noqa: E402
    checkpoint_wal,
    commit,
    machine,
    main,
    training_draw,
)

from memspace import ResidualCNN  # noqa: E402
from memspace.paths.predictive import label_prior  # noqa: E402
from memspace.train import fit  # noqa: E402
from memspace.zoo import ZooStore  # noqa: E402

NAME = "e1_cnn"
FOLDER = HERE / "e1-cnn"
CONFIG = dict(
    data="fashion-mnist",
    train_size=12000,
    test_size=10000,
    probe_size=2000,
    pool=2,
    width=16,  # channels of the residual stream
    depths=[8],
    epochs=10,
    lr=2e-3,
    batch_size=128,
    seeds=[0, 1, 2, 3, 4],
    actions=["predictive", "predictive-excess"],  # the (ii) family, at λ = 0.1, prior anchor
    arms=[
        dict(arm="plain", action=None, anchor="prior", lam=0.0),
        dict(arm="predictive@prior", action="predictive", anchor="prior", lam=0.1),
        dict(arm="predictive@prior", action="predictive", anchor="prior", lam=0.3),
        dict(arm="predictive-excess@prior", action="predictive-excess", anchor="prior", lam=0.1),
        dict(arm="predictive@stem", action="predictive", anchor="stem", lam=0.1),
    ],
)
QUICK = dict(
    CONFIG,
    train_size=400,
    test_size=200,
    probe_size=100,
    pool=4,
    width=4,
    depths=[2],
    epochs=1,
    seeds=[0, 1],
)
MARGIN_POINTS = e1.MARGIN_POINTS

_CNN_WORDS = {
    "Plain residual MLPs beat logistic regression": "Plain residual CNNs beat logistic "
    "regression (on the same 14 × 14 inputs)",
    "1 − 0.05/4 (Bonferroni over the four comparisons)": "1 − 0.05/2 (Bonferroni over the two "
    "comparisons: one depth)",
}


def _for_cnn(prediction: e1.Prediction) -> e1.Prediction:
    fields = {f: getattr(prediction, f) for f in ("statement", "test")}
    for old, new in _CNN_WORDS.items():
        fields = {f: text.replace(old, new) for f, text in fields.items()}
    return dataclasses.replace(prediction, **fields)


PREDICTIONS = {key: _for_cnn(p) for key, p in e1.PREDICTIONS.items()}


def load(cfg: dict):
    """E1's training draw and the test set, average-pooled by ``pool`` (as E4's)."""
    (X, y), (Xt, yt), classes = training_draw(cfg)
    pool = cfg["pool"]
    return (F.avg_pool2d(X, pool), y), (F.avg_pool2d(Xt, pool), yt), classes


def model_id(depth: int, arm: dict, seed: int) -> str:
    return e1.model_id(depth, arm, seed)


def train_network(store, train, test, classes, depth, arm, seed, cfg, runs: Path) -> None:
    """One network of one arm, from the seed's initial weights, stored as it ends."""
    size = train[0].shape[-1]
    torch.manual_seed(seed)  # every arm of a seed starts from the same weights
    model = ResidualCNN(1, cfg["width"], depth, classes, image_size=size)
    start = time.perf_counter()
    fit(
        model,
        train,
        action=arm["action"],
        lam=arm["lam"],
        anchor=arm["anchor"],
        epochs=cfg["epochs"],
        lr=cfg["lr"],
        batch_size=cfg["batch_size"],
        seed=seed,  # and the same data order
        checkpoint_dir=runs / model_id(depth, arm, seed),
        progress=False,
    )
    metrics = e1.measure(model, train, test, cfg, path_model=True)
    seconds = time.perf_counter() - start
    hparams = dict(arm, depth=depth, kind="residual", machine=machine(), commit=commit())
    store.add(
        e1.row(model_id(depth, arm, seed), hparams, seed, metrics, cfg["epochs"], seconds),
        metrics,
    )
    print(
        f"E1-CNN: {model_id(depth, arm, seed)}: test accuracy {metrics['test_accuracy']:.4f}, "
        f"A/A_min {metrics['ratio_prior']:.2f} in {seconds:.0f} s",
        flush=True,
    )


def train_controls(store, train, test, classes, cfg, done: set[str]) -> None:
    """E1's controls: a depth-0 CNN per seed (stem and read-out alone), logistic regression."""
    size = train[0].shape[-1]

    def depth0() -> nn.Module:
        full = ResidualCNN(1, cfg["width"], 1, classes, image_size=size)
        return nn.Sequential(full.stem, full.head)

    e1.train_controls(store, train, test, classes, cfg, done, depth0=depth0)


def run(cfg: dict, store_path: Path, progress: bool) -> None:
    store_path.parent.mkdir(parents=True, exist_ok=True)
    store = ZooStore(store_path)
    try:
        train, test, classes = load(cfg)
        prior = label_prior(train[1], classes)
        print(
            f"E1-CNN: {len(train[0])} training images at {train[0].shape[-1]}×"
            f"{train[0].shape[-1]} (label marginal max {float(prior.max()):.3f}), "
            f"{len(test[0])} test images; {machine()}",
            flush=True,
        )
        train_controls(store, train, test, classes, cfg, store.model_ids())
        for seed in cfg["seeds"]:  # seeds outermost: an early stop leaves whole seeds
            for depth in cfg["depths"]:
                for arm in cfg["arms"]:
                    if model_id(depth, arm, seed) not in store.model_ids():
                        train_network(
                            store, train, test, classes, depth, arm, seed, cfg,
                            store_path.parent / "runs",
                        )  # fmt: skip
    finally:
        store.close()
    checkpoint_wal(store_path)


def analyse(cells: list[dict], cfg: dict) -> dict:
    """E1's statistics and verdicts, with this arm's predictions."""
    return e1.analyse(cells, cfg, predictions=PREDICTIONS)


def section(results: dict) -> str:
    """The RESULTS.md section, written from ``results`` alone."""
    cfg = results["config"]
    seconds = sum(c["seconds"] for c in results["cells"])
    machines = sorted({c["hparams"].get("machine", "?") for c in results["cells"]})
    size = 28 // cfg["pool"]
    arms = ", ".join(
        a["arm"] + ("" if a["action"] is None else f" λ = {a['lam']:g}") for a in cfg["arms"]
    )
    header = [
        "## E1, residual-CNN arm — least action on convolutions (pre-registered)",
        "",
        f"Generated by `experiments/e1_cnn.py publish` from `experiments/e1-cnn/results.json` "
        f"({len(results['cells'])} networks, {seconds / 60:.0f} min of training and measuring "
        f"summed; machine: {'; '.join(machines)}). Fashion-MNIST, {cfg['train_size']} training "
        f"and {cfg['test_size']} test images average-pooled to {size} × {size}; ResidualCNN with "
        f"{cfg['width']} channels, L = {cfg['depths']}, {cfg['epochs']} epochs of Adam (lr "
        f"{cfg['lr']}, batch {cfg['batch_size']}); arms: {arms}; seeds {cfg['seeds']}, every arm "
        f"of a seed from the same initial weights and data order. Added after E1's MLP cells were "
        "read, so pre-registered on its own (its commit precedes its first cell); E1's analysis "
        f"code. Paths on the first {cfg['probe_size']} test images. Intervals are 95 % "
        "seed-bootstrap percentile intervals; ± is the sample standard deviation (ddof = 1).",
        "",
    ]
    return e1.section_body(results, header)


def publish(store_path: Path, cfg: dict, out: Path) -> Path:
    return e1.publish(store_path, cfg, out, module=sys.modules[__name__])


if __name__ == "__main__":
    main(sys.modules[__name__])

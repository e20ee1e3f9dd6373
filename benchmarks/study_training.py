"""The studies' full training configurations, one network at a time against as populations.

For each study whose networks share an architecture, its full configuration's training is run
twice in one session: one network after another (how the studies trained before populations)
and as populations (how they train now), and the wall times are stored as each is measured in
``benchmarks/study_training.json`` (a rerun skips what is stored; ``--fresh`` starts over).
Measurements after training are the same in both and are not timed. The VAEs of the
disentanglement study are not here: their step is arithmetic-bound on the CPU, where a
population is slower (see the population benchmark), so the study trains them one by one.

    nohup python benchmarks/study_training.py > .cache/study-training.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from memspace import ResidualMLP, fit, load_dataset  # noqa: E402
from memspace.population import Member, Population, train_population  # noqa: E402
from memspace.studies.capacity import (  # noqa: E402
    CAPACITY_CONFIGS,
    POPULATION_SIZE,
    cell_data,
    memorise,
    memorise_population,
)
from memspace.studies.robustness import ROBUSTNESS_CONFIGS  # noqa: E402

RESULTS = HERE / "study_training.json"
SECTION = "## The studies' training, before and after populations (issue #21)"
LAMBDAS = {
    None: 0.0,
    "predictive": 0.1,
    "predictive-excess": 0.1,
    "kinetic": 0.01,
    "jacobian": 0.01,
}


def least_action(data: str, depth: int):
    """experiments/least_action.py: 5 action terms × 3 seeds of one (data set, depth)."""
    config = {
        "digits": dict(width=32, epochs=30, lr=3e-3),
        "moons": dict(width=8, epochs=40, lr=1e-2),
    }[data]
    split = load_dataset(data, seed=0)
    runs = [(action, seed) for action in LAMBDAS for seed in range(3)]

    def factory():
        return ResidualMLP(split.input_shape[0], config["width"], depth, split.num_classes)

    def one_by_one():
        for action, seed in runs:
            torch.manual_seed(seed)
            fit(
                factory(),
                split.train,
                action=action,
                lam=LAMBDAS[action],
                epochs=config["epochs"],
                lr=config["lr"],
                batch_size=64,
                val_data=split.test,
                seed=seed,
                progress=False,
            )

    def together():
        members = [
            Member(seed=s, action=a, lam=LAMBDAS[a], epochs=config["epochs"], lr=config["lr"])
            for a, s in runs
        ]
        train_population(
            Population.from_seeds(factory, [s for _, s in runs]),
            split.train,
            members,
            batch_size=64,
            val_data=split.test,
            progress=False,
        )

    return one_by_one, together, f"{len(runs)} networks, {config['epochs']} epochs"


def robustness():
    """The robustness study's full configuration: its seeds' networks, checkpointed."""
    config = ROBUSTNESS_CONFIGS["full"]
    split = load_dataset(config["data"], seed=0)

    def factory():
        return ResidualMLP(
            split.input_shape[0], config["width"], config["depth"], split.num_classes
        )

    def one_by_one():
        with tempfile.TemporaryDirectory() as folder:
            for seed in config["seeds"]:
                torch.manual_seed(seed)
                fit(
                    factory(),
                    split.train,
                    epochs=config["epochs"],
                    lr=config["lr"],
                    batch_size=config["batch_size"],
                    val_data=split.test,
                    seed=seed,
                    checkpoint_dir=Path(folder) / f"seed-{seed}",
                    progress=False,
                )

    def together():
        with tempfile.TemporaryDirectory() as folder:
            seeds = config["seeds"]
            train_population(
                Population.from_seeds(factory, seeds),
                split.train,
                [Member(seed=s, epochs=config["epochs"], lr=config["lr"]) for s in seeds],
                batch_size=config["batch_size"],
                val_data=split.test,
                checkpoint_dir=Path(folder) / "train",
                progress=False,
            )

    return one_by_one, together, f"{len(config['seeds'])} seeds, {config['epochs']} epochs"


def capacity():
    """The capacity study's full grid of memorisation cells (kind × N × λ × seed)."""
    config = CAPACITY_CONFIGS["full"]
    split = load_dataset(config["data"], seed=0)
    X_all, y_all = split.train
    classes = split.num_classes
    cells = [
        (kind, n, float(lam), seed)
        for kind in config["kinds"]
        for n in config["sizes"]
        for lam in config["lambdas"]
        for seed in config["seeds"]
    ]

    def cell(kind, n, lam, seed):
        data = cell_data(split.train, classes, kind, n, seed)
        torch.manual_seed(seed)
        return ResidualMLP(X_all.shape[1], config["width"], config["depth"], classes), data

    options = dict(max_steps=config["max_steps"], lr=config["lr"], batch_size=config["batch_size"])

    def one_by_one():
        for kind, n, lam, seed in cells:
            model, (X, y) = cell(kind, n, lam, seed)
            memorise(
                model, X, y, action="predictive" if lam > 0 else None, lam=lam, seed=seed, **options
            )

    def together():
        ordered = cells  # in the study's order
        for start in range(0, len(ordered), POPULATION_SIZE):
            chunk = ordered[start : start + POPULATION_SIZE]
            built = [cell(*c) for c in chunk]
            memorise_population(
                [m for m, _ in built],
                [d for _, d in built],
                actions=["predictive" if c[2] > 0 else None for c in chunk],
                lams=[c[2] for c in chunk],
                seeds=[c[3] for c in chunk],
                **options,
            )

    return one_by_one, together, f"{len(cells)} cells, up to {config['max_steps']} steps"


def zoo():
    """The digits zoo's 128 models trained (measures off), one by one against in groups."""
    from memspace.zoo import expand, load_grid
    from memspace.zoo.runner import architecture_groups, train_group_and_measure

    grid = load_grid(str(HERE.parent / "experiments" / "zoo-digits.yaml"))
    models = expand(grid)

    def one_by_one():
        with tempfile.TemporaryDirectory() as folder:
            for m in models:
                train_group_and_measure([m], grid["data"], grid["stop"], folder, measures=False)

    def together():
        with tempfile.TemporaryDirectory() as folder:
            for group in architecture_groups(models, 1):
                train_group_and_measure(group, grid["data"], grid["stop"], folder, measures=False)

    return one_by_one, together, f"{len(models)} models, up to {grid['stop']['max_epochs']} epochs"


STUDIES = {
    "least action, digits, L = 8": lambda: least_action("digits", 8),
    "least action, digits, L = 32": lambda: least_action("digits", 32),
    "least action, moons, L = 8": lambda: least_action("moons", 8),
    "least action, moons, L = 32": lambda: least_action("moons", 32),
    "robustness (full)": robustness,
    "capacity (full)": capacity,
    "zoo (digits grid, training only)": zoo,
}


def markdown(stored: dict) -> str:
    lines = [
        SECTION,
        "",
        "Generated by `benchmarks/study_training.py`: each study's full configuration trained "
        "one network at a time (as before) and as populations (as now), in one session; wall "
        "time of the training alone (the measurements after it are the same both ways).",
        "",
        f"Machine: {stored.get('machine', 'unknown')}",
        "",
        "| study | what is trained | one by one | as populations | speed-up |",
        "|---|---|---|---|---|",
    ]
    for name in STUDIES:
        row = stored.get("studies", {}).get(name)
        if not row:
            continue
        speed = row["one_by_one"] / row["together"]
        lines.append(
            f"| {name} | {row['what']} | {row['one_by_one']:.1f} s | {row['together']:.1f} s | "
            f"×{speed:.2f} |"
        )
    lines += [
        "",
        "The disentanglement study's VAEs are not in the table: on this CPU their step is "
        "dominated by convolutions, and vmapped (grouped) convolutions are slower than "
        "separate ones (the population benchmark's β-VAE rows), so the study trains them one "
        "by one; `train_vae_population` trains the same networks and is there for a GPU.",
        "",
    ]
    return "\n".join(lines)


def write_section(text: str, out: Path) -> None:
    current = out.read_text() if out.exists() else ""
    if SECTION in current:
        head, _, tail = current.partition(SECTION)
        rest = tail.split("\n## ", 1)
        current = head.rstrip("\n") + "\n\n" + text + ("\n## " + rest[1] if len(rest) > 1 else "")
    else:
        current = current.rstrip("\n") + "\n\n" + text
    out.write_text(current)


def main() -> None:
    from fisher_benchmark import machine_description

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fresh", action="store_true")
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    args = parser.parse_args()
    torch.set_num_threads(2)
    stored = {} if args.fresh or not RESULTS.exists() else json.loads(RESULTS.read_text())
    stored["machine"] = machine_description("cpu")
    stored.setdefault("studies", {})
    for name, build in STUDIES.items():
        if name in stored["studies"] or (args.only and name not in args.only):
            continue
        one_by_one, together, what = build()
        times = {}
        for arm, fn in (("together", together), ("one_by_one", one_by_one)):
            start = time.perf_counter()
            fn()
            times[arm] = time.perf_counter() - start
            print(name, arm, f"{times[arm]:.1f} s", flush=True)
        stored["studies"][name] = {"what": what, **times}
        RESULTS.write_text(json.dumps(stored, indent=1))  # each study as it is measured
    text = markdown(stored)
    print(text)
    write_section(text, args.out)
    assert all(math.isfinite(r["together"]) for r in stored["studies"].values())


if __name__ == "__main__":
    main()

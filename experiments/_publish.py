"""experiments/RESULTS.md is assembled from one section file per experiment script.

Each script writes ``experiments/results/<name>.md`` (atomically) and calls
:func:`publish`, which rebuilds RESULTS.md from every section file in a fixed order, so
two scripts never overwrite each other's results.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from memspace._runs import write_atomic  # noqa: E402

ORDER = [
    "e1_least_action",
    "e1_cnn",
    "e2_zoo",
    "e3_capacity",
    "e4_reinitialization",
    "e5_disentanglement",
    "e6_grokking",
]
PRE_REGISTERED = {
    "e1_least_action",
    "e1_cnn",
    "e2_zoo",
    "e3_capacity",
    "e4_reinitialization",
    "e5_disentanglement",
    "e6_grokking",
}
RETIRED_NOTE = (
    "The v2 sections that preceded these experiments (least action on digits and moons, the "
    "memory-space studies, the digits zoo) were retired on 2026-12-06: they used the "
    "stem-anchored path, data where depth is untested, at most three seeds and typed "
    "thresholds, and parts of them were wrong (the corrections are listed in issue #20). E1–E5 "
    "replace them; the old text stays in the history (`git show 41b2283:experiments/RESULTS.md`)."
)


NUMERALS = ("(i)", "(ii)", "(iii)", "(iv)", "(v)", "(vi)")
CLAIM_SOURCES = {
    "(i)": "e1_least_action, e1_cnn",
    "(ii)": "e1_least_action, e1_cnn",
    "(iii)": "e2_zoo",
    "(iv)": "e3_capacity",
    "(v)": "e2_zoo, e4_reinitialization",
    "(vi)": "e5_disentanglement",
}
RESULT_FILES = {
    "e1_least_action": "e1",
    "e1_cnn": "e1-cnn",
    "e2_zoo": "e2",
    "e3_capacity": "e3",
    "e4_reinitialization": "e4",
    "e5_disentanglement": "e5",
    "e6_grokking": "e6",
}


def _numeral(claim: str) -> str | None:
    head = claim.split(" ", 1)[0]
    return head if head in NUMERALS else None


def _stem_beside(name: str, results: dict, verdict: dict) -> str:
    """The same question under the stem anchor (v2), where the experiment measured it."""
    a = results["analysis"]
    claim = verdict["claim"]
    e1 = name in ("e1_least_action", "e1_cnn")
    if e1 and claim.startswith("(i)"):
        depth = int(claim.rsplit("L = ", 1)[1])
        plain = next(s for s in a["summaries"] if s["arm"] == "plain" and s["depth"] == depth)
        r = plain["ratio_stem"]
        return f"plain nets' A/A_min = {r['value']:.2f} [{r['low']:.2f}, {r['high']:.2f}]"
    if e1 and claim.startswith("(ii)"):
        depth = int(claim.rsplit("L = ", 1)[1])
        arm = claim.split(": ", 1)[1].split(",")[0].replace("@prior", "@stem")
        for c in a["comparisons"]:
            if (c["arm"], c["depth"], c["lam"], c["measure"]) == (
                arm,
                depth,
                0.1,
                "test_accuracy",
            ):
                d = c["difference"]  # in points, as the prior-anchored verdicts
                return f"{arm}: {d['value']:+.2f} points [{d['low']:+.2f}, {d['high']:+.2f}]"
        return f"— ({arm} was not run)"
    if name == "e2_zoo" and claim.startswith("(iii) A/A_min"):
        entry = a.get("measures", {}).get("all", {}).get("action_ratio_stem")
        if entry:
            ci = entry["psi_ci"]
            return f"A/A_min (stem) Ψ = {ci['value']:+.2f} [{ci['low']:+.2f}, {ci['high']:+.2f}]"
    return "— (no path anchor)"


def _progress(a: dict) -> str:
    for done, total in (("networks", "expected"), ("models", "expected")):
        if done in a and total in a and a[done] < a[total]:
            return f" ({a[done]} of {a[total]} stored)"
    return ""


def claims_section(folder: Path = HERE) -> str:
    """THEORY §4–5's claims (i)–(vi), each with its tests' verdicts, read from the results files.

    Every row is a verdict some experiment's code computed; a claim no committed results file
    has reached yet says so. The stem-anchor column gives the same question under the v2 anchor
    where the experiment measured it.
    """
    from memspace.evaluation import read_results

    rows: dict[str, list[str]] = {n: [] for n in NUMERALS}
    for name, sub in RESULT_FILES.items():
        path = folder / sub / "results.json"
        if not path.is_file():
            continue
        results = read_results(path)
        note = _progress(results["analysis"])
        if note:  # an experiment still running reads no verdict into the claims
            for numeral, source in CLAIM_SOURCES.items():
                if name in source:
                    rows[numeral].append(
                        f"| {numeral} | {name}{note} | **running**: verdicts when complete "
                        "| — | — | — |"
                    )
            continue
        for v in results["analysis"].get("verdicts", []):
            numeral = _numeral(v["claim"])
            if numeral is None:
                continue
            interval = (
                ""
                if v["low"] is None or v["low"] != v["low"]
                else f" [{v['low']:.3g}, {v['high']:.3g}]"
            )
            effect = "—" if v["effect"] is None else f"{v['effect']:.3g}"
            p = "" if v["p"] is None else f", p = {v['p']:.3g}"
            caveat = v["note"].split("; ")[-1] if "grid brackets allow" in v["note"] else ""
            p += f"; {caveat}" if caveat else ""
            rows[numeral].append(
                f"| {v['claim']} | {name}{note} | **{v['verdict']}** | {v['n']} | "
                f"{effect}{interval}{p} | {_stem_beside(name, results, v)} |"
            )
    lines = [
        "## The claims of docs/theory.md §4–5, where each stands",
        "",
        "Read by code from the committed results files of the pre-registered experiments (each "
        "row one pre-registered test; the sections below give its test in full). Under the prior "
        "anchor (v3); the last column gives the same question under the stem anchor (v2) where "
        "the experiment measured it.",
        "",
        "| claim | experiment | verdict | n | effect [interval] | stem anchor beside it |",
        "|---|---|---|---|---|---|",
    ]
    for numeral in NUMERALS:
        lines += rows[numeral] or [
            f"| {numeral} | {CLAIM_SOURCES[numeral]} | **not yet run** | — | — | — |"
        ]
    return "\n".join(lines) + "\n"


def publish(name: str, text: str) -> Path:
    """Write the section ``name`` and rebuild experiments/RESULTS.md; return its path."""
    sections = HERE / "results"
    sections.mkdir(exist_ok=True)
    write_atomic(sections / f"{name}.md", text)
    present = sorted(
        sections.glob("*.md"),
        key=lambda p: (ORDER.index(p.stem) if p.stem in ORDER else 99, p.stem),
    )
    parts = [
        "# Experiment results",
        "",
        "Each section is written by the script it names (see `experiments/`) from its "
        "machine-readable results; numbers are as measured. The pre-registered experiments "
        "come first: their predictions were committed before their runs and their verdicts "
        "are computed by code (docs/theory.md §6). " + RETIRED_NOTE,
        "",
    ]
    parts += [claims_section()]
    parts += [p.read_text().rstrip() + "\n" for p in present if p.stem in PRE_REGISTERED]
    return write_atomic(HERE / "RESULTS.md", "\n".join(parts))

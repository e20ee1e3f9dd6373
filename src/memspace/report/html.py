"""A self-contained HTML report: figures inlined as PNG, no network requests.

Every figure has a caption saying what it shows and which formula of docs/theory.md it
plots (docs/theory.md in the repository).

A report may be rendered from a metrics file someone else wrote, so the page runs no
script at all: its Content-Security-Policy is ``default-src 'none'; script-src 'none'``
(images only as inline ``data:`` PNGs, inline style), and every value that reaches the
HTML — names, paths, numbers, table cells, whatever their type — goes through
:func:`_text` or :func:`_num`, which escape it.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Any

from .._errors import MemspaceError
from .._runs import write_atomic
from ..studies.base import StudySummary
from ..studies.results import NetworkMeasures
from . import figures

__all__ = ["check_metrics", "render_report", "render_zoo_report"]

CAPTIONS = {
    "lens": (
        "The logit lens as a predictive path",
        "Every state of the residual stream read with the model's final norm and unembedding, per "
        "token, from the prior π through the embeddings and each layer to the model's prediction. "
        "Left: the RMS speed of each step. Right: the share of tokens whose lens agrees with the "
        "model's top-1 at each state, and the share whose prediction has settled by then (it "
        "agrees at every later state).",
    ),
    "lens-heatmap": (
        "Where each token's prediction moves",
        "The first sequence, token by token: each step's Fisher–Rao length times L+1, from the "
        "prior (step 0) to the last layer. A bright cell is a layer that changes that token's "
        "prediction much.",
    ),
    "predictive": (
        "The predictive path over depth",
        "Left: the read-out applied to every state of the residual stream, p_l = "
        "softmax(head(x_l)), "
        "moves through the probability simplex; the speed of block l is the RMS over data of the "
        "exact "
        "Fisher–Rao distance d(p_l, p_{l+1}) = 4·arcsin(‖√p_l − √p_{l+1}‖/2) divided by h = 1/L. "
        "The "
        "dotted line is the constant speed of least action: every point on its geodesic at "
        "constant "
        "speed, A_min = E d(p_0, p_L)² (exact; docs/theory.md §3). Right: the lens accuracy, the "
        "accuracy of head(x_l) at every state.",
    ),
    "points": (
        "Paths of single points against their geodesics",
        "Per test point, its predictive path over depth (solid) and the constant-speed geodesic "
        "between "
        "its end points (dotted). For two classes the simplex with the Fisher metric is a "
        "quarter circle "
        "(θ = atan2(√p₁, √p₀), d = 2|Δθ|), so the angle is drawn; otherwise the distance from "
        "the start "
        "d(p_0, p_l), normalised by d(p_0, p_L).",
    ),
    "sensitivity": (
        "Block sensitivity and deleting a block",
        "Left: block sensitivity s_l² = E[(J_{l+1} h v_l)ᵀ Λ(p) (J_{l+1} h v_l)]/h² with J_{l+1} "
        "taken "
        "after the block: a robustness diagnostic, not an action (docs/theory.md §3.2). Middle: "
        "the "
        "measured E KL(p ‖ p with block l skipped) beside its first-order value h²s_l²/2. Right: "
        "the "
        "Euclidean speed √E‖v_l‖² (kinetic action h Σ E‖v_l‖², a coordinate-dependent baseline).",
    ),
    "trajectories": (
        "Paths of data points through depth",
        "Test points carried from the stem's output x_0 (circles) to the head's input x_L "
        "(triangles) "
        "by the residual blocks x_{l+1} = x_l + h v_l(x_l), projected on the two principal axes "
        "of the "
        "stream; each step is coloured by that point's predictive speed d(p_l, p_{l+1})/h.",
    ),
    "spectrum": (
        "Fisher eigenvalue spectrum",
        "Left: the top eigenvalues λ_i of the true Fisher F = E_x[Jᵀ Λ(p) J] by Lanczos. Right: "
        "its "
        "spectral density by stochastic Lanczos quadrature, as spectral mass per decade of λ (the "
        "legend gives the share of the spectrum below six decades under λ_max: directions the data "
        "barely constrain). The left legend gives tr F and the effective dimension "
        "d_eff(z) = Σ λ_i/(λ_i + z) at z = 10⁻³ λ_max (docs/theory.md §1).",
    ),
    "capacity": (
        "Memorisation under an action budget",
        "Left: the fraction of seeds whose residual MLP fits all N training points (100 % train "
        "accuracy "
        "within the step budget), for random labels (circles) and real labels (squares), per "
        "weight λ of "
        "the predictive action in the loss; N* is the largest N fitted by at least half the "
        "seeds. Right: "
        "the mean predictive action per point, E_x A, of the fitted networks against the bits "
        "the labels carry, N·log₂C; the legend gives the least-squares slope (a per-point mean "
        "against a total, so not an action per bit; docs/theory.md §5.1), or says there are "
        "too few fitted sizes for one.",
    ),
    "cover": (
        "The closed-form anchor",
        "The same memorisation on a bias-free linear model over N standard Gaussian points in d "
        "dimensions with "
        "random ±1 labels: the fraction fitted by training (circles), the fraction separable by "
        "an exact "
        "linear program (squares) and Cover's function-counting probability P(N, d) = 2^(1−N) "
        "Σ_{k<d} "
        "binom(N−1, k), which is ½ at N = 2d (docs/theory.md §5.1).",
    ),
    "reinit": (
        "Layer re-initialization",
        "Test error after resetting one layer (row) of the trained network to its value at epoch "
        "τ (τ = 0: "
        "initialisation), or to a fresh draw from the initialisation distribution (mean of "
        "three), every "
        "other layer kept trained (Zhang, Bengio & Singer). A layer is robust when resetting it "
        "to τ = 0 "
        "costs at most 0.01 test error, critical when the error comes within 0.1 of chance, "
        "intermediate "
        "otherwise (docs/theory.md §5.2).",
    ),
    "noise": (
        "Weight noise and Fisher sensitivity",
        "Left: E_δ E_x KL(p_θ ‖ p_θ+δ) under Gaussian noise δ ~ N(0, σ²I) on one layer (dots, "
        "Monte Carlo) "
        "against its quadratic prediction (σ²/2) tr F_ℓℓ (lines); the legend gives the σ where "
        "the measured "
        "value leaves ½ δᵀFδ of the same draws by more than 10 %. Right: each layer's Fisher "
        "sensitivity "
        "against the damage of resetting it, with Kendall's τ (docs/theory.md §5.2).",
    ),
    "zoo-scatter": (
        "Measures against the gap",
        "Each panel: one measure (the six with the largest |Ψ|) against the generalization gap "
        "(train − test accuracy), one dot per model of the zoo that met its stopping rule.",
    ),
    "zoo-cdf": (
        "Sign errors over environments",
        "The empirical CDF of the Hoeffding-weighted sign error over the environments of "
        "Dziugaite et al. "
        "2020 (pairs of configurations one hyperparameter apart, kept at an effective sample "
        "size ≥ the "
        "stated minimum); a robust measure has its whole CDF near 0, and its max is the robust "
        "criterion.",
    ),
    "grokking": (
        "Memorise, then compress",
        "Modular addition trained full batch, one thin line per run (colour: arm), on a shared "
        "log-step axis; a dotted line marks the step where a run's test accuracy first reaches "
        "50 %. Top: accuracy, then the effective dimension, Fisher–Rao norm and tr F on the "
        "training pairs (the true Fisher). Bottom: the weight norm, the Fourier concentration of "
        "the number embedding, the Fisher arc length of training so far (F at each segment's "
        "midpoint), and the embedding's spectrum at the first and last checkpoint.",
    ),
    "traversal": (
        "Latent traversals and the decoder metric",
        "Left: decoded images as one latent moves from −2 to 2 around an encoded image (rows: "
        "latents, "
        "labelled with the factor each is most informative about). Right: the decoder's "
        "pull-back metric "
        "G(z) = J(z)ᵀ diag(p(1 − p)) J(z) for Bernoulli pixels, |G| averaged over encoded "
        "points; a "
        "disentangled decoder has G block-diagonal over the latents grouped by factor "
        "(docs/theory.md §5.4).",
    ),
    "training": (
        "Training curves",
        "Cross-entropy and accuracy per epoch (solid: train, dashed: test) and the predictive "
        "action A "
        "with its exact least action A_min (dotted) on a probe set of training points "
        "(docs/theory.md §3–§4).",
    ),
}

ROWS = [
    ("test accuracy", "test_acc", "{:.3f}", "fraction of test points classified correctly"),
    ("train accuracy", "train_acc", "{:.3f}", ""),
    ("generalization gap", "gap", "{:+.3f}", "train − test accuracy"),
    ("Fisher–Rao norm ‖θ‖²_fr", "fisher_rao_norm", "{:.4g}", "θᵀFθ (Liang et al. 2017; §2)"),
    (
        "Fisher trace tr F",
        "fisher_trace",
        "{:.4g}",
        "total sensitivity to weight noise: E KL ≈ σ²/2 tr F (§1, §5)",
    ),
    ("top eigenvalue λ_max", None, "{:.4g}", "stiffest direction of F (Lanczos)"),
    (
        "effective dimension d_eff",
        "effective_dimension",
        "{:.1f}",
        "Σ λ/(λ+z), z = 10⁻³ λ_max (§1)",
    ),
    ("path anchor", ("predictive_path", "anchor"), "{}", "where the path starts (§3.1a)"),
    (
        "predictive action A",
        ("predictive_path", "action"),
        "{:.4g}",
        "E (L+1)·[d(π, p_0)² + Σ_l d(p_l, p_{l+1})²], from the prior π (§3.1a)",
    ),
    (
        "least action A_min",
        ("predictive_path", "least_action"),
        "{:.4g}",
        "E d(π, p_L)², exact (§3.1a)",
    ),
    (
        "A / A_min",
        ("predictive_path", "ratio"),
        "{:.3f}",
        "distance from least action: 1 = even steps on the geodesic, L+1 = idle blocks (§3.1a)",
    ),
    (
        "uneven speed",
        ("predictive_path", "unevenness"),
        "{:.3f}",
        "E A / E C², ≥ 1; × the detour factor = A / A_min (§3.1)",
    ),
    ("detour factor", ("predictive_path", "detour_factor"), "{:.3f}", "E C² / E d², ≥ 1 (§3.1)"),
    (
        "stem's share of the length",
        ("predictive_path", "stem_share"),
        "{:.3f}",
        "E d(π, p_0) / E C: near 1 when the stem and read-out do the work",
    ),
    (
        "A / A_min, stem anchor (v2)",
        ("predictive_path_stem", "ratio"),
        "{:.3f}",
        "the path from p_0 = head(stem(x)) (§3.1a, v2): blind to idle depth",
    ),
    (
        "predictive length",
        ("predictive_path", "length"),
        "{:.4g}",
        "E [d(π, p_0) + Σ_l d(p_l, p_{l+1})] (§3.1a)",
    ),
    (
        "kinetic action",
        ("sensitivity", "kinetic_action"),
        "{:.4g}",
        "h Σ_l E‖v_l‖², Euclidean baseline (§3)",
    ),
    ("Fisher distance from init", "fisher_distance_from_init", "{:.4g}", "(θ−θ₀)ᵀF(θ−θ₀) (§2)"),
    ("Euclidean distance from init", "euclidean_distance_from_init", "{:.4g}", "‖θ−θ₀‖"),
    (
        "Fisher arc length of training",
        "trajectory_length",
        "{:.4g}",
        "Σ_k ‖Δθ_k‖_F over checkpoints (§2)",
    ),
    ("parameters", "num_params", "{:d}", ""),
]


def _value(measures: NetworkMeasures, key) -> Any:
    if key is None:
        return None
    if isinstance(key, tuple):
        node = getattr(measures, key[0])
        for part in key[1:]:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        return node if not isinstance(node, dict) else None
    return getattr(measures, key)


def _row_value(label: str, key, measures: NetworkMeasures):
    if label.startswith("top eigenvalue"):
        values = measures.top_eigenvalues or [None]
        return values[0]
    return _value(measures, key)


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure_block(key: str, fig) -> str:
    title, caption = CAPTIONS[key]
    return (
        f'<figure id="fig-{key}"><img alt="{html.escape(title)}" '
        f'src="data:image/png;base64,{_png(fig)}">'
        f"<figcaption><b>{html.escape(title)}.</b> {html.escape(caption)}</figcaption></figure>"
    )


def summary_table(networks: dict[str, Any]) -> str:
    names = list(networks)
    head = "".join(
        f"<th>{html.escape(n)}"
        + (
            f"<br><small>action {html.escape(str(networks[n]['action']))}, "
            f"λ = {html.escape(str(networks[n].get('lambda', '')))}</small>"
            if "action" in networks[n]
            else ""
        )
        + "</th>"
        for n in names
    )
    rows = []
    for label, key, fmt, note in ROWS:
        cells = []
        for n in names:
            value = _row_value(label, key, networks[n]["measures"])
            try:
                text = fmt.format(value) if value is not None else "—"
                cells.append(f"<td>{html.escape(text)}</td>")
            except (ValueError, TypeError):
                cells.append(f"<td>{html.escape(str(value))}</td>")
        rows.append(
            f"<tr><th>{html.escape(label)}</th>{''.join(cells)}<td "
            f"class=note>{html.escape(note)}</td></tr>"
        )
    return f"<table><tr><th>measure</th>{head}<th>meaning</th></tr>{''.join(rows)}</table>"


STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;
margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{margin-bottom:.2em} .sub{color:#666;margin-top:0}
table{border-collapse:collapse;margin:1em 0;font-size:.92em}
td,th{border:1px solid #ddd;padding:.35em .6em;text-align:right} th{background:#f6f6f6}
td.note{text-align:left;color:#666;font-size:.9em}
tr th:first-child{text-align:left}
figure{margin:1.6em 0;padding:.8em;border:1px solid #eee;border-radius:6px}
figure img{max-width:100%}
figcaption{font-size:.92em;color:#333;margin-top:.4em}
"""

CSP = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'none'; "
    "base-uri 'none'; form-action 'none'"
)
"""The page's Content-Security-Policy: no script of any kind, no request, images only inline."""


def _text(value: Any) -> str:
    """Any value as escaped HTML text."""
    return html.escape(
        value
        if isinstance(value, str)
        else json.dumps(value)
        if isinstance(value, (dict, list))
        else str(value)
    )


def _num(value: Any, fmt: str = "{:.3g}") -> str:
    """A number formatted with ``fmt`` (— for None or NaN); anything else escaped as text."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return html.escape(fmt.format(value))
        except (ValueError, TypeError):
            pass
    return _text(value)


def _spread(entry: dict[str, Any], fmt: str = "{:.3f}") -> str:
    """``mean ± sample std [interval]`` over seeds; one seed says so instead of "± 0.000"."""
    mean, std = entry.get("mean"), entry.get("std")
    if std is None or (isinstance(std, float) and math.isnan(std)) or entry.get("n") == 1:
        return f"{_num(mean, fmt)} (one seed: no spread)"
    text = f"{_num(mean, fmt)} ± {_num(std, fmt)}"
    low, high = entry.get("low"), entry.get("high")
    if isinstance(low, (int, float)) and isinstance(high, (int, float)) and low == low:
        text += f" [{_num(low, fmt)}, {_num(high, fmt)}]"
    return text


def check_metrics(metrics: Any, source: str = "the metrics") -> None:
    """Refuse anything that is not a memspace metrics dict.

    ``{"networks": {name: {"measures": {...}}}}``.

    Raises:
        MemspaceError: naming ``source`` and the first missing or malformed part.
    """
    if (
        not isinstance(metrics, dict)
        or not isinstance(metrics.get("networks"), dict)
        or not (metrics["networks"] or metrics.get("studies") or metrics.get("language"))
    ):
        raise MemspaceError(f"{source} is not a memspace metrics file: it has no 'networks'")
    language = metrics.get("language")
    if language is not None and (
        not isinstance(language, dict)
        or not isinstance(language.get("lens"), dict)
        or not isinstance(language.get("fisher"), dict)
        or not isinstance(language.get("heatmap"), dict)
    ):
        raise MemspaceError(f"{source}: 'language' must hold 'lens', 'fisher' and 'heatmap'")
    studies = metrics.get("studies", {})
    known = section_names()
    if not isinstance(studies, dict) or any(name not in known for name in studies):
        raise MemspaceError(f"{source}: 'studies' must map {' or '.join(known)} to their summaries")
    for name, net in metrics["networks"].items():
        if not isinstance(net, dict) or not isinstance(net.get("measures"), dict):
            raise MemspaceError(
                f"{source} is not a complete memspace metrics file: network {name!r} has no "
                "'measures'"
            )
        if not isinstance(net.get("history", []), list):
            raise MemspaceError(f"{source}: the history of network {name!r} is not a list")
    if not isinstance(metrics.get("run", {}), dict):
        raise MemspaceError(f"{source}: 'run' is not a mapping")


def render_report(metrics: dict[str, Any], path: str | Path, title: str | None = None) -> Path:
    """Write the report for ``metrics`` (as written by the demo or ``measure``) to ``path``.

    Atomically.

    Names from the user (networks, files) are shown literally, in the HTML (escaped) and
    in the figures (no mathtext).
    """
    check_metrics(metrics)
    networks = {
        name: {**net, "measures": NetworkMeasures.from_dict(net["measures"], f"network {name!r}")}
        for name, net in metrics["networks"].items()
    }  # typed, checked on read
    drawn = {
        figures.literal(name): net for name, net in networks.items()
    }  # names in figures, literally
    run = metrics.get("run", {})
    title = title or f"memspace report: {run.get('data', 'model')}"
    details = ", ".join(
        f"{_text(k)}: {_num(v, '{:.0f} s') if k == 'seconds' else _text(v)}"
        for k, v in run.items()
        if k != "config"
    )
    config = html.escape(json.dumps(run.get("config", {})))
    body = [_networks_section(networks, drawn, config)] if networks else []
    if metrics.get("language"):
        body.append(_language_section(metrics["language"]))
    for name, summary in metrics.get("studies", {}).items():
        heading, draw = study_section(name)
        if name != "zoo":  # the demo's quick zoo is an evaluation, checked by its own section
            summary = StudySummary.from_dict(name, summary, f"study {name!r}")
        body.append(f"<h2>{html.escape(heading)}</h2>\n{draw(summary)}")
    return write_atomic(Path(path), _page(title, f'<p class="sub">{details}</p>\n' + "".join(body)))


def _page(title: str, body: str) -> str:
    """A self-contained HTML page: inline style, no script, no network requests (module doc)."""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport"
content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<title>{html.escape(title)}</title><style>{STYLE}</style></head>
<body>
<h1>{html.escape(title)}</h1>
{body}
</body></html>
"""


def _networks_section(networks: dict[str, Any], drawn: dict[str, Any], config: str) -> str:
    blocks = []
    for key, draw in (
        ("predictive", figures.predictive_profile),
        ("points", figures.point_paths),
        ("sensitivity", figures.sensitivity),
        ("trajectories", figures.trajectories),
    ):
        fig = draw(drawn)
        if fig is not None:
            blocks.append(_figure_block(key, fig))
    skipped = [
        f"<p class=note><b>{html.escape(n)}:</b> path measures skipped: "
        f"{_text(v['measures'].path_skipped)}</p>"
        for n, v in networks.items()
        if v["measures"].path_skipped is not None
    ]
    blocks.extend(skipped)
    blocks.append(_figure_block("spectrum", figures.spectrum(drawn)))
    curves = figures.training_curves(drawn)
    if curves is not None:
        blocks.append(_figure_block("training", curves))
    return f"""<p>A network as a memory space (docs/theory.md): how much it stores (Fisher–Rao norm,
trace, effective dimension),
how a residual network carries its prediction along depth (the predictive path in the Fisher–Rao
simplex, its
action and its exact least action; the sensitivity of each block), and what training cost to write
it (distance
from initialisation, arc length). The least-action network was trained with the predictive action
added to its
loss. Configuration: <code>{config}</code></p>
<h2>Summary</h2>
{summary_table(networks)}
<h2>Figures</h2>
{"".join(blocks)}
"""


def _language_section(language: dict[str, Any]) -> str:
    """A language model: its Fisher over positions and its logit lens as a predictive path."""
    lens, fisher = language["lens"], language["fisher"]
    rows = [
        ("family", _text(language.get("family"))),
        ("positions measured", _num(fisher.get("positions"), "{:.0f}")),
        ("tr F (MC, one label per position)", _num(fisher.get("trace"))),
        ("Fisher–Rao norm θᵀFθ", _num(fisher.get("fisher_rao_norm"))),
        ("lens path length E C", _num(lens.get("length"))),
        ("action E A / least action E d(π, p_L)²", _num(lens.get("ratio"))),
        ("mean settle layer (of L)", f"{_num(lens.get('settle_layer'))} of {lens.get('depth')}"),
    ]
    table = "".join(f"<tr><td>{html.escape(k)}</td><td>{v}</td></tr>" for k, v in rows)
    plan = language.get("plan", {})
    exact = ", ".join(html.escape(str(k)) for k in plan.get("exact", {})) or "none"
    return (
        f"<h2>Language model: {html.escape(str(language.get('model', '')))}</h2>\n"
        f'<table class="summary">{table}</table>\n'
        f'<p class="sub">Layers on the exact per-sample path: {exact}.</p>\n'
        + _figure_block("lens", figures.lens_profile(language))
        + _figure_block("lens-heatmap", figures.lens_heatmap(language))
    )


def _capacity_section(summary: dict[str, Any]) -> str:
    anchor = summary["anchor"]
    lams = sorted({row["lam"] for row in summary["table"]})
    top = max((row["n"] for row in summary["table"] if "n" in row), default=None)

    def n_star_text(value: Any) -> str:
        # N* at the largest N tried is censored: the network may store more
        if value is not None and top is not None and value >= top:
            return f"≥ {value} (the largest N tried: censored)"
        return "below the smallest N tried" if value is None else str(value)

    n_star = ", ".join(
        f"{kind} labels λ = {lam:g}: N* = {n_star_text(summary['n_star'].get(f'{kind}/{lam:g}'))}"
        for kind in ("random", "real")
        for lam in lams
        if f"{kind}/{lam:g}" in summary["n_star"]
    )
    bits = summary["cost_per_bit"]
    cost = ", ".join(
        f"{key}: {value['slope']:.3g} ± {value['stderr']:.2g}"
        for key, value in bits.items()
        if value["slope"] == value["slope"]
    )
    crossing = anchor["n_star_fitted"]["crossing"]
    return (
        "<p>How much a network stores and what storing it costs (docs/theory.md §5.1): residual "
        "MLPs trained "
        "to fit N points with random or real labels under an action budget λ. "
        f"{html.escape(n_star)}. Predictive "
        "slope of the fitted networks' mean action per point against stored bits (± standard "
        "error): "
        f"{html.escape(cost or 'too few fitted cells')}. "
        f"Anchor: a linear model in d = {_num(anchor['d'])} dimensions fits random labels up to "
        "N* ≈ "
        f"{_num(crossing, '{:.1f}')} (Cover: 2d = {_num(anchor['two_d'])}).</p>"
        + _figure_block("capacity", figures.capacity(summary))
        + _figure_block("cover", figures.cover_anchor(anchor))
    )


def _robustness_section(summary: dict[str, Any]) -> str:
    labels = ", ".join(
        f"{name}: {label}"
        for name, label in zip(map(str, summary["layers"]), map(str, summary["labels"]))
    )
    tau = summary["kendall_pooled"]
    return (
        "<p>What survives perturbation (docs/theory.md §5.2). Layers after resetting to their "
        "initial value: "
        f"{html.escape(labels)}. Bottom third critical: "
        f"{_num(100 * summary['bottom_critical'], '{:.0f}')} %; top "
        f"third robust: {_num(100 * summary['top_robust'], '{:.0f}')} %. Kendall τ between "
        "Fisher sensitivity "
        f"tr F_ℓℓ and the damage of resetting: {_num(tau['tau'], '{:.2f}')} (p = "
        f"{_num(tau['p_value'], '{:.2g}')}, "
        f"{_num(tau['num_layers'])} layer–seed pairs).</p>"
        + _layer_table(summary)
        + _figure_block("reinit", figures.reinitialization(summary))
        + _figure_block("noise", figures.weight_noise(summary))
    )


def _layer_table(summary: dict[str, Any]) -> str:
    """Per layer: its label, the damage of resetting it, its Fisher sensitivity.

    And for blocks the block sensitivity and measured deletion KL (first seed).
    """
    error = summary["error"]
    reset, rnd = summary["columns"].index("0"), summary["columns"].index("rnd")
    traces = summary["noise"]["fisher_trace"]
    sens = summary.get("sensitivity") or {}
    blocks = [n for n in summary["layers"] if n.startswith("blocks.")]
    rows = []
    for i, name in enumerate(summary["layers"]):
        b = blocks.index(name) if name in blocks else None
        extra = (
            f"<td>{_num(sens['sensitivity'][b])}</td><td>{_num(sens['deletion_kl'][b])}</td>"
            if b is not None and "deletion_kl" in sens and b < len(sens["deletion_kl"])
            else "<td>—</td><td>—</td>"
        )
        rows.append(
            f"<tr><th>{_text(name)}</th><td>{_text(summary['labels'][i])}</td>"
            f"<td>{_num(error[i][reset] - summary['trained_error'], '{:+.3f}')}</td>"
            f"<td>{_num(error[i][rnd] - summary['trained_error'], '{:+.3f}')}</td>"
            f"<td>{_num(traces[i])}</td>"
            f"{extra}</tr>"
        )
    return (
        "<table><tr><th>layer</th><th>label</th><th>Δ reset to τ = 0</th><th>Δ re-randomized</th>"
        "<th>tr F_ℓℓ</th><th>block sensitivity s_l</th><th>deletion KL</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _disentanglement_section(summary: dict[str, Any]) -> str:
    columns = [
        "beta",
        "lam",
        "seed",
        "reconstruction",
        "kl",
        "mig",
        "sap",
        "dci_disentanglement",
        "dci_completeness",
        "dci_informativeness",
        "modularity",
        "beta_vae",
        "factor_vae",
        "block_diagonality",
        "active_latents",
    ]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    rows = "".join(
        "<tr>" + "".join(f"<td>{_num(row[c])}</td>" for c in columns) + "</tr>"
        for row in summary["table"]
    )
    tau = summary["tau_block_diagonality"]
    effect = ", ".join(f"{k} {v:+.3f}" for k, v in summary["lambda_effect"].items())
    quick = summary["config"]["steps"] < 500
    caveat = (
        f" This is the quick configuration ({_num(summary['config']['steps'])} training steps): "
        "a smoke run whose "
        "scores sit near chance, not a result."
        if quick
        else ""
    )
    return (
        "<p>How economically a network stores (docs/theory.md §5.4): β-VAEs on "
        "dSprites-structured images, with "
        "and without the kinetic action of the decoder's residual path in the loss. Kendall τ "
        "between the block-"
        f"diagonality of the decoder metric and MIG: {_num(tau['mig'], '{:.2f}')}, and DCI "
        "disentanglement: "
        f"{_num(tau['dci_disentanglement'], '{:.2f}')}, over {len(summary['table'])} models. "
        "Effect of λ = "
        f"{_num(summary['lams'][-1], '{:g}')} against λ = {_num(summary['lams'][0], '{:g}')} "
        "(mean difference): "
        f"{html.escape(effect)}."
        f"{caveat}</p>"
        f"<table><tr>{head}</tr>{rows}</table>"
        + _figure_block("traversal", figures.traversal(summary))
        + (_additivity_block(summary["additivity"]) if "additivity" in summary else "")
    )


def _additivity_block(additivity: dict[str, Any]) -> str:
    numbers, networks = additivity["numbers"], additivity["networks"]

    def cell(entry: dict[str, float]) -> str:
        return f"<td>{_spread(entry)}</td>"

    rows = "".join(
        f"<tr><th>{html.escape(name)}</th>"
        + "".join(
            cell(networks[key][column])
            for column in ("least_action", "action", "ratio", "test_accuracy")
        )
        + "</tr>"
        for key, name in (
            ("joint", "joint (C_a·C_b classes)"),
            ("a", "factor a alone"),
            ("b", "factor b alone"),
        )
    )
    n = numbers["least_action_ratio"]["n"]
    plural = "s" if not isinstance(n, (int, float)) or n != 1 else ""
    return (
        "<h3>Additivity of least action on a product task</h3><p>Two independent factors "
        "learned by one "
        f"network or by two ({_num(n)} seed{plural}, held-out points). Joint least action over "
        "the sum "
        f"of the separate ones: {_spread(numbers['least_action_ratio'])}; joint action over the "
        "sum of "
        "its own marginal "
        f"paths' actions: {_num(numbers['marginal_action_ratio']['mean'], '{:.3f}')} (1 to "
        "second order when the "
        "prediction factorises); the spherical Pythagorean law cos(d/2) = cos(d_a/2)·cos(d_b/2) "
        "predicts the "
        "joint least action from the marginals' at "
        f"{_num(numbers['pythagorean_ratio']['mean'], '{:.3f}')} of "
        "their sum; factorisation gap (Fisher–Rao distance of the joint prediction from the "
        "product of its "
        "marginals): "
        f"{_num(numbers['factorisation_gap']['mean'], '{:.3f}')}.</p>"
        "<table><tr><th>network</th><th>A_min</th><th>A</th>"
        f"<th>A/A_min</th><th>test accuracy</th></tr>{rows}</table>"
    )


ZOO_TITLE = "Does complexity predict generalization? A quick zoo"


def _grokking_section(summary: dict[str, Any]) -> str:
    config = summary["config"]
    arms: dict[str, list[dict[str, Any]]] = {}
    for run in summary["runs"]:
        arms.setdefault(run["arm"], []).append(run)

    def steps(values: list[Any]) -> str:
        return ", ".join("never" if v is None else _num(v, "{:d}") for v in values)

    rows = "".join(
        f"<tr><th>{_text(arm)}</th><td>{len(runs)}</td>"
        f"<td>{steps([r['events']['effective_dimension']['memorised'] for r in runs])}</td>"
        f"<td>{steps([r['events']['effective_dimension']['grokked'] for r in runs])}</td>"
        f"<td>{_text(', '.join(_num(r['test_accuracy'][-1], '{:.2f}') for r in runs))}</td>"
        f"<td>{_text(', '.join(_num(r['fourier_concentration'][-1], '{:.2f}') for r in runs))}"
        "</td></tr>"
        for arm, runs in arms.items()
    )
    verdicts = "".join(
        f"<tr><th>{_text(v['claim'])}</th><td><b>{_text(v['verdict'])}</b></td>"
        f"<td>{_num(v['effect'])}</td><td>[{_num(v['low'])}, {_num(v['high'])}]</td>"
        f"<td>{v['n']}</td><td>{_text(v['note'])}</td></tr>"
        for v in summary["verdicts"]
    )
    quick = len(config["seeds"]) < 5
    caveat = (
        f" This run has {len(config['seeds'])} seed(s) per arm: no claim can be decided "
        "(the evidence standard asks for at least 5, paired); it checks the plumbing."
        if quick
        else ""
    )
    return (
        f"<p>Does the network's complexity rise while it memorises and fall when it generalizes? "
        f"(a + b) mod {_num(config['p'], '{:d}')} with {_num(config['train_fraction'], '{:.0%}')} "
        f"of the pairs for training, a {_text(config['model'])} of width "
        f"{_num(config['width'], '{:d}')}, full-batch AdamW (lr {_num(config['lr'], '{:g}')}) for "
        f"{_num(config['steps'], '{:d}')} steps; arms by weight decay (and λ of the "
        f"prior-anchored action), {len(config['seeds'])} seed(s) each.{caveat}</p>"
        "<table><tr><th>arm</th><th>runs</th><th>memorised (train ≥ 99 %) at step</th>"
        "<th>grokked (test ≥ 50 %) at step</th><th>final test accuracy</th>"
        f"<th>final Fourier concentration</th></tr>{rows}</table>"
        + _figure_block("grokking", figures.grokking_curves(summary))
        + "<p>Claims written before the run, verdicts read by code from the checkpoints:</p>"
        "<table><tr><th>claim</th><th>verdict</th><th>effect</th><th>95 % interval</th>"
        f"<th>n</th><th>note</th></tr>{verdicts}</table>"
    )


_DRAW = {
    "capacity": _capacity_section,
    "robustness": _robustness_section,
    "disentanglement": _disentanglement_section,
    "grokking": _grokking_section,
    "zoo": lambda e: _zoo_section(e, limit=12),
}
"""Each study's figures and tables; a study without an entry gets :func:`_generic_section`."""


def _generic_section(summary: dict[str, Any]) -> str:
    """A study's summary as its JSON, for a study the report has no figures for yet."""
    return f"<pre>{html.escape(json.dumps(summary, indent=1, default=str))}</pre>"


def study_section(name: str) -> tuple[str, Any]:
    """(heading, drawing function) of the report section of study ``name``.

    ``name`` is a study of :data:`memspace.studies.STUDIES` or the demo's quick zoo.
    """
    from ..studies.registry import STUDIES

    title = ZOO_TITLE if name == "zoo" else STUDIES[name].title
    return title, _DRAW.get(name, _generic_section)


def section_names() -> list[str]:
    """The study names a metrics file may hold: every registered study and the demo's zoo."""
    from ..studies.registry import STUDIES

    return [*STUDIES, "zoo"]


def _zoo_table(evaluation: dict[str, Any], limit: int | None = None) -> str:
    board = evaluation["leaderboard"][:limit]
    varied = evaluation["varied"]
    head = (
        "<tr><th>measure</th><th>models</th><th>τ</th><th>Ψ</th>"
        + "".join(f"<th>ψ {_text(v)}</th>" for v in varied)
        + "<th>CMI (PGDL)</th><th>sign error "
        "mean</th><th>p90</th><th>max</th><th>environments</th></tr>"
    )

    def number(value, fmt="{:+.3f}"):
        return _num(value, fmt)

    rows = []
    for e in board:
        se = e.get("sign_error", {}).get("all", {})
        rows.append(
            f"<tr><th>{_text(e['measure'])}</th><td>{_num(e['models'])}</td>"
            f"<td>{number(e['tau'])}</td>"
            f"<td>{number(e.get('psi'))}</td>"
            + "".join(f"<td>{number(e.get('psi_by_hparam', {}).get(v))}</td>" for v in varied)
            + f"<td>{number(e.get('cmi'), '{:.4f}')}</td>"
            f"<td>{number(se.get('mean'), '{:.3f}')}</td>"
            f"<td>{number(se.get('p90'), '{:.3f}')}</td><td>{number(se.get('max'), '{:.3f}')}</td>"
            f"<td>{_num(e.get('environments', 0))}</td></tr>"
        )
    return f"<table>{head}{''.join(rows)}</table>"


def _zoo_section(evaluation: dict[str, Any], limit: int | None = None) -> str:
    scatter = figures.zoo_scatter(evaluation["points"])
    blocks = (
        [_figure_block("zoo-scatter", scatter)]
        if scatter is not None
        else [
            "<p class=note>No measure has finite values on three or more models: nothing to "
            "draw.</p>"
        ]
    )
    cdf = figures.zoo_cdf(evaluation["leaderboard"][:8])
    if cdf is not None:
        blocks.append(_figure_block("zoo-cdf", cdf))
    return (
        f"""<p class="sub">{_num(evaluation["kept"])} of {_num(evaluation["models"])} models met the
stopping rule;
varied: {html.escape(", ".join(map(str, evaluation["varied"])))}; Hoeffding weights with n =
{_num(evaluation["n_test"])},
environments kept at ESS ≥ {_num(evaluation["min_ess"], "{:g}")}.</p>
<p>Does complexity predict generalization (docs/theory.md §5.3)? τ: Kendall's τ_a between each
measure and the
generalization gap over all models; Ψ: the granulated coefficient (the mean over hyperparameters of
ψ, the mean τ
among models that differ in that hyperparameter only); CMI: the PGDL competition score (conditional
mutual
information of measure and gap signs, minimised over pairs of hyperparameters); sign error: per
environment (two
configurations one hyperparameter apart) the Hoeffding-weighted share of pairs the measure orders
wrongly — the
robust criterion is the max. Sorted by |Ψ|{f"; the top {limit} shown" if limit else ""}.</p>
"""
        + _zoo_table(evaluation, limit)
        + "".join(blocks)
    )


def render_zoo_report(
    evaluation: dict[str, Any], path: str | Path, title: str = "memspace zoo"
) -> Path:
    """The zoo's leaderboard (every measure × every statistic) with its figures, atomically.

    ``evaluation`` is :func:`memspace.zoo.evaluate_zoo`'s result with ``points``:
    ``{measure: (values, gaps)}`` for the scatter figure.
    """
    return write_atomic(Path(path), _page(title, _zoo_section(evaluation)))

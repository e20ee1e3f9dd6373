"""A self-contained HTML report: figures inlined as PNG, no network requests.

Every figure has a caption saying what it shows and which formula of THEORY.md it
plots. Everything that comes from the user (run names, paths, data names) is escaped.
A small inline script records, once the page has loaded, how many figures decoded
and any script error, on ``<body data-figures-loaded=… data-errors=…>``, which the
browser test reads.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from . import figures

__all__ = ["render_report"]

CAPTIONS = {
    "speed": ("Fisher speed over depth",
              "Per-block Fisher speed s_l, with s_l² = E_x[(J_l v_l)ᵀ Λ(p) (J_l v_l)] (THEORY.md §3), and the "
              "Euclidean speed √E‖v_l‖² for comparison. Action A_F = h Σ s_l², length C_F = h Σ s_l; a flat "
              "profile is a constant-speed (geodesic-like) path."),
    "trajectories": ("Paths of data points through depth",
                     "Test points carried from the stem's output x_0 (circles) to the head's input x_L (triangles) "
                     "by the residual blocks x_{l+1} = x_l + h v_l(x_l), projected on the two principal axes of the "
                     "stream; each step is coloured by that point's Fisher speed s_l(x) (THEORY.md §3)."),
    "spectrum": ("Fisher eigenvalue spectrum",
                 "Left: the top eigenvalues λ_i of the true Fisher F = E_x[Jᵀ Λ(p) J] by Lanczos. Right: its "
                 "spectral density by stochastic Lanczos quadrature, as spectral mass per decade of λ (the "
                 "legend gives the share of the spectrum below six decades under λ_max: directions the data "
                 "barely constrain). The left legend gives tr F and the effective dimension "
                 "d_eff(z) = Σ λ_i/(λ_i + z) at z = 10⁻³ λ_max (THEORY.md §1)."),
    "training": ("Training curves",
                 "Cross-entropy and accuracy per epoch (solid: train, dashed: test) and the exact Fisher action "
                 "A_F of the path on a probe set of training points (THEORY.md §3–§4)."),
}

ROWS = [
    ("test accuracy", "test_acc", "{:.3f}", "fraction of test points classified correctly"),
    ("train accuracy", "train_acc", "{:.3f}", ""),
    ("generalization gap", "gap", "{:+.3f}", "train − test accuracy"),
    ("Fisher–Rao norm ‖θ‖²_fr", "fisher_rao_norm", "{:.4g}", "θᵀFθ (Liang et al. 2017; §2)"),
    ("Fisher trace tr F", "fisher_trace", "{:.4g}", "total sensitivity to weight noise: E KL ≈ σ²/2 tr F (§1, §5)"),
    ("top eigenvalue λ_max", None, "{:.4g}", "stiffest direction of F (Lanczos)"),
    ("effective dimension d_eff", "effective_dimension", "{:.1f}", "Σ λ/(λ+z), z = 10⁻³ λ_max (§1)"),
    ("Fisher action A_F", ("path", "action"), "{:.4g}", "h Σ_l s_l² (§3)"),
    ("Fisher length C_F", ("path", "length"), "{:.4g}", "h Σ_l s_l (§3)"),
    ("constant-speed gap A_F − C_F²", ("path", "gap"), "{:.3g}", "0 iff constant speed (§3)"),
    ("kinetic action", None, "{:.4g}", "h Σ_l E‖v_l‖², Euclidean baseline (§3)"),
    ("Fisher distance from init", "fisher_distance_from_init", "{:.4g}", "(θ−θ₀)ᵀF(θ−θ₀) (§2)"),
    ("Euclidean distance from init", "euclidean_distance_from_init", "{:.4g}", "‖θ−θ₀‖"),
    ("Fisher arc length of training", "trajectory_length", "{:.4g}", "Σ_k ‖Δθ_k‖_F over checkpoints (§2)"),
    ("parameters", "num_params", "{:d}", ""),
]


def _value(measures: dict, key) -> Any:
    if key is None:
        return None
    if isinstance(key, tuple):
        node = measures
        for part in key:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        return node if not isinstance(node, dict) else None
    return measures.get(key)


def _row_value(label: str, key, measures: dict):
    if label.startswith("top eigenvalue"):
        values = measures.get("top_eigenvalues") or [None]
        return values[0]
    if label == "kinetic action":
        path = measures.get("path", {})
        speeds = path.get("euclidean_speeds")
        return None if speeds is None else path["step"] * sum(s * s for s in speeds)
    return _value(measures, key)


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure_block(key: str, fig) -> str:
    title, caption = CAPTIONS[key]
    return (f'<figure id="fig-{key}"><img alt="{html.escape(title)}" src="data:image/png;base64,{_png(fig)}">'
            f"<figcaption><b>{html.escape(title)}.</b> {html.escape(caption)}</figcaption></figure>")


def summary_table(networks: dict[str, Any]) -> str:
    names = list(networks)
    head = "".join(f"<th>{html.escape(n)}<br><small>action {html.escape(str(networks[n].get('action', '')))}, "
                   f"λ = {html.escape(str(networks[n].get('lambda', '')))}</small></th>" for n in names)
    rows = []
    for label, key, fmt, note in ROWS:
        cells = []
        for n in names:
            value = _row_value(label, key, networks[n]["measures"])
            try:
                cells.append(f"<td>{fmt.format(value)}</td>" if value is not None else "<td>—</td>")
            except (ValueError, TypeError):
                cells.append(f"<td>{html.escape(str(value))}</td>")
        rows.append(f"<tr><th>{html.escape(label)}</th>{''.join(cells)}<td class=note>{html.escape(note)}</td></tr>")
    return f"<table><tr><th>measure</th>{head}<th>meaning</th></tr>{''.join(rows)}</table>"


STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{margin-bottom:.2em} .sub{color:#666;margin-top:0}
table{border-collapse:collapse;margin:1em 0;font-size:.92em} td,th{border:1px solid #ddd;padding:.35em .6em;
text-align:right} th{background:#f6f6f6} td.note{text-align:left;color:#666;font-size:.9em}
tr th:first-child{text-align:left}
figure{margin:1.6em 0;padding:.8em;border:1px solid #eee;border-radius:6px} figure img{max-width:100%}
figcaption{font-size:.92em;color:#333;margin-top:.4em}
"""

SCRIPT = """
window.__errors = [];
window.addEventListener('error', function (e) { window.__errors.push(String(e.message || e)); });
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.querySelectorAll('figure img'));
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-figures-loaded', ok + '/' + imgs.length);
  document.body.setAttribute('data-errors', String(window.__errors.length));
});
"""


def render_report(metrics: dict[str, Any], path: str | Path, title: str | None = None) -> Path:
    """Write the report for ``metrics`` (as written by the demo or ``measure``) to ``path``."""
    networks = metrics["networks"]
    run = metrics.get("run", {})
    title = title or f"memspace report: {run.get('data', 'model')}"
    blocks = [_figure_block("speed", figures.speed_profile(networks))]
    traj = figures.trajectories(networks)
    if traj is not None:
        blocks.append(_figure_block("trajectories", traj))
    blocks.append(_figure_block("spectrum", figures.spectrum(networks)))
    curves = figures.training_curves(networks)
    if curves is not None:
        blocks.append(_figure_block("training", curves))
    shown = {k: (f"{v:.0f} s" if k == "seconds" else v) for k, v in run.items() if k != "config"}
    details = ", ".join(f"{html.escape(str(k))}: {html.escape(json.dumps(v) if not isinstance(v, str) else v)}"
                        for k, v in shown.items())
    config = html.escape(json.dumps(run.get("config", {})))
    doc = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>{html.escape(title)}</title><style>{STYLE}</style><script>{SCRIPT}</script></head>
<body>
<h1>{html.escape(title)}</h1>
<p class="sub">{details}</p>
<p>A network as a memory space (THEORY.md): how much it stores (Fisher–Rao norm, trace, effective dimension),
how the stored information is laid out along depth (the path's Fisher speeds, action and length), and what
training cost to write it (distance from initialisation, arc length). The least-action network was trained with
the Fisher action added to its loss. Configuration: <code>{config}</code></p>
<h2>Summary</h2>
{summary_table(networks)}
<h2>Figures</h2>
{''.join(blocks)}
</body></html>
"""
    path = Path(path)
    path.write_text(doc, encoding="utf-8")
    return path

"""`appliance support report`: one self-contained HTML file over one or many exports.

No scripts, no external fonts or styles, no network: CSS inline, plots drawn by matplotlib
as SVG and embedded inline (text kept as text, so no font is embedded either). Several
exports give a fleet table first. Long series are reduced to at most `MAX_POINTS` buckets
(mean, and max for p99) so a busy week renders in seconds and the file stays small.
"""

from __future__ import annotations

import html
import io
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from appliance.errors import ReportError
from appliance.fsutil import atomic_write
from appliance.support.analyzers import Event, Finding, SiteData, analyze
from appliance.support.verify import verify_export

MAX_POINTS = 1200
MAX_TIMELINE_ROWS = 300
EVENT_COLOURS = {"install": "#2e7d32", "update": "#1565c0", "reinstall": "#1565c0",
                 "rollback": "#ef6c00", "rollback_failed": "#c62828", "refused": "#c62828",
                 "install_failed": "#c62828", "trust": "#6a1b9a", "allow_expired": "#ad1457",
                 "start": "#757575", "crash-loop": "#b71c1c"}

CSS = """
body{font-family:sans-serif;margin:1.5em;color:#222;max-width:1200px}
h1{font-size:1.5em}h2{border-bottom:2px solid #ccc;margin-top:2em}h3{margin-top:1.4em}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}
td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f0f0f0}.critical{background:#fde0e0}.warning{background:#fff4d6}
.info{background:#e8f1fb}.muted{color:#666}.mono{font-family:monospace}
.plots svg{width:100%;height:auto}
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _when(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _buckets(ts: Any, vals: Any, how: str) -> tuple[Any, Any]:
    """At most MAX_POINTS points: the mean (or max) of each equal run of samples."""
    import numpy as np
    n = len(ts)
    if n <= MAX_POINTS:
        return ts, vals
    edges = np.linspace(0, n, MAX_POINTS + 1).astype(int)
    idx = edges[:-1]
    agg = np.fmax.reduceat if how == "max" else np.add.reduceat
    out = agg(np.nan_to_num(vals, nan=0.0), idx)
    if how != "max":
        out = out / np.maximum(np.diff(edges), 1)
    return ts[idx], out


def _series(samples: list[dict[str, Any]]) -> dict[str, Any]:
    import numpy as np

    def col(key: str) -> Any:
        vals = [x.get(key) for x in samples]
        try:
            return np.array(vals, dtype=float)  # None becomes NaN
        except (TypeError, ValueError):  # a field of the wrong type: keep only the numbers
            return np.array([v if isinstance(v, int | float) else np.nan for v in vals],
                            dtype=float)

    def gpu(key: str) -> Any:
        return np.array([sum(float(g.get(key) or 0) for g in gs) if (gs := x.get("gpus"))
                         else np.nan for x in samples], dtype=float)

    t = col("t")
    errors = col("errors_total")
    per = np.diff(errors, prepend=errors[:1] if len(errors) else errors)
    return {"t": t, "rps": col("rps"), "p50": col("p50_ms"), "p99": col("p99_ms"),
            "errors": np.clip(np.nan_to_num(per), 0, None), "cpu": col("cpu_percent"),
            "rss": col("rss_bytes") / 1024**2, "gpu_util": gpu("utilization_pct"),
            "gpu_mem": gpu("memory_used_mib")}


def plots_svg(site: SiteData) -> str:
    """The site's figures over time as one inline SVG (empty when there is no history)."""
    if not site.metrics and not site.events:
        return ""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "appliance",
                         "font.size": 8, "axes.grid": True, "grid.alpha": 0.3})
    panels = [("rps", "requests / s", "mean"), ("lat", "latency ms (p50, p99)", "max"),
              ("errors", "errors / interval", "max"), ("cpu", "CPU %", "mean"),
              ("rss", "memory RSS MiB", "mean"), ("gpu_util", "GPU utilisation %", "mean"),
              ("gpu_mem", "GPU memory used MiB", "mean")]
    fig, axes = plt.subplots(len(panels) + 1, 1, figsize=(11, 1.6 * (len(panels) + 1)),
                             sharex=True)
    fig.subplots_adjust(left=0.1, right=0.98, top=0.98, bottom=0.04, hspace=0.45)
    ax0 = axes[0]
    ax0.set_title("events", loc="left")
    kinds = sorted({e.kind for e in site.events})
    for i, kind in enumerate(kinds):
        xs = [datetime.fromtimestamp(e.t, UTC) for e in site.events if e.kind == kind]
        ax0.scatter(xs, [i] * len(xs), s=18, marker="|" if kind == "start" else "o",
                    color=EVENT_COLOURS.get(kind, "#000"), label=kind)
    ax0.set_yticks(range(len(kinds)), kinds)
    for svc, samples in sorted(site.metrics.items()):
        s = _series(samples)

        def dated(xs: Any) -> list[datetime]:
            return [datetime.fromtimestamp(float(x), UTC) for x in xs]  # only the buckets
        for ax, (key, title, how) in zip(axes[1:], panels, strict=True):
            ax.set_title(title, loc="left")
            if key == "lat":
                for k, style in (("p50", "-"), ("p99", "--")):
                    x, y = _buckets(s["t"], s[k], "max" if k == "p99" else "mean")
                    ax.plot(dated(x), y, style, linewidth=0.8, label=f"{svc} {k}")
            else:
                x, y = _buckets(s["t"], s[key], how)
                ax.plot(dated(x), y, linewidth=0.8, label=svc)
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper right", fontsize=7, ncols=4)
    axes[-1].xaxis.set_major_formatter(mdates.DateFormatter(  # type: ignore[no-untyped-call]
        "%m-%d %H:%M", tz=UTC))
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    plt.close(fig)
    svg = buf.getvalue()
    return svg[svg.index("<svg"):]  # drop the XML prolog and DOCTYPE: inline in HTML


def _findings_html(findings: list[Finding]) -> str:
    if not findings:
        return "<p>No findings: nothing the analyzers look for was seen.</p>"
    rows = "".join(
        f"<tr class='{_e(f.severity)}'><td>{_e(f.severity)}</td><td><b>{_e(f.title)}</b><br>"
        f"{_e(f.detail)}</td><td>{_e(f.action)}</td></tr>" for f in findings)
    return f"<table><tr><th>severity</th><th>finding</th><th>what to do</th></tr>{rows}</table>"


def _timeline_html(events: list[Event]) -> str:
    shown = [e for e in events if e.kind != "start"] + [e for e in events if e.kind == "start"]
    shown = sorted(shown[:MAX_TIMELINE_ROWS], key=lambda e: e.t)
    if not shown:
        return "<p class='muted'>No events in this export.</p>"
    rows = "".join(f"<tr><td class='mono'>{_when(e.t)}</td><td style='color:"
                   f"{EVENT_COLOURS.get(e.kind, '#000')}'>{_e(e.kind)}</td><td>{_e(e.text)}</td>"
                   "</tr>" for e in shown)
    more = len(events) - len(shown)
    note = f"<p class='muted'>{more} more runtime starts not listed.</p>" if more > 0 else ""
    return f"<table><tr><th>time (UTC)</th><th>event</th><th>what</th></tr>{rows}</table>{note}"


def _releases_html(site: SiteData) -> str:
    rows = "".join(
        f"<tr><td>{'*' if r.get('current') else ''}</td><td>{_e(r.get('sequence'))}</td>"
        f"<td>{_e(r.get('name', ''))} {_e(r.get('version', ''))}</td>"
        f"<td>{_e(r.get('status', ''))}</td><td class='mono'>"
        f"{_e(str(r.get('manifest_digest', ''))[:19])}</td><td class='mono'>"
        f"{_e(', '.join(k[:16] for k in r.get('signer_key_ids', [])))}</td>"
        f"<td>{_e(r.get('reason', ''))}</td></tr>"
        for r in site.releases.get("releases", []))
    return ("<table><tr><th></th><th>seq</th><th>release</th><th>status</th><th>manifest</th>"
            f"<th>signers</th><th>reason</th></tr>{rows}</table>")


def _system_html(site: SiteData) -> str:
    s = site.system
    gpus = site.gpu.get("gpus") or []
    gpu_text = "; ".join(f"{g.get('index')}: {g.get('name')} {g.get('memory_free_mib')}/"
                         f"{g.get('memory_total_mib')} MiB free" for g in gpus) or \
        site.gpu.get("unavailable", "none")
    disks = "; ".join(f"{d.get('path')} {d.get('used_pct')}% used" for d in s.get("disks", []))
    clock = s.get("clock") or {}
    rows = [("OS", s.get("os")), ("kernel", s.get("kernel")),
            ("engine", f"{(s.get('engine') or {}).get('name')} "
                       f"{(s.get('engine') or {}).get('version') or ''}"),
            ("NVIDIA driver", " ".join((s.get("nvidia") or {}).get("driver") or []) or "none"),
            ("GPUs", gpu_text), ("disks", disks),
            ("clock", f"{clock.get('now')} (offset from signing "
                      f"{clock.get('offset_from_signing_s', '?')} s)"),
            ("redactions", f"{site.redaction.get('total', 0)} "
                           f"{site.redaction.get('by_kind', {})}"),
            ("site key", site.key_id)]
    return "<table>" + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>"
                               for k, v in rows) + "</table>"


def _fleet_html(sites: list[tuple[SiteData, list[Finding]]]) -> str:
    rows = []
    for site, findings in sites:
        cur = site.current_release() or {}
        crit = sum(f.severity == "critical" for f in findings)
        warn = sum(f.severity == "warning" for f in findings)
        last = site.events[-1] if site.events else None
        cls = "critical" if crit else "warning" if warn else ""
        rows.append(
            f"<tr class='{cls}'><td><a href='#site-{_e(site.key_id[:16])}'>{_e(site.name)}</a>"
            f"</td><td>{_e(cur.get('version', '-'))} ({_e(cur.get('sequence', '-'))})</td>"
            f"<td>{_e((site.system.get('engine') or {}).get('name'))}</td>"
            f"<td>{len(site.gpu.get('gpus') or [])}</td><td>{crit}</td><td>{warn}</td>"
            f"<td>{_e(f'{_when(last.t)} {last.text}' if last else '-')}</td>"
            f"<td class='mono'>{_e(site.key_id[:16])}</td></tr>")
    return ("<h2>Fleet</h2><table><tr><th>site</th><th>serving</th><th>engine</th><th>GPUs</th>"
            "<th>critical</th><th>warnings</th><th>last event</th><th>site key</th></tr>"
            + "".join(rows) + "</table>")


def render(sites: Sequence[SiteData]) -> str:
    """The report's HTML for sites already read."""
    analyzed = [(s, analyze(s)) for s in sites]
    parts = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
             "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; "
             "style-src 'unsafe-inline'; img-src data:\">",
             f"<title>Appliance support report ({len(sites)} site(s))</title>",
             f"<style>{CSS}</style></head><body>",
             f"<h1>Appliance support report</h1><p class='muted'>{len(sites)} export(s); made "
             f"{_when(datetime.now(UTC).timestamp())} UTC; every export's signature and "
             "checksums verified.</p>"]
    if len(analyzed) > 1:
        parts.append(_fleet_html(analyzed))
    for site, findings in analyzed:
        parts += [f"<h2 id='site-{_e(site.key_id[:16])}'>{_e(site.name)}</h2>",
                  f"<p class='muted'>export made {_when(site.created)} UTC</p>",
                  "<h3>Findings</h3>", _findings_html(findings),
                  "<h3>Over time</h3><div class='plots'>", plots_svg(site), "</div>",
                  "<h3>Timeline</h3>", _timeline_html(site.events),
                  "<h3>Releases</h3>", _releases_html(site),
                  "<h3>System</h3>", _system_html(site)]
    parts.append("</body></html>\n")
    return "".join(parts)


def write_report(exports: Sequence[Path], output: Path) -> Path:
    """Verify each export, analyse it, and write the HTML report to `output`.

    Raises:
        ReportError: no exports were given or the output cannot be written.
        ExportIntegrityError: an export is damaged or edited (named in the message).
    """
    if not exports:
        raise ReportError("no exports given; pass one or more export .tar files")
    sites = [SiteData.from_export(verify_export(p)) for p in exports]
    try:
        atomic_write(output, render(sites).encode())
    except OSError as e:
        raise ReportError(f"cannot write the report to {output}: {e.strerror or e}") from e
    return output

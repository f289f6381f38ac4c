"""``RUN_DIR/report.html`` and its Markdown twin, rebuilt from run.json and the step manifests alone."""

from __future__ import annotations

import html
import math
from pathlib import Path

from slimops.manifest import read_manifest


def write_report(run_dir: Path) -> tuple[Path, Path]:
    from slimops.runner import load_summary

    run_dir = Path(run_dir)
    summary = load_summary(run_dir)
    manifests = {r["id"]: read_manifest(Path(r["out"])) or {} for r in summary["steps"]}
    rows = _comparison_rows(summary, manifests)
    md, page = _markdown(summary, manifests, rows), _html(summary, manifests, rows)
    for name, text in (("report.md", md), ("report.html", page)):
        tmp = run_dir / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(run_dir / name)
    return run_dir / "report.html", run_dir / "report.md"


def _comparison_rows(summary: dict, manifests: dict) -> list[dict]:
    """Baseline and every validated model, each measured by a validate step in this run."""
    rows = []
    for record in summary["steps"]:
        m = manifests[record["id"]].get("metrics", {})
        if record["step"] != "validate" or "candidate_metric" not in m:
            continue
        model_id = record["input"]
        if not any(r["model"] == "baseline" for r in rows):
            rows.append(_row("baseline", m, "baseline", 1.0))
        rows.append(_row(model_id, m, "candidate", m["speedup"], validated_by=record["id"]))
    return rows


def _row(name, m, role, speedup, validated_by=None) -> dict:
    return {"model": name, "metric_name": m["metric"], "metric": m[f"{role}_metric"],
            "p50": m[f"{role}_p50_ms"], "p95": m[f"{role}_p95_ms"], "throughput": m[f"{role}_throughput"],
            "speedup": speedup, "size": m[f"{role}_size_mb"], "peak": m.get(f"{role}_peak_mb"),
            "fidelity": None if role == "baseline" else m.get("fidelity"), "validated_by": validated_by}


def _verdict(summary: dict) -> tuple[str, list[str]]:
    gate = summary.get("gate")
    if gate is None:
        return "NO GATE", ["the recipe has no validate step"]
    return ("PASSED" if gate["passed"] else "FAILED"), gate.get("reasons") or []


def _lineage(summary: dict, manifests: dict) -> list[dict]:
    """Walk parent manifests from the last step back to the source model."""
    last = manifests[summary["steps"][-1]["id"]]
    chain = []
    node = last
    while node:
        main_file = (node.get("model") or {}).get("file", "")
        chain.append({"step": node.get("step"), "file": main_file,
                      "sha256": (node.get("outputs") or {}).get(main_file, "")[:16],
                      "data": {k: v.get("sha256", v.get("format", ""))[:16] for k, v in (node.get("data") or {}).items()},
                      "path": node.get("path", "")})
        node = node.get("parent")
    return chain


def _fmt(value, digits=2) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}" if isinstance(value, float) else str(value)


def _step_note(record: dict, manifest: dict) -> str:
    details, metrics = manifest.get("details") or {}, manifest.get("metrics") or {}
    notes = []
    if "parity_max_abs_diff" in metrics:
        notes.append(f"parity max abs diff {metrics['parity_max_abs_diff']:.1e}")
    if details.get("fusions"):
        notes.append("fused " + ", ".join(f"{k}×{v}" for k, v in details["fusions"].items()))
    if details.get("quantized_nodes"):
        notes.append("quantized " + ", ".join(f"{k}×{v}" for k, v in details["quantized_nodes"].items()))
    aaq = details.get("accuracy_aware")
    if aaq:
        notes.append(f"kept float: {', '.join(aaq['float_nodes']) or 'none'} (target met: {aaq['target_met']})")
    if "target_sparsity" in metrics:
        notes.append(f"sparsity {100 * metrics['sparsity']:.1f}% of pruned weights "
                     f"({100 * metrics['overall_sparsity']:.1f}% of all)")
    if details.get("factorized"):
        notes.append(f"factorized {len(details['factorized'])} layers")
    if "train_accuracy" in metrics:
        notes.append(f"train accuracy {metrics['train_accuracy']:.2f}")
    if manifest.get("gate"):
        notes.append("gate " + ("passed" if manifest["gate"]["passed"] else "FAILED"))
    return "; ".join(notes)


def _markdown(summary, manifests, rows) -> str:
    verdict, reasons = _verdict(summary)
    out = [f"# slimops run: {summary['name']}", "",
           f"**Gate: {verdict}**" + (f" (step `{summary['gate']['step']}`)" if summary.get("gate") else ""), ""]
    out += [f"- {r}" for r in reasons] + ([""] if reasons else [])
    out += [f"Recipe `{summary['recipe']}`, finished {summary['finished']}, {summary['seconds']:.1f} s.", ""]
    if rows:
        metric = rows[0]["metric_name"]
        out += ["## Baseline vs candidates (measured in this run, same data, same machine)", "",
                f"| model | {metric} | p50 ms (b=1) | p95 ms (b=1) | throughput/s (b=32) | speedup | size MB | peak MB | fidelity |",
                "|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            out.append(f"| {r['model']} | {_fmt(r['metric'])} | {_fmt(r['p50'])} | {_fmt(r['p95'])} | "
                       f"{_fmt(r['throughput'], 1)} | {_fmt(r['speedup'])}x | {_fmt(r['size'], 1)} | "
                       f"{_fmt(r['peak'], 0)} | {_fmt(r['fidelity'], 4)} |")
        out.append("")
    gate_manifest = manifests.get((summary.get("gate") or {}).get("step"), {})
    checks = (gate_manifest.get("details") or {}).get("checks") or []
    if checks:
        out += ["## Gate checks", "", "| check | measured | rule | result |", "|---|---|---|---|"]
        out += [f"| {c['check']} | {_fmt(c['value'], 4)} | {c['op']} {c['limit']} | {'pass' if c['passed'] else 'FAIL'} |"
                for c in checks]
        out.append("")
    out += ["## Steps", "", "| step | kind | status | seconds | notes |", "|---|---|---|---|---|"]
    for record in summary["steps"]:
        ran_for = manifests[record["id"]].get("seconds")
        status = f"cached (ran {ran_for:.1f} s)" if record["status"] == "cached" and ran_for is not None else record["status"]
        out.append(f"| {record['id']} | {record['step']} | {status} | {record['seconds']:.1f} | "
                   f"{_step_note(record, manifests[record['id']])} |")
    out += ["", "## Lineage (newest first)", "", "| step | file | sha256 (16) | data sha256 (16) |", "|---|---|---|---|"]
    for link in _lineage(summary, manifests):
        data = ", ".join(f"{k}: {v}" for k, v in link["data"].items())
        out.append(f"| {link['step']} | {link['file']} {link['path']} | {link['sha256']} | {data} |")
    return "\n".join(out) + "\n"


def _html(summary, manifests, rows) -> str:
    import markdown_it

    render = markdown_it.MarkdownIt("commonmark").enable("table").render
    # The plot goes right after the verdict, before the tables it summarises.
    head, heading, tail = _markdown(summary, manifests, rows).partition("## Baseline")
    body = render(head) + (_svg_plot(rows) if rows else "") + render(heading + tail)
    verdict, _ = _verdict(summary)
    colour = {"PASSED": "#1a7f37", "FAILED": "#cf222e"}.get(verdict, "#57606a")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>slimops: {html.escape(summary['name'])}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #1f2328; }}
table {{ border-collapse: collapse; margin: 1em 0; }} th, td {{ border: 1px solid #d0d7de; padding: 4px 8px; text-align: left; }}
strong {{ color: {colour}; }} code {{ background: #f6f8fa; }}
</style></head><body>
{body}
</body></html>
"""


def _svg_plot(rows: list[dict]) -> str:
    """Metric vs batch-1 p50 latency; marker area proportional to size on disk."""
    width, height, pad = 760, 360, 60
    xs, ys = [r["p50"] for r in rows], [r["metric"] for r in rows]
    x_lo, x_hi = 0.0, max(xs) * 1.3  # room for the labels right of the markers
    y_span = max(max(ys) - min(ys), 0.5)
    y_lo, y_hi = min(ys) - 0.3 * y_span, max(ys) + 0.3 * y_span
    biggest = max(r["size"] for r in rows) or 1.0

    def px(x):
        return pad + (x - x_lo) / (x_hi - x_lo) * (width - 2 * pad)

    def py(y):
        return height - pad - (y - y_lo) / (y_hi - y_lo) * (height - 2 * pad)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="metric vs latency">',
             f'<rect width="{width}" height="{height}" fill="white"/>',
             f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#57606a"/>',
             f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="#57606a"/>',
             f'<text x="{width / 2}" y="{height - 15}" text-anchor="middle" font-size="13">latency p50, batch 1 (ms)</text>',
             f'<text x="15" y="{height / 2}" transform="rotate(-90 15 {height / 2})" text-anchor="middle" '
             f'font-size="13">{html.escape(rows[0]["metric_name"])}</text>']
    for i in range(5):
        xv, yv = x_lo + (x_hi - x_lo) * i / 4, y_lo + (y_hi - y_lo) * i / 4
        parts.append(f'<text x="{px(xv):.0f}" y="{height - pad + 16}" text-anchor="middle" font-size="11">{xv:.1f}</text>')
        parts.append(f'<text x="{pad - 6}" y="{py(yv) + 4:.0f}" text-anchor="end" font-size="11">{yv:.2f}</text>')
    for r in rows:
        radius = 4 + 22 * math.sqrt(r["size"] / biggest)
        colour = "#57606a" if r["model"] == "baseline" else "#0969da"
        parts.append(f'<circle cx="{px(r["p50"]):.1f}" cy="{py(r["metric"]):.1f}" r="{radius:.1f}" fill="{colour}" '
                     f'fill-opacity="0.35" stroke="{colour}"><title>{html.escape(r["model"])}: {r["size"]:.1f} MB</title></circle>')
        parts.append(f'<text x="{px(r["p50"]) + radius + 4:.1f}" y="{py(r["metric"]) + 4:.1f}" font-size="12">'
                     f'{html.escape(r["model"])} ({r["size"]:.0f} MB)</text>')
    parts.append("</svg>")
    return "\n".join(parts)

"""``RUN_DIR/report.html`` and its Markdown twin, rebuilt from run.json and the step manifests alone.

Every string in a report comes from files a run wrote (recipe name, step ids, model paths, gate reasons, node
names), and those files can be edited by anyone who can write the run directory. So no value is ever markup:
the page is rendered by ``templates/report.html.j2`` with Jinja2 autoescaping, and in the Markdown every value
is escaped so it can neither end a table cell nor become raw HTML (``_md``).
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import re
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from slimops.errors import BadInput
from slimops.manifest import read_manifest, within

RUN_SUMMARY = "run.json"  # written by the runner, read here
TEMPLATE = "report.html.j2"


class _StepRecord(BaseModel):
    id: str
    step: str
    input: str
    out: str
    status: str
    seconds: float = 0.0
    metrics: dict = Field(default_factory=dict)


class _RunSummary(BaseModel):
    """run.json as the runner writes it; ``slimops report`` may be pointed at any directory, so it is checked."""

    recipe: str
    name: str
    finished: str
    seconds: float
    source: str
    steps: list[_StepRecord]
    gate: dict | None = None
    exit_code: int


def load_summary(run_dir: Path) -> dict:
    path = Path(run_dir) / RUN_SUMMARY
    if not path.is_file() or path.is_symlink():
        raise BadInput(f"{run_dir} holds no {RUN_SUMMARY}; give the directory a `slimops run` wrote")
    if path.stat().st_size > 64 << 20:
        raise BadInput(f"{path} is larger than 64 MiB; it was not written by slimops run")
    try:
        return _RunSummary.model_validate_json(path.read_bytes()).model_dump()
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "run.json"
        raise BadInput(f"{path} is not a run summary slimops wrote ({where}: {first['msg'][:120]}); re-run "
                       "`slimops run` to rewrite it") from None


def write_report(run_dir: Path) -> tuple[Path, Path]:
    run_dir = Path(run_dir)
    summary = load_summary(run_dir)
    manifests = {r["id"]: _manifest_of(run_dir, r) for r in summary["steps"]}
    try:
        report = _report(summary, manifests)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, ZeroDivisionError) as err:
        raise BadInput(f"{run_dir}: a step manifest holds values slimops did not write ({type(err).__name__}: "
                       f"{' '.join(str(err).split())[:120]}); re-run `slimops run`") from None
    md, page = _markdown(report), _html(report)
    for name, text in (("report.md", md), ("report.html", page)):
        _write_new(run_dir / name, text)
    return run_dir / "report.html", run_dir / "report.md"


def _write_new(path: Path, text: str) -> None:
    """Write through a fresh temporary file (O_EXCL: never one planted there, link or FIFO) renamed over ``path``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise BadInput(f"cannot write {path} ({err.strerror}); remove what is there") from None


def _manifest_of(run_dir: Path, record: dict) -> dict:
    """A step's manifest from its folder in this run directory, never from a path run.json points elsewhere."""
    root = os.path.realpath(run_dir)
    for candidate in (run_dir / "steps" / record["id"], Path(record["out"])):
        real = os.path.realpath(candidate)
        if real != root and within(real, root) and os.path.isdir(real):
            return read_manifest(Path(real)) or {}
    return {}


# ----------------------------------------------------------------------------- what the report says


def _report(summary: dict, manifests: dict) -> dict:
    """Everything both renderings show, as plain (unescaped) strings: each renderer escapes for its own format."""
    verdict, reasons = _verdict(summary)
    rows = _comparison_rows(summary, manifests)
    tables = []
    if rows:
        tables.append({
            "title": "Baseline vs candidates (measured in this run, same data, same machine)",
            "header": ["model", str(rows[0]["metric_name"]), "p50 ms (b=1)", "p95 ms (b=1)", "throughput/s (b=32)",
                       "speedup", "size MB", "peak MB", "fidelity", "precision ran"],
            "rows": [[str(r["model"]), _fmt(r["metric"]), _fmt(r["p50"]), _fmt(r["p95"]), _fmt(r["throughput"], 1),
                      f"{_fmt(r['speedup'])}x", _fmt(r["size"], 1), _fmt(r["peak"], 0), _fmt(r["fidelity"], 4),
                      str(r["precision"] or "n/a")]
                     for r in rows],
        })
    gate_manifest = manifests.get((summary.get("gate") or {}).get("step"), {})
    checks = (gate_manifest.get("details") or {}).get("checks") or []
    if checks:
        # The interval column only when a rule was judged by one (the speedup, or drops with ``confidence``).
        intervals = any(c.get("interval") for c in checks)
        level = (gate_manifest.get("metrics", {}).get("timing") or {}).get("confidence")

        def interval(c):
            return [f"[{_fmt(c['interval'][0], 4)}, {_fmt(c['interval'][1], 4)}]" if c.get("interval") else ""]

        def result(c):
            if c.get("status") == "inconclusive":
                return "inconclusive"
            return "pass" if c["passed"] else "FAIL"
        tables.append({
            "title": "Gate checks",
            "header": ["check", "measured", *([f"interval ({_fmt(level, 2)})"] if intervals else []), "rule", "result"],
            "rows": [[str(c["check"]), _fmt(c["value"], 4), *(interval(c) if intervals else []),
                      f"{c['op']} {c['limit']}", result(c)] for c in checks],
        })
        timing = gate_manifest.get("metrics", {}).get("timing")
        if timing:
            load = timing.get("load") or {}
            tables.append({
                "title": "How speed was measured", "header": ["what", "value"],
                "rows": [["rounds x examples", f"{timing['rounds']} x {timing['examples_per_round']} ({timing['order']})"],
                         ["threads, pinned cores", f"{timing['threads']} on {timing['pinned_cores']} of {timing['cores']}"],
                         ["CPU s per wall s (baseline / candidate)",
                          f"{_fmt(gate_manifest['metrics'].get('baseline_cpu_per_wall'))} / "
                          f"{_fmt(gate_manifest['metrics'].get('candidate_cpu_per_wall'))}"],
                         ["AB+BA pair spread (IQR / median)", _fmt(gate_manifest["metrics"].get("timing_spread"), 3)],
                         ["other runnable tasks, CPU stall, steal",
                          f"{_fmt(load.get('other_runnable'))}, {_pct(load.get('stall'))}, {_pct(load.get('steal'))}"],
                         ["contention", "; ".join(map(str, timing.get("contention") or [])) or "none detected"]],
            })
        warnings = (gate_manifest.get("details") or {}).get("warnings") or []
        if warnings:
            tables.append({"title": "Warnings", "header": ["warning"], "rows": [[str(w)] for w in warnings]})
    plots = [{"title": "", **_plot(rows)}] if rows else []
    for record in summary["steps"]:
        auto = (manifests[record["id"]].get("details") or {}).get("auto")
        if isinstance(auto, dict) and auto.get("candidates"):
            table, plot = _auto_table(str(record["id"]), auto)
            tables.append(table)
            if plot:
                plots.append(plot)
    steps = []
    for record in summary["steps"]:
        ran_for = manifests[record["id"]].get("seconds")
        status = (f"cached (ran {ran_for:.1f} s)" if record["status"] == "cached" and ran_for is not None
                  else str(record["status"]))
        steps.append([str(record["id"]), str(record["step"]), status, f"{record['seconds']:.1f}",
                      _step_note(record, manifests[record["id"]])])
    tables.append({"title": "Steps", "header": ["step", "kind", "status", "seconds", "notes"], "rows": steps})
    lineage = [[str(link["step"]), f"{link['file']} {link['path']}", str(link["sha256"]),
                ", ".join(f"{k}: {v}" for k, v in link["data"].items())]
               for link in _lineage(summary, manifests)]
    tables.append({"title": "Lineage (newest first)",
                   "header": ["step", "file", "sha256 (16)", "data sha256 (16)"], "rows": lineage})
    return {
        "name": str(summary["name"]),
        "verdict": verdict,
        "gate_step": str(summary["gate"]["step"]) if summary.get("gate") else None,
        "reasons": [str(r) for r in reasons],
        "recipe": str(summary["recipe"]),
        "finished": str(summary["finished"]),
        "seconds": f"{summary['seconds']:.1f}",
        "plots": plots,
        "tables": tables,
    }


def _comparison_rows(summary: dict, manifests: dict) -> list[dict]:
    """Baseline and every validated model, each measured by a validate step in this run."""
    rows = []
    for record in summary["steps"]:
        m = manifests[record["id"]].get("metrics", {})
        if manifests[record["id"]].get("gate") is None or "candidate_metric" not in m:  # only gates measure
            continue
        model_id = record["input"]
        if not any(r["model"] == "baseline" for r in rows):
            rows.append(_row("baseline", m, "baseline", 1.0))
        rows.append(_row(model_id, m, "candidate", m["speedup"], validated_by=record["id"]))
    return rows


def _row(name, m, role, speedup, validated_by=None) -> dict:
    lower = m.get("metric_direction") == "lower_is_better"  # perplexity: its drop is its increase
    return {"model": name, "metric_name": f"{m['metric']} (lower is better)" if lower else m["metric"],
            "metric": m[f"{role}_metric"],
            "p50": m[f"{role}_p50_ms"], "p95": m[f"{role}_p95_ms"], "throughput": m[f"{role}_throughput"],
            "speedup": speedup, "size": m[f"{role}_size_mb"], "peak": m.get(f"{role}_peak_mb"),
            "fidelity": None if role == "baseline" else m.get("fidelity"), "validated_by": validated_by,
            "precision": m.get(f"{role}_precision")}


def _verdict(summary: dict) -> tuple[str, list[str]]:
    gate = summary.get("gate")
    if gate is None:
        return "NO GATE", ["the recipe has no validate step"]
    if gate.get("verdict") == "inconclusive":
        return "INCONCLUSIVE", gate.get("reasons") or []
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


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"


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
        notes.append(f"kept float: {', '.join(map(str, aaq['float_nodes'])) or 'none'} (target met: {aaq['target_met']})")
    if "target_sparsity" in metrics:
        notes.append(f"sparsity {100 * metrics['sparsity']:.1f}% of pruned weights "
                     f"({100 * metrics['overall_sparsity']:.1f}% of all)")
    if details.get("factorized"):
        notes.append(f"factorized {len(details['factorized'])} layers")
    if "train_accuracy" in metrics:
        notes.append(f"train accuracy {metrics['train_accuracy']:.2f}")
    if manifest.get("gate"):
        notes.append("gate " + ("passed" if manifest["gate"]["passed"] else
                                "inconclusive" if manifest["gate"].get("verdict") == "inconclusive" else "FAILED"))
    return "; ".join(notes)


def _auto_table(step_id: str, auto: dict) -> tuple[dict, dict | None]:
    """compile auto's candidates: every one built, measured, excluded or failed, and the one kept; and the
    Pareto plot of metric against speedup (the front and the kept candidate marked)."""
    hw = auto.get("hardware") or {}
    here = auto.get("measured_on") or {}
    title = (f"compile auto ({step_id}): candidates for {hw.get('name')} [{', '.join(map(str, hw.get('features') or []))}]"
             f", measured on {here.get('name')}; speedup vs {auto.get('speedup_vs')}")
    rows = []
    for r in auto["candidates"]:
        measured = r.get("status") == "measured"
        verdict = ("KEPT" if r.get("chosen") else "passes" if r.get("accuracy_ok") else
                   "fails " + ", ".join(map(str, r.get("failed_rules") or []))) if measured else str(r.get("status"))
        rows.append([str(r["candidate"]), str(r["format"]), str(r.get("precision_ran") or r.get("precision")),
                     _fmt(r.get("metric")), _fmt(r.get("metric_drop")),
                     f"{_fmt(r.get('speedup'))}x" if measured else "n/a", _fmt(r.get("p50_ms"), 3),
                     _fmt(r.get("size_mb"), 2), "yes" if r.get("pareto") else "", verdict, str(r.get("reason") or "")])
    table = {"title": title, "header": ["candidate", "format", "precision ran", str(auto.get("metric")), "drop",
                                        "speedup", "p50 ms (b=1)", "size MB", "Pareto", "accuracy rules", "why not built"],
             "rows": rows}
    points = [r for r in auto["candidates"] if r.get("status") == "measured"]
    if not points:
        return table, None
    plot = _plot([{"model": r["candidate"], "p50": r["speedup"], "metric": r["metric"], "size": r["size_mb"],
                   "colour": "#1a7f37" if r.get("chosen") else "#0969da" if r.get("pareto") else "#57606a"}
                  for r in points], x_title="speedup vs the step's input (batch throughput)", y_title=str(auto.get("metric")))
    plot["title"] = f"compile auto ({step_id}): {auto.get('metric')} vs speedup (green: kept, blue: Pareto front)"
    return table, plot


def _plot(rows: list[dict], x_title: str = "latency p50, batch 1 (ms)", y_title: str | None = None) -> dict:
    """Metric vs batch-1 p50 latency (or, for compile auto, vs speedup: the rows' ``p50``); marker area proportional
    to size on disk. Coordinates only: the template draws it, so the labels (model ids, metric name) are escaped
    like every other value."""
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

    ticks = []
    for i in range(5):
        xv, yv = x_lo + (x_hi - x_lo) * i / 4, y_lo + (y_hi - y_lo) * i / 4
        ticks.append({"x": f"{px(xv):.0f}", "x_label": f"{xv:.1f}", "y": f"{py(yv) + 4:.0f}", "y_label": f"{yv:.2f}"})
    points = []
    for r in rows:
        radius = 4 + 22 * math.sqrt(r["size"] / biggest)
        points.append({"cx": f"{px(r['p50']):.1f}", "cy": f"{py(r['metric']):.1f}", "r": f"{radius:.1f}",
                       "colour": r.get("colour") or ("#57606a" if r["model"] == "baseline" else "#0969da"),
                       "title": f"{r['model']}: {r['size']:.1f} MB",
                       "label_x": f"{px(r['p50']) + radius + 4:.1f}", "label_y": f"{py(r['metric']) + 4:.1f}",
                       "label": f"{r['model']} ({r['size']:.0f} MB)"})
    return {"width": width, "height": height, "pad": pad, "x_axis": height - pad, "x_right": width - pad,
            "x_title": f"{width / 2}", "x_title_y": height - 15, "y_title_y": f"{height / 2}",
            "tick_label_y": height - pad + 16, "tick_label_x": pad - 6, "x_label": x_title,
            "y_title": y_title or str(rows[0]["metric_name"]),
            "ticks": ticks, "points": points}


# ----------------------------------------------------------------------------- Markdown

# Values stay text in the Markdown: a backslash or a pipe is backslash-escaped (a pipe would end the table cell),
# line breaks become spaces (one would end the row), and "<" / ">" / "&" become entities wherever they could open
# raw HTML, an autolink or a character reference. The comparison operators "<=" and ">=" (gate rules and
# reasons) stay as written: neither can start a tag.
_MD_ESCAPES = [
    (re.compile(r"\\"), r"\\\\"),
    (re.compile(r"\|"), r"\\|"),
    (re.compile(r"\r\n|[\r\n\u2028\u2029\x0b\x0c\x85]"), " "),
    (re.compile(r"&(?=[#A-Za-z0-9])"), "&amp;"),
    (re.compile(r"<(?!=)"), "&lt;"),
    (re.compile(r">(?!=)"), "&gt;"),
]
_MD_PLAIN = re.compile(r"[^`\\|<>&\r\n\u2028\u2029\x0b\x0c\x85]*")


def _md(value) -> str:
    text = str(value)
    for pattern, replacement in _MD_ESCAPES:
        text = pattern.sub(replacement, text)
    return text


def _md_code(value) -> str:
    """A code span for a plain value; anything that could close the span or needs escaping is escaped text."""
    text = str(value)
    return f"`{text}`" if _MD_PLAIN.fullmatch(text) else _md(text)


def _md_row(cells) -> str:
    return "| " + " | ".join(_md(cell) for cell in cells) + " |"


def _markdown(report: dict) -> str:
    gate = f" (step {_md_code(report['gate_step'])})" if report["gate_step"] is not None else ""
    out = [f"# slimops run: {_md(report['name'])}", "", f"**Gate: {report['verdict']}**" + gate, ""]
    out += [f"- {_md(r)}" for r in report["reasons"]] + ([""] if report["reasons"] else [])
    out += [f"Recipe {_md_code(report['recipe'])}, finished {_md(report['finished'])}, {report['seconds']} s.", ""]
    for table in report["tables"]:
        out += [f"## {_md(table['title'])}", "", _md_row(table["header"]), "|" + "---|" * len(table["header"])]
        out += [_md_row(row) for row in table["rows"]]
        out.append("")
    return "\n".join(out[:-1]) + "\n"


# ----------------------------------------------------------------------------- HTML


def _html(report: dict) -> str:
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("slimops", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    colour = {"PASSED": "#1a7f37", "FAILED": "#cf222e", "INCONCLUSIVE": "#9a6700"}.get(report["verdict"], "#57606a")
    return env.get_template(TEMPLATE).render(**report, colour=colour)

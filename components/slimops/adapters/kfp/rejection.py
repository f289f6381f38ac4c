"""The gate-failed branch's task: say why the model was not promoted, as a Markdown artifact.

No ``kfp`` import, so a container component runs it as ``python3 -m slimops.adapters.kfp.rejection``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from slimops.errors import BadInput


def explain(validated_dir: str | Path) -> str:
    """Markdown: verdict, reasons, and each check with its limit and measured value (from gate_report.json)."""
    report_path = Path(validated_dir) / "gate_report.json"
    if not report_path.is_file():
        raise BadInput(f"{validated_dir} has no gate_report.json; pass the output of the validate step")
    report = json.loads(report_path.read_text())
    lines = ["# Gate failed: model not promoted" if not report.get("passed") else "# Gate passed", ""]
    lines += [f"- {reason}" for reason in report.get("reasons") or []]
    lines += ["", "| check | measured | limit | passed |", "|---|---|---|---|"]
    for check in report.get("checks") or []:
        lines.append(f"| {check['check']} | {check['value']:.4g} | {check['op']} {check['limit']:g} | "
                     f"{'yes' if check['passed'] else 'no'} |")
    return "\n".join(lines) + "\n"


def write_rejection(validated_dir: str | Path, report_path: str | Path) -> str:
    text = explain(validated_dir)
    Path(report_path).parent.mkdir(parents=True, exist_ok=True)
    Path(report_path).write_text(text)
    print(text)  # the task log says why, too
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m slimops.adapters.kfp.rejection")
    parser.add_argument("--validated", required=True, help="the validate step's output directory")
    parser.add_argument("--report", required=True, help="where to write the Markdown explanation")
    args = parser.parse_args(argv)
    try:
        write_rejection(args.validated, args.report)
    except BadInput as err:
        print(f"slimops: error: {err}", file=sys.stderr)
        return err.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())

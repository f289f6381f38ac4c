"""The gate's ``report.html`` as a KFP HTML artifact, rendered by the same code as ``slimops run``'s report.

A KFP run has no run directory: each task sees only its inputs. The validated model's manifest carries its
whole lineage (each step's manifest nests its parent's), so this rebuilds a run directory from that chain in a
scratch folder, renders it with ``slimops.report.write_report`` and copies ``report.html`` to the artifact path.

No ``kfp`` import, so a container component runs it as ``python3 -m slimops.adapters.kfp.gate_report``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from slimops.errors import BadInput, GateFailed, GateInconclusive
from slimops.manifest import read_manifest, write_json_atomic


def _chain(manifest: dict) -> tuple[str, list[dict]]:
    """(source path, the step manifests from the first step to the gate)."""
    steps, node = [], manifest
    while node and node.get("step") != "source":
        steps.append(node)
        node = node.get("parent")
    return str((node or {}).get("path", "")), list(reversed(steps))


def write_html_report(validated_dir: str | Path, html_path: str | Path, name: str = "slimops gate") -> Path:
    """report.html for the gate whose output is ``validated_dir`` (verdict, checks, timing, steps, lineage)."""
    manifest = read_manifest(Path(validated_dir))
    if not manifest or not manifest.get("gate"):
        raise BadInput(f"{validated_dir} holds no gate manifest; pass the output of the validate step")
    source, chain = _chain(manifest)
    with tempfile.TemporaryDirectory(prefix="slimops-kfp-report-") as scratch:
        run_dir = Path(scratch)
        records, previous = [], "source"
        for manifest_of_step in chain:
            step_id = manifest_of_step["step"]
            taken = {record["id"] for record in records}
            for n in range(2, len(chain) + 2):
                if step_id not in taken:
                    break
                step_id = f"{manifest_of_step['step']}-{n}"
            out = run_dir / "steps" / step_id
            out.mkdir(parents=True)
            write_json_atomic(out / "manifest.json", manifest_of_step)
            records.append({"id": step_id, "step": manifest_of_step["step"], "input": previous, "out": str(out),
                            "status": "ran", "seconds": float(manifest_of_step.get("seconds") or 0.0),
                            "metrics": manifest_of_step.get("metrics") or {}})
            previous = step_id
        gate = {"step": records[-1]["id"], **manifest["gate"]}
        exit_code = (0 if gate["passed"] else
                     GateInconclusive.exit_code if gate.get("verdict") == "inconclusive" else GateFailed.exit_code)
        write_json_atomic(run_dir / "run.json", {
            "recipe": "(a Kubeflow pipeline)", "name": name,
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(sum(record["seconds"] for record in records), 2), "source": source,
            "steps": records, "gate": gate, "exit_code": exit_code})

        from slimops.report import write_report

        page, _ = write_report(run_dir)
        html_path = Path(html_path)
        html_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(page, html_path)
    return html_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m slimops.adapters.kfp.gate_report")
    parser.add_argument("--validated", required=True, help="the validate step's output directory")
    parser.add_argument("--html", required=True, help="where to write report.html")
    args = parser.parse_args(argv)
    try:
        write_html_report(args.validated, args.html)
    except BadInput as err:
        print(f"slimops: error: {err}", file=sys.stderr)
        return err.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())

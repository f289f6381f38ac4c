"""Steps declare their contract, and the plan derives from it: impossible chains are refused when the plan is
built (every adapter builds through the plan), and no layer outside steps/ names a step."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import pytest
import yaml

from slimops.errors import BadInput
from slimops.plan import plan_recipe
from slimops.steps import FORMATS, get_step, step_names

PACKAGE = Path(__file__).resolve().parents[1] / "components" / "slimops"
DIGITS_TRAIN = {"format": "digits", "split": "train", "limit": 32}
DIGITS_TEST = {"format": "digits", "split": "test", "limit": 32}
# The least config each step takes (plan-time parsing needs valid configs, not real models).
MINIMAL = {
    "train": {"data": DIGITS_TRAIN},
    "validate": {"data": DIGITS_TEST},
    "distill": {"student": {"layers": [0]}, "data": DIGITS_TRAIN},
    "prune": {"sparsity": 0.5},
    "register": {"name": "m"},
    "deploy": {"name": "endpoint-m", "target": {"type": "kserve", "storage_uri": "s3://b/m"}},
}


def plan_of(tmp_path: Path, steps: list[str], source_format: str | None):
    recipe = {"name": "pair", "model": {"path": "model"},
              "steps": [{"step": s, "id": f"s{i}", "config": MINIMAL.get(s, {})} for i, s in enumerate(steps)]}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return plan_recipe(path, require_gate=False, source_format=source_format)


def expected_error(chain: list[str], source_format: str) -> str | None:
    """What the declarations say about a chain (the plan must apply exactly this)."""
    fmt, gated = source_format, False
    for name in chain:
        step = get_step(name)
        if fmt not in step.accepts:
            return "takes"
        if step.requires_gate() and not gated:
            return "acts only on a model a gate passed"
        fmt = step.output_format(step.Config.model_validate(MINIMAL.get(name, {})), fmt)
        gated = step.role == "gate" or (step.requires_gate() and gated)
    return None


PAIRS = [(a, b) for a, b in itertools.product(step_names(), repeat=2)]


@pytest.mark.parametrize("first,second", PAIRS, ids=[f"{a}-{b}" for a, b in PAIRS])
def test_every_adjacent_pair_is_planned_or_refused_as_declared(first, second, tmp_path):
    # Registry and deploy steps need a gate before them: start those pairs after a validate.
    prefix = ["validate"] if get_step(first).requires_gate() else []
    for source in get_step(first).accepts:
        chain = [*prefix, first, second]
        error = expected_error(chain, source)
        if error is None:
            plan = plan_of(tmp_path, chain, source)
            assert [c.step for c in plan.calls] == chain
        else:
            with pytest.raises(BadInput, match=error) as refused:
                plan_of(tmp_path, chain, source)
            message = str(refused.value)
            assert "\n" not in message and "steps[" in message, message  # exit-2 wording: one line, where


@pytest.mark.parametrize("chain,source,error", [
    (["quantize"], "torch", "quantize takes onnx models, and source gives torch; put an export step before it"),
    (["export", "export"], "hf", "export takes hf or torch models, and s0 gives onnx"),
    (["export", "pack", "quantize"], "torch", "quantize takes onnx models, and s1 gives onnx-packed"),
    (["export", "register"], "torch", "register acts only on a model a gate passed"),
    (["export", "validate", "quantize", "deploy"], "torch", "deploy acts only on a model a gate passed"),
    (["train", "export", "quantize"], "hf", "train takes torch models, and source gives hf"),
])
def test_impossible_chains_are_refused_with_what_to_do(chain, source, error, tmp_path):
    with pytest.raises(BadInput, match=error.replace("(", r"\(").replace(")", r"\)")):
        plan_of(tmp_path, chain, source)


def test_chains_that_run_are_planned(tmp_path):
    for chain, source in ((["export", "compile", "quantize", "validate", "register", "promote"], "hf"),
                          (["train", "prune", "export", "factorize", "validate", "deploy"], "torch"),
                          (["distill", "export", "pack", "validate", "register"], "hf"),
                          (["quantize", "validate"], None)):  # an unknown source (a pipeline input) is not guessed
        assert [c.step for c in plan_of(tmp_path, chain, source).calls] == chain


def test_compile_to_openvino_writes_openvino(tmp_path):
    recipe = {"name": "ov", "model": {"path": "model"}, "steps": [
        {"step": "export"}, {"step": "compile", "config": {"target": "openvino"}}, {"step": "quantize"}]}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    with pytest.raises(BadInput, match="quantize takes onnx models, and compile gives openvino"):
        plan_recipe(tmp_path / "recipe.yaml", require_gate=False, source_format="torch")


def test_distill_from_input_needs_its_teacher(tmp_path):
    recipe = {"name": "recover", "model": {"path": "model"}, "steps": [
        {"step": "prune", "config": {"sparsity": 0.5}},
        {"step": "distill", "config": {"student": {"from_input": True}, "data": DIGITS_TRAIN}}]}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    with pytest.raises(BadInput, match="distill needs a baseline"):
        plan_recipe(tmp_path / "recipe.yaml", require_gate=False, source_format="torch")


def test_the_source_format_is_detected_from_the_recipe(tmp_path, digits_onnx):
    recipe = {"name": "r", "model": {"path": str(digits_onnx)}, "steps": [{"step": "export"}]}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    with pytest.raises(BadInput, match="export takes hf or torch models, and source gives onnx"):
        plan_recipe(tmp_path / "recipe.yaml", require_gate=False)


def test_a_bad_chain_exits_2_before_any_step_runs(tmp_path, digits_onnx):
    from conftest import run_cli

    recipe = {"name": "r", "model": {"path": str(digits_onnx)}, "steps": [{"step": "quantize"}, {"step": "export"}]}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    done = run_cli("run", tmp_path / "recipe.yaml", "--out", tmp_path / "run")
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "export takes hf or torch models, and quantize gives onnx" in done.stderr
    assert not (tmp_path / "run").exists()


def test_side_effect_steps_are_never_cached_and_every_format_is_known():
    for name in step_names():
        step = get_step(name)
        assert set(step.accepts) <= set(FORMATS) and step.role in ("transform", "gate", "registry", "deploy")
        assert step.side_effects == (step.role in ("registry", "deploy")), name
        assert step.Config.model_fields, name


# ----------------------------------------------------------------------------- no step names outside steps/

# String literals equal to a step name that are not references to that step, each with its reason.
NOT_STEP_REFERENCES = {
    ("data.py", "train"): "a data split (digits split: train/test), not the train step",
    ("zoo/token_classifier.py", "train"): "a split of the generated NER set (train/dev), not the train step",
    ("zoo/vision_classifier.py", "train"): "the digits split the vision model is trained on, not the train step",
    ("zoo/qa_model.py", "train"): "a split of the generated QA set (train/dev), not the train step",
    ("registry.py", "promote"): "the audit log's action name for a promotion",
    ("serving/commands.py", "promote"): "the `slimops promote` command (moves the champion by hand)",
    ("adapters/airflow/operators.py", "deploy"): "the deploy role's execution_timeout (a role, not the step)",
    ("adapters/kfp/python_steps.py", "*"): "KFP ships each component as its function's source text, so each "
                                           "step has a written-out function; test_kfp checks them against the registry",
}


def _literals(tree: ast.AST):
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    exported = {id(const) for node in ast.walk(tree) if isinstance(node, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)
                for const in ast.walk(node.value)}  # names a module exports, not step references
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings | exported:
            yield node


def test_no_step_name_is_a_literal_outside_steps():
    names = set(step_names())
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = str(path.relative_to(PACKAGE))
        if rel.startswith("steps/"):
            continue
        for node in _literals(ast.parse(path.read_text())):
            if node.value in names and (rel, node.value) not in NOT_STEP_REFERENCES \
                    and (rel, "*") not in NOT_STEP_REFERENCES:
                found.append(f"{rel}:{node.lineno} {node.value!r}")
    assert not found, "step names outside steps/ (derive from the step's declaration instead):\n" + "\n".join(found)

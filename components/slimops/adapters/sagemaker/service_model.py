"""A compiled pipeline checked against botocore's SageMaker service model, offline.

SageMaker has no public schema for a pipeline definition, but most of it is API requests: a Processing step's
``Arguments`` are a CreateProcessingJob request (less the job name, which the execution picks), a RegisterModel
step's are a CreateModelPackage request, and the whole definition travels in a CreatePipeline request. Each is
checked against its shape in botocore's ``sagemaker`` service model:

- with botocore's own ``ParamValidator`` (what every boto3 call runs before sending: required members, unknown
  members, types, minimum lengths and values);
- and with the constraints the service enforces on its side, which ParamValidator leaves out: maximum lengths,
  sizes and values, enums and patterns (for example ContainerEntrypoint items of at most 256 characters).

Pipeline expressions (``{"Get": "Parameters.X"}``, ``Std:Join``, ``Std:JsonGet``) stand where the request has
values: a parameter becomes its default value (so a default is checked like any literal), a join becomes the
join of its parts, and a step property or execution variable becomes a placeholder of the right type that
satisfies the member's constraints (its real value exists only during an execution). Condition, Fail and retry
settings have no API shape and are not checked here.
"""

from __future__ import annotations

import json
import re

# Step type -> (API operation, members the execution fills in, with stand-ins)
STEP_OPERATIONS = {
    "Processing": ("CreateProcessingJob", {"ProcessingJobName": "slimops-check"}),
    "RegisterModel": ("CreateModelPackage", {}),
    "Model": ("CreateModel", {"ModelName": "slimops-check"}),
}
_EXPRESSIONS = ("Get", "Std:Join", "Std:JsonGet")
_PLACEHOLDER_S3 = "s3://placeholder-bucket/execution-value"


def service_model():
    """botocore's SageMaker service model (shipped with botocore; read from disk, no network)."""
    import botocore.session

    return botocore.session.get_session().get_service_model("sagemaker")


def _is_expression(value) -> bool:
    return isinstance(value, dict) and len(value) == 1 and next(iter(value)) in _EXPRESSIONS


def _evaluate(expr, parameters: dict):
    """An expression's value where it can be known before an execution; None where it cannot."""
    if not _is_expression(expr):
        return expr
    kind, body = next(iter(expr.items()))
    if kind == "Get":
        if body.startswith("Parameters."):
            return parameters.get(body.removeprefix("Parameters."))
        if "S3Uri" in body or "S3Output" in body:
            return _PLACEHOLDER_S3
        return None
    if kind == "Std:Join":
        parts = [_evaluate(v, parameters) for v in body["Values"]]
        if parts and parts[0] is None:
            return None
        return body["On"].join("placeholder" if p is None else str(p) for p in parts)
    return None  # Std:JsonGet reads a property file written during the execution


def _stand_in(shape):
    """A value of the shape's type meeting its constraints, for what is known only during an execution."""
    kind = shape.type_name
    if kind in ("integer", "long"):
        return max(int(shape.metadata.get("min", 1)), 1)
    if kind in ("float", "double"):
        return float(shape.metadata.get("min", 1))
    if kind == "boolean":
        return True
    if getattr(shape, "enum", None):
        return shape.enum[0]
    pattern = shape.metadata.get("pattern", "")
    text = _PLACEHOLDER_S3 if "s3" in pattern else "placeholder"
    return text.ljust(int(shape.metadata.get("min", 0)), "x")


def _coerce(value, shape):
    kind = shape.type_name
    try:
        if kind in ("integer", "long"):
            return int(value)
        if kind in ("float", "double"):
            return float(value)
    except (TypeError, ValueError):
        return value
    if kind == "boolean" and isinstance(value, str):
        return value.lower() == "true"
    if kind == "string" and not isinstance(value, str):
        return json.dumps(value) if isinstance(value, (dict, list)) else str(value)
    return value


def concrete(value, shape, parameters: dict):
    """``value`` with every pipeline expression replaced as the module docstring says, following ``shape``."""
    if _is_expression(value):
        known = _evaluate(value, parameters)
        return _stand_in(shape) if known is None else _coerce(known, shape)
    kind = shape.type_name
    if kind == "structure" and isinstance(value, dict):
        return {k: concrete(v, shape.members[k], parameters) if k in shape.members else v for k, v in value.items()}
    if kind == "list" and isinstance(value, list):
        return [concrete(v, shape.member, parameters) for v in value]
    if kind == "map" and isinstance(value, dict):
        return {k: concrete(v, shape.value, parameters) for k, v in value.items()}
    return value


def service_side_problems(value, shape, where: str) -> list[str]:
    """What the service would reject that botocore's ParamValidator does not check: maximum lengths, sizes and
    values, enums and patterns (botocore's patterns carry no anchors; the service matches whole values)."""
    problems = []
    meta, kind = shape.metadata, shape.type_name
    if kind == "string" and isinstance(value, str):
        if "max" in meta and len(value) > meta["max"]:
            problems.append(f"{where}: {len(value)} characters, at most {meta['max']} allowed ({value[:60]!r}...)")
        if getattr(shape, "enum", None) and value not in shape.enum:
            problems.append(f"{where}: {value!r} is not one of {', '.join(shape.enum[:8])}...")
        pattern = meta.get("pattern")
        if pattern:
            try:
                matched = re.fullmatch(pattern, value, re.DOTALL)
            except re.error:  # a Java-only construct: not checkable here
                matched = True
            if not matched:
                problems.append(f"{where}: {value!r} does not match the pattern {pattern}")
    elif kind in ("integer", "long", "float", "double") and isinstance(value, (int, float)):
        if "max" in meta and value > meta["max"]:
            problems.append(f"{where}: {value} is above the maximum {meta['max']}")
    elif kind == "structure" and isinstance(value, dict):
        for key, item in value.items():
            if key in shape.members:
                problems += service_side_problems(item, shape.members[key], f"{where}.{key}")
    elif kind == "list" and isinstance(value, list):
        if "max" in meta and len(value) > meta["max"]:
            problems.append(f"{where}: {len(value)} items, at most {meta['max']} allowed")
        for i, item in enumerate(value):
            problems += service_side_problems(item, shape.member, f"{where}[{i}]")
    elif kind == "map" and isinstance(value, dict):
        if "max" in meta and len(value) > meta["max"]:
            problems.append(f"{where}: {len(value)} entries, at most {meta['max']} allowed")
        for key, item in value.items():
            problems += service_side_problems(key, shape.key, f"{where} (key {key})")
            problems += service_side_problems(item, shape.value, f"{where}.{key}")
    return problems


def request_problems(params: dict, shape, where: str) -> list[str]:
    """botocore's ParamValidator report, then the service-side constraints, for one request."""
    from botocore.validate import ParamValidator

    report = ParamValidator().validate(params, shape)
    found = [f"{where}: {line.strip()}" for line in report.generate_report().splitlines() if line.strip()]
    return found + service_side_problems(params, shape, where)


def _all_steps(steps: list[dict]) -> list[dict]:
    found = []
    for step in steps:
        found.append(step)
        if step.get("Type") == "Condition":
            found += _all_steps(step["Arguments"].get("IfSteps", []) + step["Arguments"].get("ElseSteps", []))
    return found


def definition_problems(definition: str | dict, *, pipeline_name: str, role_arn: str) -> list[str]:
    """Everything botocore's service model says is wrong with this definition (empty: nothing it can see)."""
    text = definition if isinstance(definition, str) else json.dumps(definition)
    spec = json.loads(text)
    model = service_model()
    problems = request_problems(
        {"PipelineName": pipeline_name, "PipelineDefinition": text, "RoleArn": role_arn,
         "ClientRequestToken": "slimops-check-" + "0" * 24},  # boto3 fills the idempotency token in itself
        model.operation_model("CreatePipeline").input_shape, "CreatePipeline")
    parameters = {p["Name"]: p.get("DefaultValue") for p in spec.get("Parameters", [])}
    for step in _all_steps(spec.get("Steps", [])):
        if step.get("Type") not in STEP_OPERATIONS:
            continue
        operation, filled = STEP_OPERATIONS[step["Type"]]
        shape = model.operation_model(operation).input_shape
        params = concrete({**filled, **step["Arguments"]}, shape, parameters)
        problems += request_problems(params, shape, f"{step['Name']} ({operation})")
    return problems


def check_definition(definition: str, *, pipeline_name: str, role_arn: str) -> dict:
    """The definition, parsed, once the service model finds nothing wrong with it; else BadInput listing what the
    service would reject (check before ``upsert``, or before writing a definition to a file)."""
    from slimops.errors import BadInput

    problems = definition_problems(definition, pipeline_name=pipeline_name, role_arn=role_arn)
    if problems:
        raise BadInput(f"pipeline {pipeline_name}: SageMaker would reject {len(problems)} value(s): "
                       + "; ".join(problems[:5]))
    return json.loads(definition)


def check_pipeline(pipeline, role_arn: str) -> dict:
    """``check_definition`` for a built Pipeline."""
    return check_definition(pipeline.definition(), pipeline_name=pipeline.name, role_arn=role_arn)

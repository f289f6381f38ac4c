"""Each orchestrator SDK is an extra, imported only inside its adapter: importing slimops (or one adapter) must
not drag in the others. A user with `slimops[kfp]` alone must be able to import the KFP adapter."""

import subprocess
import sys

import pytest

from conftest import REPO, cli_env

SDKS = {"kfp": "kfp", "airflow": "airflow", "sagemaker": "sagemaker", "azureml": "azure.ai.ml",
        "mlflow": "mlflow", "boto3": "boto3", "aiplatform": "google.cloud.aiplatform", "uvicorn": "uvicorn"}


def imported_sdks(statement: str) -> set[str]:
    code = (f"import sys\n{statement}\n"
            f"print(sorted(k for k, m in {SDKS!r}.items() if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return set(eval(done.stdout.strip().splitlines()[-1]))  # a list literal we printed ourselves


def test_core_imports_no_sdk():
    assert imported_sdks("import slimops.cli, slimops.plan, slimops.runner, slimops.steps; "
                         "from slimops.steps import get_step, step_names; [get_step(n) for n in step_names()]") == set()


def example_build(runner: str) -> str:
    # Build the shipped example offline: the SDK is imported inside the builder, not at module import.
    return (f"import importlib.util; spec = importlib.util.spec_from_file_location('p', "
            f"{str(REPO / 'pipelines' / runner / 'digits_pipeline.py')!r}); m = importlib.util.module_from_spec(spec); "
            f"spec.loader.exec_module(m); m.build()")


@pytest.mark.parametrize("package, statement, own", [
    ("slimops.adapters.kfp", "import slimops.adapters.kfp.builder", {"kfp"}),
    ("slimops.adapters.airflow", "import slimops.adapters.airflow.operators", {"airflow"}),
    ("slimops.adapters.sagemaker", example_build("sagemaker"), {"sagemaker", "boto3"}),
    ("slimops.adapters.azureml", example_build("azureml"), {"azureml"}),
])
def test_each_adapter_imports_only_its_own_sdk(package, statement, own, monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")  # sagemaker.mlops needs a region at import
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata lookups offline
    assert imported_sdks(f"import {package}") == set(), f"importing {package} alone should load no SDK yet"
    found = imported_sdks(statement)
    assert own & found, f"{package} should import its SDK"
    assert found <= own, f"{package} also imported {sorted(found - own)}"

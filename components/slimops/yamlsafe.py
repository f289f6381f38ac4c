"""One bounded YAML loader for everything a user hands in as YAML: recipes, ``--config`` files, ``--set`` values.

``yaml.safe_load`` builds no objects, but it still follows aliases without limit: a "billion laughs" document of
a few hundred bytes expands to billions of nodes once anything walks it (pydantic, deepcopy, json.dumps), and
deep nesting overflows the recursive composer. This loader reads the document in three bounded passes:

1. events (iterative): refuses explicit tags other than the plain JSON-like ones (``!!python/...``, ``!!binary``,
   ``!custom``), nesting deeper than ``MAX_DEPTH`` and more than ``MAX_EVENTS`` events;
2. nodes: counts the nodes the document expands to through its aliases (memoised per shared node, so the count
   itself is linear) and refuses more than ``MAX_NODES``;
3. construction with ``yaml.SafeLoader``.

Every problem is a ``BadInput`` naming ``file:line``.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from slimops.errors import BadInput

MAX_BYTES = 4 * 1024 * 1024  # a recipe or a config is a few KB
MAX_DEPTH = 64  # nesting of mappings and sequences
MAX_EVENTS = 100_000  # scalars, mappings and sequences as written
MAX_NODES = 100_000  # nodes once every alias is expanded

_CORE = "tag:yaml.org,2002:"
# Explicit tags a user may write: they only say how to read a plain value.
ALLOWED_TAGS = {None, "!", *(_CORE + name for name in ("str", "int", "float", "bool", "null", "seq", "map"))}
# libyaml when PyYAML has it: its parser keeps an explicit stack (no recursion) and is ~20x faster
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml_file(path: Path | str, what: str = "file") -> object:
    """Read and parse ``path`` under the limits; ``what`` names the file in messages (recipe, config file)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise BadInput(f"{_lead(what, path)} is {size} bytes, over the {MAX_BYTES // (1024 * 1024)} MiB limit for YAML; "
                           "give a recipe or config of ordinary size")
        with open(path, "rb") as handle:
            data = handle.read(MAX_BYTES + 1)
    except OSError as err:
        raise BadInput(f"cannot read {what} {path} ({err.strerror or err}); check the path and its permissions") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise BadInput(f"{_lead(what, path)}:{line} is not UTF-8 text; save it as UTF-8") from None
    return load_yaml(text, str(path), what)


def load_yaml(text: str, where: str, what: str = "file") -> object:
    """Parse ``text`` (from ``where``: a path, or ``--set key``) under the limits; None for an empty document."""
    if len(text) > MAX_BYTES:
        raise BadInput(f"{_lead(what, where)} holds {len(text)} characters, over the {MAX_BYTES // (1024 * 1024)} MiB "
                       "limit for YAML; give a recipe or config of ordinary size")
    try:
        _check_events(text, where, what)
        loader = _LOADER(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            _check_expansion(node, where, what)
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        problem = getattr(err, "problem", None) or getattr(err, "context", None) or "syntax error"
        raise BadInput(f"{_lead(what, _at(where, mark))} is not valid YAML ({problem}); fix the syntax") from None
    except RecursionError:
        raise BadInput(f"{_lead(what, where)} nests too deeply to read; flatten it") from None
    except (ValueError, OverflowError) as err:  # e.g. an integer of more digits than Python converts
        raise BadInput(f"{_lead(what, where)} holds a value that cannot be read ({_short(str(err))}); "
                       "write an ordinary number or quote it as a string") from None


def _lead(what: str, where: str) -> str:
    return f"{what} {where}" if what else where


def _at(where: str, mark) -> str:
    return f"{where}:{mark.line + 1}" if mark is not None and not where.startswith("--set") else where


def _check_events(text: str, where: str, what: str) -> None:
    depth = events = 0
    for event in yaml.parse(text, Loader=_LOADER):
        events += 1
        if events > MAX_EVENTS:
            raise BadInput(f"{_lead(what, _at(where, event.start_mark))}: more than {MAX_EVENTS} YAML values; "
                           "a recipe or config is small, give an ordinary one")
        tag = getattr(event, "tag", None)
        if tag not in ALLOWED_TAGS:
            shown = tag.replace(_CORE, "!!") if tag else tag
            raise BadInput(f"{_lead(what, _at(where, event.start_mark))}: YAML tag {_short(shown)} is not allowed; "
                           "write a plain value (string, number, boolean, list or mapping) without a tag")
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                raise BadInput(f"{_lead(what, _at(where, event.start_mark))}: nested more than {MAX_DEPTH} levels deep; "
                               "flatten it")
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1


def _check_expansion(root, where: str, what: str) -> None:
    """Refuse a document that expands to more than MAX_NODES nodes through its aliases (a "billion laughs")."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()  # entered, children not finished yet
    stack: list[tuple[object, bool]] = [(root, False)]
    while stack:  # post-order without recursion: a node's size once its children are known
        node, ready = stack.pop()
        if id(node) in sizes:
            continue
        children = _children(node)
        if not ready:
            if id(node) in open_nodes:  # reached again from inside itself: `&a [*a]`
                raise BadInput(f"{_lead(what, _at(where, node.start_mark))}: an alias refers to the value that contains it "
                               "(a recursive structure); write the values out")
            open_nodes.add(id(node))
            stack.append((node, True))
            stack.extend((child, False) for child in children if id(child) not in sizes)
            continue
        open_nodes.discard(id(node))
        total = 1 + sum(sizes.get(id(child), 0) for child in children)
        sizes[id(node)] = total
        if total > MAX_NODES:
            raise BadInput(f"{_lead(what, _at(where, node.start_mark))}: expands to more than {MAX_NODES} values through "
                           "its aliases (&anchor / *alias); write the values out or use fewer aliases")


def _children(node) -> list:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _short(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."

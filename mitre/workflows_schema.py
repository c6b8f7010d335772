"""The workflows.yaml JSON Schema (generated from the pydantic models) and line-accurate validation.

`attackmap workflows validate` prints ``file:line: message (hint)`` for every problem: YAML syntax,
then JSON Schema errors (each error's path mapped to a line by walking the composed YAML nodes),
then checks the schema cannot express (duplicate workflow names).  The same schema is shipped as
``workflows.schema.json`` at the repository top for editors (a test keeps it in sync).
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError as SchemaError

from mitre.config import WorkflowsFile

SCHEMA_ID = "https://attackmap.dev/schemas/workflows.schema.json"
SCHEMA_FILENAME = "workflows.schema.json"


def generate_schema() -> dict[str, Any]:
    schema = WorkflowsFile.model_json_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        **{k: v for k, v in schema.items() if k != "title"},
        "title": "attackmap workflows.yaml",
    }


def schema_text() -> str:
    """The schema as shipped: stable key order, two-space indent, trailing newline."""
    return json.dumps(generate_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    message: str
    hint: str | None = None

    def __str__(self) -> str:
        text = f"{self.file}:{self.line}: {self.message}"
        return f"{text} ({self.hint})" if self.hint else text


# --------------------------------------------------------------------------- YAML node walk


def _child(node: yaml.Node | None, key: str | int) -> tuple[yaml.Node | None, yaml.Node | None]:
    """(key node, value node) of ``node[key]``; (None, None) when absent."""
    if isinstance(node, yaml.MappingNode) and isinstance(key, str):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == key:
                return k, v
    if isinstance(node, yaml.SequenceNode) and isinstance(key, int) and 0 <= key < len(node.value):
        item = node.value[key]
        return item, item
    return None, None


def node_at(root: yaml.Node | None, path: Sequence[str | int]) -> tuple[yaml.Node | None, bool]:
    """The deepest node along ``path`` and whether the whole path was found."""
    node = root
    for part in path:
        _, child = _child(node, part)
        if child is None:
            return node, False
        node = child
    return node, True


def _line(node: yaml.Node | None) -> int:
    return node.start_mark.line + 1 if node is not None else 1


def _dotted(path: Iterable[str | int]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


# --------------------------------------------------------------------------- validation


def _properties(schema: dict[str, Any], root: dict[str, Any]) -> list[str]:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = root.get("$defs", {}).get(name, {})
    return sorted(schema.get("properties", {}))


# Settings that were removed, and where what they meant lives now.
REMOVED = {
    "match": "removed: the one risk threshold is decision.min_risk_score (the poller and backfill read it too)",
    "ndjson": "removed: `attackmap enrich -o FILE` writes NDJSON; outputs holds elasticsearch_write_back",
}


def _schema_problem(error: SchemaError, root_node: yaml.Node | None, file: str, schema: dict[str, Any]) -> Problem:
    path = list(error.absolute_path)
    node, _ = node_at(root_node, path)
    where = _dotted(path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = _properties(error.schema, schema)
        extras = [k for k in error.instance if k not in allowed]
        key = extras[0] if extras else "?"
        key_node, _ = _child(node, key)
        close = difflib.get_close_matches(str(key), allowed, n=1)
        hint = REMOVED.get(str(key)) or (f"did you mean {close[0]!r}?" if close else f"allowed: {', '.join(allowed)}")
        return Problem(file, _line(key_node or node), f"{_dotted([*path, key])}: unknown key", hint)
    if error.validator == "enum":
        choices = ", ".join(repr(v) for v in error.validator_value)
        return Problem(file, _line(node), f"{where}: {error.instance!r} is not allowed", f"one of {choices}")
    if error.validator == "const":
        return Problem(file, _line(node), f"{where}: must be {error.validator_value!r}", None)
    if error.validator == "required":
        return Problem(file, _line(node), f"{where}: {error.message}", None)
    if error.validator == "type":
        expected = error.validator_value
        expected_text = " or ".join(expected) if isinstance(expected, list) else str(expected)
        return Problem(
            file,
            _line(node),
            f"{where}: {error.instance!r} is not of type {expected_text}",
            f"expected {expected_text}",
        )
    if error.validator in ("anyOf", "oneOf"):
        kinds = sorted({str(s.get("type", "?")) for s in error.validator_value if isinstance(s, dict)})
        return Problem(file, _line(node), f"{where}: {error.instance!r} is not valid", f"expected {' or '.join(kinds)}")
    if error.validator in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        bound = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}[
            str(error.validator)
        ]
        return Problem(
            file,
            _line(node),
            f"{where}: {error.instance!r} is out of range",
            f"must be {bound} {error.validator_value}",
        )
    if error.validator == "pattern":
        return Problem(
            file,
            _line(node),
            f"{where}: {error.instance!r} does not match {error.validator_value}",
            "lower-case letters, digits, '-' and '_'",
        )
    description = error.schema.get("description") if isinstance(error.schema, dict) else None
    return Problem(file, _line(node), f"{where}: {error.message}", description)


def validate_text(text: str, file: str = "workflows.yaml") -> list[Problem]:
    """Every problem in a workflows document, in line order."""
    try:
        root_node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        return [Problem(file, line, f"YAML syntax: {exc.problem or exc}", exc.context)]
    except yaml.YAMLError as exc:
        return [Problem(file, 1, f"YAML: {exc}")]
    if data is None:
        data = {}
    schema = generate_schema()
    validator = Draft202012Validator(schema)
    problems = [_schema_problem(e, root_node, file, schema) for e in validator.iter_errors(data)]
    if not problems and isinstance(data, dict):
        names: dict[str, int] = {}
        for i, w in enumerate(data.get("workflows") or []):
            name = w.get("name") if isinstance(w, dict) else None
            if not isinstance(name, str):
                continue
            node, _ = node_at(root_node, ["workflows", i, "name"])
            if name in names:
                problems.append(
                    Problem(
                        file,
                        _line(node),
                        f"workflows[{i}].name: duplicate workflow {name!r}",
                        f"first at line {names[name]}",
                    )
                )
            else:
                names[name] = _line(node)
        if not problems:
            try:
                WorkflowsFile.model_validate(data)
            except Exception as exc:  # the schema and the models agree; this is a safety net
                problems.append(Problem(file, 1, f"invalid: {exc}"))
    return sorted(problems, key=lambda p: (p.line, p.message))


def validate_file(path: Path) -> list[Problem]:
    try:
        text = path.read_text()
    except OSError as exc:
        return [Problem(str(path), 0, f"cannot read: {exc.strerror or exc}")]
    return validate_text(text, str(path))


def check_shipped(path: Path) -> bool:
    """Whether the shipped schema file equals the one generated from the models."""
    return path.is_file() and path.read_text() == schema_text()

"""Encode OpenAI tool definitions as the TypeScript-style declaration Kimi K2.5 was trained on.

The checkpoint's own ``apply_chat_template`` passes this text to the chat template as
``tools_ts_str``. A prompt that declares the tools as JSON instead still works, but serving
stacks report lower tool-call accuracy with it. Layout, for tools that each have a
``parameters`` JSON Schema:

    # Tools

    ## functions
    namespace functions {
    interface Point {            (one per $defs entry)
      x: number,
      y: number
    }
    // Function description.
    type get_weather = (_: {
      // Field description
      // maxLength: 64, minLength: 1
      // Default: "Paris"
      city?: string
    }) => any;
    }

Rules of the schema translation:

- Object fields list the required ones first, then the optional ones (``?``), each group sorted
  by name. ``additionalProperties`` adds a last ``[k: string]: T`` field, where true is ``any``
  and false is ``never``.
- Above a field come its description as ``//`` lines, one line of kept constraints, and
  ``// Default: X``. The kept constraints are maxLength, minLength and pattern for strings,
  maximum and minimum for numbers and integers, and maxItems and minItems for arrays. They are
  sorted by key, with values in Python ``str()`` form. X is JSON, except that numbers and
  booleans use Python ``repr``, so true is written ``True``.
- ``integer`` is ``number``, ``{}`` and true are ``any``, and false is ``null``. An enum lists
  its members, with strings quoted and other values in Python ``str()`` form. ``anyOf`` and a
  list of types become unions. An array is ``Array<T>``, written over several lines when the
  item schema has its own description. An unknown type name is written as it is.
- ``$ref`` is supported to ``#/$defs/NAME`` (and ``#/definitions/NAME``), written as ``NAME``,
  and to ``#``, written as ``parameters``. A self-reference declares the parameters object as
  ``interface parameters`` and the function as ``(_: parameters) => any``.

Two choices go beyond the documented checkpoint behaviour: ``oneOf`` is written as a union like
``anyOf``, and interfaces come in sorted name order, which is the checkpoint's order because it
sorts the keys of every tool dict before encoding. Keywords not listed here (``allOf``,
``const``, ``format``, ``exclusiveMinimum`` and so on) do not appear in the declaration.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

_INDENT = "  "
_HEADER = "# Tools\n\n"
_NAMESPACE_OPEN = "## functions\nnamespace functions {\n"
_NAMESPACE_CLOSE = "\n}\n"

# Constraints written above a field, by the field's JSON Schema type. All others are dropped.
_KEPT_CONSTRAINTS = {
    "string": ("maxLength", "minLength", "pattern"),
    "number": ("maximum", "minimum"),
    "integer": ("maximum", "minimum"),
    "array": ("maxItems", "minItems"),
}
# The written form of each name in a list-valued "type", where it differs from the name.
_TYPE_LIST_NAMES = {"integer": "number", "object": "{}", "array": "Array<any>"}
_DEFINITION_KEYS = ("$defs", "definitions")
# A "$ref" to the whole parameters schema is written as this interface name.
_SELF_REFERENCE_NAME = "parameters"
_UNION_OR_REFERENCE_KEYS = frozenset(("$ref", "anyOf", "oneOf", "enum"))
_ABSENT = object()


def encode_tools_typescript(tools: list[dict]) -> str:
    """Encode a list of OpenAI tools as the K2.5 TypeScript-style declaration (``tools_ts_str``).

    Tools whose ``type`` is not ``function`` are skipped. A list with no function tool gives
    just the ``# Tools`` header. Raises ValueError naming the tool and the schema path when a
    schema cannot be encoded, for example a ``$ref`` to a missing definition. ``ChatFormat``
    then declares the tools as JSON, as the checkpoint's own code does.
    """
    if not isinstance(tools, list):
        raise ValueError(f"tools must be a list of tool objects, got {type(tools).__name__}")

    declarations = []
    for index, tool in enumerate(tools):
        if not isinstance(tool, Mapping):
            raise ValueError(f"tools[{index}] must be a tool object, got {type(tool).__name__}")
        if tool.get("type") != "function":
            continue
        declarations.append(_encode_function(tool.get("function"), f"tools[{index}]"))

    if not declarations:
        return _HEADER
    return _HEADER + _NAMESPACE_OPEN + "\n".join(declarations) + _NAMESPACE_CLOSE


def _encode_function(function: Any, tool_path: str) -> str:
    """Return the comment, interface and ``type NAME = ...`` lines of one function tool."""
    if not isinstance(function, Mapping):
        raise ValueError(
            f"{tool_path}.function must be an object with name and parameters, got {type(function).__name__}"
        )
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{tool_path}.function.name must be a non-empty string, got {name!r}")
    parameters = function.get("parameters")
    if parameters is None:
        parameters = {}
    if not isinstance(parameters, Mapping):
        raise ValueError(
            f"invalid tool {name!r} ({tool_path}): parameters must be a JSON Schema object, "
            f"got {type(parameters).__name__}"
        )

    if "type" not in parameters and not _UNION_OR_REFERENCE_KEYS.intersection(parameters):
        parameters = {"type": "object", **parameters}  # so that {} and missing parameters read as (_: {})
    encoder = _SchemaEncoder(name, tool_path, parameters)
    parameters_type = encoder.type_text(parameters, "", "parameters")
    interfaces = encoder.definition_interfaces()

    lines = []
    if encoder.uses_self_reference:
        lines.append(f"interface {_SELF_REFERENCE_NAME} {parameters_type}")
        parameters_type = _SELF_REFERENCE_NAME
    lines.extend(interfaces)
    description = function.get("description")
    if description:
        lines.append(_comment(_check_text(description, encoder, "function.description"), ""))
    lines.append(f"type {name} = (_: {parameters_type}) => any;")
    return "\n".join(lines)


class _SchemaEncoder:
    """Translator of the JSON Schemas of one function into TypeScript type text."""

    def __init__(self, function_name: str, tool_path: str, parameters: Mapping) -> None:
        self.function_name = function_name
        self.tool_path = tool_path
        self.definitions = self._collect_definitions(parameters)
        self.uses_self_reference = False

    def error(self, path: str, problem: str) -> ValueError:
        return ValueError(
            f"invalid parameters schema of tool {self.function_name!r} ({self.tool_path}) at {path}: {problem}"
        )

    def _collect_definitions(self, parameters: Mapping) -> dict[str, Any]:
        definitions: dict[str, Any] = {}
        for key in _DEFINITION_KEYS:
            entries = parameters.get(key, {})
            if not isinstance(entries, Mapping):
                raise self.error(
                    f"parameters.{key}", f"expected an object of named schemas, got {type(entries).__name__}"
                )
            for name, schema in entries.items():
                definitions.setdefault(name, (f"parameters.{key}.{name}", schema))
        return definitions

    def definition_interfaces(self) -> list[str]:
        """Return one ``interface NAME ...`` block per definition, each after its description."""
        # NOTE: a definition that is not an object schema gives "interface NAME T", which is not
        # valid TypeScript. No reference output shows what the checkpoint's encoder writes there.
        interfaces = []
        for name in sorted(self.definitions):
            path, schema = self.definitions[name]
            block = f"interface {name} {self.type_text(schema, '', path)}"
            description = schema.get("description") if isinstance(schema, Mapping) else None
            if description:
                block = _comment(_check_text(description, self, f"{path}.description"), "") + "\n" + block
            interfaces.append(block)
        return interfaces

    def type_text(self, schema: Any, indent: str, path: str) -> str:
        """Return the TypeScript type of ``schema``. A multi-line type closes at ``indent``."""
        if schema is True:
            return "any"
        if schema is False:
            return "null"
        if not isinstance(schema, Mapping):
            raise self.error(path, f"expected a JSON Schema object or boolean, got {type(schema).__name__}")

        if "$ref" in schema:
            return self._reference_name(schema["$ref"], f"{path}.$ref")
        for union_key in ("anyOf", "oneOf"):
            if union_key in schema:
                return self._union_text(schema[union_key], indent, f"{path}.{union_key}")
        if "enum" in schema:
            return self._enum_text(schema["enum"], f"{path}.enum")

        schema_type = schema.get("type")
        if isinstance(schema_type, list):
            return self._type_list_text(schema_type, f"{path}.type")
        untyped_object = schema_type is None and ("properties" in schema or "additionalProperties" in schema)
        if schema_type == "object" or untyped_object:
            return self._object_text(schema, indent, path)
        if schema_type == "array" or (schema_type is None and "items" in schema):
            return self._array_text(schema, indent, path)
        if schema_type is None:
            return "any"
        if schema_type == "integer":
            return "number"
        if isinstance(schema_type, str):
            return schema_type  # string, number, boolean, null, and unknown names as written
        raise self.error(f"{path}.type", f"expected a type name or a list of them, got {schema_type!r}")

    def _reference_name(self, reference: Any, path: str) -> str:
        if reference == "#":
            self.uses_self_reference = True
            return _SELF_REFERENCE_NAME
        if isinstance(reference, str):
            for key in _DEFINITION_KEYS:
                prefix = f"#/{key}/"
                if reference.startswith(prefix):
                    name = reference[len(prefix) :]
                    if name not in self.definitions:
                        raise self.error(
                            path,
                            f"definition {name!r} of $ref {reference!r} not found. "
                            f"Add it to parameters.{key} or fix the $ref",
                        )
                    return name
        raise self.error(path, f"unsupported $ref {reference!r}. Use '#' or '#/$defs/NAME'")

    def _union_text(self, members: Any, indent: str, path: str) -> str:
        if not isinstance(members, list) or not members:
            raise self.error(path, f"expected a non-empty list of schemas, got {members!r}")
        return " | ".join(self.type_text(member, indent, f"{path}[{index}]") for index, member in enumerate(members))

    def _enum_text(self, values: Any, path: str) -> str:
        if not isinstance(values, list) or not values:
            raise self.error(path, f"expected a non-empty list of values, got {values!r}")
        members = [json.dumps(value, ensure_ascii=False) if isinstance(value, str) else str(value) for value in values]
        return " | ".join(members)

    def _type_list_text(self, type_names: list, path: str) -> str:
        if not type_names or not all(isinstance(name, str) for name in type_names):
            raise self.error(path, f"expected a non-empty list of type names, got {type_names!r}")
        return " | ".join(_TYPE_LIST_NAMES.get(name, name) for name in type_names)

    def _object_text(self, schema: Mapping, indent: str, path: str) -> str:
        properties = schema.get("properties") or {}
        if not isinstance(properties, Mapping):
            raise self.error(
                f"{path}.properties", f"expected an object of field schemas, got {type(properties).__name__}"
            )
        required = schema.get("required") or []
        if not isinstance(required, list):
            raise self.error(f"{path}.required", f"expected a list of field names, got {required!r}")
        additional = schema.get("additionalProperties", _ABSENT)
        if not properties and additional is _ABSENT:
            return "{}"

        field_indent = indent + _INDENT
        required_names = sorted(name for name in properties if name in required)
        optional_names = sorted(name for name in properties if name not in required)
        fields = [
            self._field_text(name, properties[name], name not in required, field_indent, f"{path}.properties.{name}")
            for name in required_names + optional_names
        ]
        if additional is not _ABSENT:
            if additional is True:
                value_type = "any"
            elif additional is False:
                value_type = "never"
            else:
                value_type = self.type_text(additional, field_indent, f"{path}.additionalProperties")
            fields.append(f"{field_indent}[k: string]: {value_type}")
        return "{\n" + ",\n".join(fields) + "\n" + indent + "}"

    def _field_text(self, name: str, schema: Any, optional: bool, indent: str, path: str) -> str:
        marker = "?" if optional else ""
        return self._docstring(schema, indent, path) + f"{indent}{name}{marker}: {self.type_text(schema, indent, path)}"

    def _array_text(self, schema: Mapping, indent: str, path: str) -> str:
        items = schema.get("items", _ABSENT)
        if items is _ABSENT:
            return "Array<any>"
        if isinstance(items, list):
            raise self.error(
                f"{path}.items", "tuple-form items (a list of schemas) are not supported. Use one item schema"
            )
        item_indent = indent + _INDENT
        item_docstring = self._docstring(items, item_indent, f"{path}.items")
        if not item_docstring:
            return f"Array<{self.type_text(items, indent, f'{path}.items')}>"
        item_type = self.type_text(items, item_indent, f"{path}.items")
        return f"Array<\n{item_docstring}{item_indent}{item_type}\n{indent}>"

    def _docstring(self, schema: Any, indent: str, path: str) -> str:
        """Return the comment lines written above a field or array item, each ending in a newline."""
        if not isinstance(schema, Mapping):
            return ""
        lines = []
        description = schema.get("description")
        if description:
            lines.append(_comment(_check_text(description, self, f"{path}.description"), indent))
        kept_keys = _KEPT_CONSTRAINTS.get(schema.get("type"), ()) if isinstance(schema.get("type"), str) else ()
        constraints = [f"{key}: {schema[key]}" for key in sorted(kept_keys) if key in schema]
        if constraints:
            lines.append(f"{indent}// {', '.join(constraints)}")
        if "default" in schema:
            lines.append(f"{indent}// Default: {_default_text(schema['default'])}")
        return "".join(line + "\n" for line in lines)


def _comment(text: str, indent: str) -> str:
    """Turn each line of ``text`` into a ``//`` comment. An empty line stays empty, without indent."""
    return "\n".join(f"{indent}// {line}" if line else "" for line in text.split("\n"))


def _check_text(value: Any, encoder: _SchemaEncoder, path: str) -> str:
    if not isinstance(value, str):
        raise encoder.error(path, f"expected a string, got {type(value).__name__}")
    return value


def _default_text(value: Any) -> str:
    # NOTE: numbers and booleans in Python repr form (True, 0.5) follow the checkpoint's encoder.
    # Writing null as JSON and keeping non-ASCII text unescaped is this encoder's choice, because
    # no reference output covers those cases.
    if isinstance(value, (bool, int, float)):
        return repr(value)
    return json.dumps(value, ensure_ascii=False)

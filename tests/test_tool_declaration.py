"""TypeScript-style tool declaration: layout, schema translation, errors and ChatFormat wiring."""

from __future__ import annotations

import copy
import logging

import pytest

from kimi_k25.chat import ChatFormat
from kimi_k25.chat.jinja_renderer import load_packaged_template
from kimi_k25.chat.tool_declaration import encode_tools_typescript
from kimi_k25.chat.validation import deep_sort_keys

NAMESPACE_OPEN = "# Tools\n\n## functions\nnamespace functions {\n"
NAMESPACE_CLOSE = "\n}\n"


def function_tool(name: str, parameters: dict | None = None, description: str | None = None) -> dict:
    function: dict = {"name": name}
    if description is not None:
        function["description"] = description
    if parameters is not None:
        function["parameters"] = parameters
    return {"type": "function", "function": function}


def encode(*tools: dict) -> str:
    """Encode tools the way ChatFormat does: key-sorted first, as the checkpoint's own code does."""
    return encode_tools_typescript(deep_sort_keys(list(tools)))


def declaration(*blocks: str) -> str:
    return NAMESPACE_OPEN + "\n".join(blocks) + NAMESPACE_CLOSE


SEARCH_FLIGHTS = function_tool(
    "search_flights",
    {
        "type": "object",
        "properties": {
            "origin": {"type": "string", "description": "IATA code of the departure airport", "minLength": 3, "maxLength": 3},
            "destination": {"type": "string", "description": "IATA code of the arrival airport"},
            "max_price": {"type": "number", "description": "Upper price limit in USD", "minimum": 0},
            "cabin": {
                "type": "string",
                "description": "Cabin class",
                "enum": ["economy", "business", "first"],
                "default": "economy",
            },
            "airlines": {"type": "array", "description": "Preferred airline codes", "items": {"type": "string"}},
            "passengers": {
                "type": "object",
                "description": "Passenger counts",
                "properties": {
                    "adults": {"type": "integer", "minimum": 1},
                    "children": {"type": "integer", "description": "Children under 12"},
                },
                "required": ["adults"],
            },
        },
        "required": ["origin", "destination", "passengers"],
    },
    "Search for flights between two airports.",
)

SEARCH_FLIGHTS_PROMPT_PREFIX = """<|im_system|>tool_declare<|im_middle|># Tools

## functions
namespace functions {
// Search for flights between two airports.
type search_flights = (_: {
  // IATA code of the arrival airport
  destination: string,
  // IATA code of the departure airport
  // maxLength: 3, minLength: 3
  origin: string,
  // Passenger counts
  passengers: {
    // minimum: 1
    adults: number,
    // Children under 12
    children?: number
  },
  // Preferred airline codes
  airlines?: Array<string>,
  // Cabin class
  // Default: "economy"
  cabin?: "economy" | "business" | "first",
  // Upper price limit in USD
  // minimum: 0
  max_price?: number
}) => any;
}
<|im_end|>"""


def test_search_flights_prompt_is_byte_identical() -> None:
    rendered = ChatFormat().render([{"role": "user", "content": "Find flights."}], tools=[SEARCH_FLIGHTS])

    assert rendered.startswith(SEARCH_FLIGHTS_PROMPT_PREFIX + "<|im_user|>user<|im_middle|>Find flights.<|im_end|>")


def test_search_flights_with_template_path() -> None:
    rendered = ChatFormat(load_packaged_template()).render([{"role": "user", "content": "Hi"}], tools=[SEARCH_FLIGHTS])

    assert rendered.startswith(SEARCH_FLIGHTS_PROMPT_PREFIX)


def test_second_parameterless_tool() -> None:
    encoded = encode(SEARCH_FLIGHTS, function_tool("noop", {"type": "object", "properties": {}}))

    assert encoded.endswith("  max_price?: number\n}) => any;\ntype noop = (_: {}) => any;\n}\n")


def test_defs_and_ref_interface() -> None:
    tool = function_tool(
        "draw_polygon",
        {
            "type": "object",
            "$defs": {
                "Point": {
                    "type": "object",
                    "description": "A 2D point",
                    "properties": {"x": {"type": "number"}, "y": {"type": "number"}},
                    "required": ["x", "y"],
                }
            },
            "properties": {"points": {"type": "array", "items": {"$ref": "#/$defs/Point"}}},
            "required": ["points"],
        },
        "Draw a polygon.",
    )

    assert encode(tool) == declaration(
        "// A 2D point\ninterface Point {\n  x: number,\n  y: number\n}\n"
        "// Draw a polygon.\ntype draw_polygon = (_: {\n  points: Array<Point>\n}) => any;"
    )


def test_interfaces_in_sorted_name_order() -> None:
    parameters = {
        "type": "object",
        "$defs": {"Zebra": {"type": "object", "properties": {"z": {"type": "string"}}}, "Apple": {"type": "string"}},
        "properties": {"a": {"$ref": "#/$defs/Apple"}, "z": {"$ref": "#/$defs/Zebra"}},
    }
    # Unsorted on purpose: the encoder must not depend on the caller sorting the keys.
    encoded = encode_tools_typescript([function_tool("pick", parameters)])

    assert encoded == declaration(
        "interface Apple string\ninterface Zebra {\n  z?: string\n}\ntype pick = (_: {\n  a?: Apple,\n  z?: Zebra\n}) => any;"
    )


@pytest.mark.parametrize(
    ("field_schema", "field_text"),
    [
        pytest.param({"anyOf": [{"type": "string"}, {"type": "null"}]}, "value: string | null", id="any_of_nullable"),
        pytest.param({"type": ["integer", "null"]}, "value: number | null", id="type_list_nullable"),
        pytest.param(
            {"type": "object", "additionalProperties": {"type": "string"}},
            "value: {\n    [k: string]: string\n  }",
            id="additional_properties_schema",
        ),
        pytest.param({"type": "boolean", "default": True}, "// Default: True\n  value: boolean", id="default_true"),
        pytest.param({"type": "integer"}, "value: number", id="integer"),
        pytest.param({}, "value: any", id="empty_schema"),
        pytest.param(True, "value: any", id="true_schema"),
        pytest.param(False, "value: null", id="false_schema"),
        pytest.param({"description": "Anything"}, "// Anything\n  value: any", id="untyped_with_description"),
        pytest.param({"type": "uuid"}, "value: uuid", id="unknown_type_as_written"),
        pytest.param(
            {"type": ["object", "array", "integer", "string"]}, "value: {} | Array<any> | number | string", id="type_list_all"
        ),
        pytest.param({"type": "array"}, "value: Array<any>", id="array_without_items"),
        pytest.param({"type": "array", "items": {}}, "value: Array<any>", id="array_of_any"),
        pytest.param({"oneOf": [{"type": "integer"}, {"type": "boolean"}]}, "value: number | boolean", id="one_of"),
        pytest.param({"type": "object"}, "value: {}", id="object_without_properties"),
        pytest.param(
            {"type": "object", "additionalProperties": True}, "value: {\n    [k: string]: any\n  }", id="additional_true"
        ),
        pytest.param(
            {"type": "object", "additionalProperties": False}, "value: {\n    [k: string]: never\n  }", id="additional_false"
        ),
        pytest.param(
            {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"], "additionalProperties": False},
            "value: {\n    a: string,\n    [k: string]: never\n  }",
            id="additional_after_fields",
        ),
        pytest.param({"properties": {"a": {"type": "string"}}}, "value: {\n    a?: string\n  }", id="untyped_object"),
        pytest.param(
            {"anyOf": [{"type": "object", "properties": {"a": {"type": "string"}}}, {"type": "null"}]},
            "value: {\n    a?: string\n  } | null",
            id="any_of_object_member",
        ),
    ],
)
def test_field_type_shapes(field_schema: object, field_text: str) -> None:
    tool = function_tool("f", {"type": "object", "properties": {"value": field_schema}, "required": ["value"]})

    assert encode(tool) == declaration(f"type f = (_: {{\n  {field_text}\n}}) => any;")


@pytest.mark.parametrize(
    ("field_schema", "docstring"),
    [
        pytest.param(
            {"type": "string", "minLength": 1, "maxLength": 10, "pattern": "^\\d+$", "format": "date"},
            "// maxLength: 10, minLength: 1, pattern: ^\\d+$",
            id="string_kept_format_dropped",
        ),
        pytest.param(
            {"type": "number", "minimum": 0.5, "maximum": 10, "exclusiveMinimum": 0, "multipleOf": 0.5},
            "// maximum: 10, minimum: 0.5",
            id="number_kept_others_dropped",
        ),
        pytest.param({"type": "integer", "maximum": 5, "minLength": 2}, "// maximum: 5", id="integer_ignores_string_keys"),
        pytest.param(
            {"type": "array", "maxItems": 3, "minItems": 1, "uniqueItems": True, "items": {"type": "string"}},
            "// maxItems: 3, minItems: 1",
            id="array_kept",
        ),
        pytest.param({"type": "boolean", "default": False}, "// Default: False", id="default_false"),
        pytest.param({"type": "number", "default": 0.5}, "// Default: 0.5", id="default_float"),
        pytest.param({"type": "integer", "default": 3}, "// Default: 3", id="default_int"),
        pytest.param({"type": "string", "default": "x \"y\""}, '// Default: "x \\"y\\""', id="default_string_json"),
        pytest.param({"type": "object", "default": {"a": 1}}, '// Default: {"a": 1}', id="default_object_json"),
        pytest.param({"type": "array", "default": ["x"]}, '// Default: ["x"]', id="default_list_json"),
        pytest.param({"type": "string", "default": None}, "// Default: null", id="default_null"),
        pytest.param(
            {"type": "string", "description": "Code", "maxLength": 3, "default": "abc"},
            "// Code\n  // maxLength: 3\n  // Default: \"abc\"",
            id="description_constraints_default_order",
        ),
    ],
)
def test_field_docstring(field_schema: dict, docstring: str) -> None:
    tool = function_tool("f", {"type": "object", "properties": {"value": field_schema}, "required": ["value"]})

    encoded = encode(tool)

    assert f"{{\n  {docstring}\n  value: " in encoded, encoded


def test_required_fields_first_then_sorted() -> None:
    parameters = {
        "type": "object",
        "properties": {name: {"type": "string"} for name in ("delta", "alpha", "charlie", "bravo", "Echo")},
        "required": ["delta", "bravo"],
    }

    assert encode(function_tool("order", parameters)) == declaration(
        "type order = (_: {\n  bravo: string,\n  delta: string,\n  Echo?: string,\n  alpha?: string,\n  charlie?: string\n}) => any;"
    )


def test_self_reference_declares_parameters_interface() -> None:
    parameters = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "children": {"type": "array", "items": {"$ref": "#"}}},
        "required": ["name"],
    }

    assert encode(function_tool("make_tree", parameters, "Build a tree.")) == declaration(
        "interface parameters {\n  name: string,\n  children?: Array<parameters>\n}\n"
        "// Build a tree.\ntype make_tree = (_: parameters) => any;"
    )


def test_deep_nesting() -> None:
    parameters = {
        "type": "object",
        "properties": {
            "outer": {
                "type": "object",
                "description": "Level 1",
                "properties": {
                    "middle": {
                        "type": "object",
                        "properties": {
                            "inner": {
                                "type": "object",
                                "properties": {"value": {"type": "string", "description": "Deepest"}},
                                "required": ["value"],
                            }
                        },
                        "required": ["inner"],
                    }
                },
            }
        },
        "required": ["outer"],
    }

    assert encode(function_tool("deep", parameters)) == declaration(
        """type deep = (_: {
  // Level 1
  outer: {
    middle?: {
      inner: {
        // Deepest
        value: string
      }
    }
  }
}) => any;"""
    )


def test_arrays_of_objects() -> None:
    parameters = {
        "type": "object",
        "properties": {
            "rows": {
                "type": "array",
                "description": "Rows to insert",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "integer"},
                        "tags": {"type": "array", "items": {"type": "string", "description": "A tag", "maxLength": 8}},
                    },
                    "required": ["id"],
                },
            },
            "points": {
                "type": "array",
                "items": {"type": "object", "description": "A point", "properties": {"x": {"type": "number"}}, "required": ["x"]},
            },
            "matrix": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
        },
        "required": ["rows"],
    }

    assert encode(function_tool("insert", parameters)) == declaration(
        """type insert = (_: {
  // Rows to insert
  // minItems: 1
  rows: Array<{
    id: number,
    tags?: Array<
      // A tag
      // maxLength: 8
      string
    >
  }>,
  matrix?: Array<Array<number>>,
  points?: Array<
    // A point
    {
      x: number
    }
  >
}) => any;"""
    )


@pytest.mark.parametrize(
    ("values", "type_text"),
    [
        pytest.param([1, 2, 3], "1 | 2 | 3", id="integers"),
        pytest.param([True, False, None], "True | False | None", id="booleans_and_null"),
        pytest.param(["a", 1.5, None], '"a" | 1.5 | None', id="mixed"),
        pytest.param(['say "hi"'], '"say \\"hi\\""', id="quote_escaped"),
        pytest.param(["é", "中文"], '"é" | "中文"', id="unicode"),
    ],
)
def test_enum_members(values: list, type_text: str) -> None:
    tool = function_tool("f", {"type": "object", "properties": {"value": {"enum": values}}, "required": ["value"]})

    assert encode(tool) == declaration(f"type f = (_: {{\n  value: {type_text}\n}}) => any;")


def test_enum_with_default() -> None:
    tool = function_tool("f", {"type": "object", "properties": {"level": {"type": "integer", "enum": [1, 2], "default": 2}}})

    assert encode(tool) == declaration("type f = (_: {\n  // Default: 2\n  level?: 1 | 2\n}) => any;")


def test_multiline_descriptions_keep_empty_lines() -> None:
    tool = function_tool(
        "annotate",
        {"type": "object", "properties": {"text": {"type": "string", "description": "First line.\n\nThird line."}}},
        "Annotate.\n\n  Indented line.",
    )

    assert encode(tool) == declaration(
        "// Annotate.\n\n//   Indented line.\ntype annotate = (_: {\n  // First line.\n\n  // Third line.\n  text?: string\n}) => any;"
    )


def test_unicode_kept_unescaped() -> None:
    tool = function_tool(
        "translate",
        {"type": "object", "properties": {"城市": {"type": "string", "default": "北京"}}, "required": []},
        "翻译 text into 中文 🙂.",
    )

    assert encode(tool) == declaration(
        '// 翻译 text into 中文 🙂.\ntype translate = (_: {\n  // Default: "北京"\n  城市?: string\n}) => any;'
    )


@pytest.mark.parametrize(
    "parameters",
    [
        pytest.param({"type": "object", "properties": {}}, id="empty_properties"),
        pytest.param({"type": "object"}, id="no_properties"),
        pytest.param({}, id="empty_schema"),
        pytest.param(None, id="missing"),
    ],
)
def test_empty_parameters(parameters: dict | None) -> None:
    assert encode(function_tool("noop", parameters)) == declaration("type noop = (_: {}) => any;")


def test_parameters_description_not_printed() -> None:
    tool = function_tool("f", {"type": "object", "description": "Hidden", "properties": {}})

    assert encode(tool) == declaration("type f = (_: {}) => any;")


def test_non_function_tools_skipped() -> None:
    tools = [{"type": "retrieval"}, function_tool("ping"), {"type": "web_search", "function": {"name": "x"}}]

    assert encode(*tools) == declaration("type ping = (_: {}) => any;")


@pytest.mark.parametrize("tools", [[], [{"type": "retrieval"}]], ids=["empty", "only_non_function"])
def test_no_function_tools_gives_header(tools: list) -> None:
    assert encode_tools_typescript(tools) == "# Tools\n\n"


def test_encoder_leaves_tools_unchanged() -> None:
    tools = [copy.deepcopy(SEARCH_FLIGHTS)]
    snapshot = copy.deepcopy(tools)

    encode_tools_typescript(tools)

    assert tools == snapshot


@pytest.mark.parametrize(
    ("tools", "fragments"),
    [
        pytest.param(
            [function_tool("create_node", {"type": "object", "properties": {"node": {"$ref": "#/$defs/Nope"}}})],
            ["'create_node'", "tools[0]", "parameters.properties.node.$ref", "'#/$defs/Nope'"],
            id="ref_to_missing_definition",
        ),
        pytest.param(
            [function_tool("f", {"properties": {"a": {"$ref": "https://example.com/a.json"}}})],
            ["'f'", "parameters.properties.a.$ref", "unsupported $ref"],
            id="remote_ref",
        ),
        pytest.param(
            [function_tool("ok"), function_tool("f", {"type": "object", "properties": ["a"]})],
            ["'f'", "tools[1]", "parameters.properties"],
            id="properties_not_object",
        ),
        pytest.param(
            [function_tool("f", {"type": "object", "properties": {"a": {"type": "array", "items": [{}, {}]}}})],
            ["parameters.properties.a.items", "tuple-form"],
            id="tuple_items",
        ),
        pytest.param(
            [function_tool("f", {"type": "object", "properties": {"a": {"anyOf": []}}})],
            ["parameters.properties.a.anyOf"],
            id="empty_any_of",
        ),
        pytest.param(
            [function_tool("f", {"type": "object", "properties": {"a": {"enum": "x"}}})],
            ["parameters.properties.a.enum"],
            id="enum_not_list",
        ),
        pytest.param(
            [function_tool("f", {"type": "object", "properties": {"a": 3}})],
            ["parameters.properties.a", "got int"],
            id="schema_not_object",
        ),
        pytest.param(
            [function_tool("f", {"type": "object", "properties": {"a": {"type": "string", "description": 7}}})],
            ["parameters.properties.a.description"],
            id="description_not_string",
        ),
        pytest.param([function_tool("f", ["a"])], ["'f'", "tools[0]", "parameters"], id="parameters_not_object"),
        pytest.param([{"type": "function", "function": {"parameters": {}}}], ["tools[0].function.name"], id="missing_name"),
        pytest.param([{"type": "function"}], ["tools[0].function"], id="missing_function"),
        pytest.param(["get_weather"], ["tools[0]"], id="tool_not_object"),
    ],
)
def test_invalid_schema_raises(tools: list, fragments: list[str]) -> None:
    with pytest.raises(ValueError) as error_info:
        encode_tools_typescript(tools)

    for fragment in fragments:
        assert fragment in str(error_info.value)


def test_chat_format_falls_back_to_json(caplog: pytest.LogCaptureFixture) -> None:
    broken = function_tool("create_node", {"type": "object", "properties": {"node": {"$ref": "#/$defs/Nope"}}})

    with caplog.at_level(logging.WARNING, logger="kimi_k25.chat.format"):
        rendered = ChatFormat().render([{"role": "user", "content": "Hi"}], tools=[broken])

    assert rendered.startswith('<|im_system|>tool_declare<|im_middle|>[{"function":{"name":"create_node"')
    assert "#/$defs/Nope" in caplog.text


def test_chat_format_without_encoder_uses_json() -> None:
    rendered = ChatFormat(tool_declaration_encoder=None).render([{"role": "user", "content": "Hi"}], tools=[SEARCH_FLIGHTS])

    assert rendered.startswith('<|im_system|>tool_declare<|im_middle|>[{"function":')

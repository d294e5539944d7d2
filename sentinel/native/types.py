"""Unified request types of the Native API, validated strictly (pydantic v2).

Every model rejects unknown keys, at the top level *and* inside messages, tools and tool calls: a typo
must not be silently dropped (the original ignored unknown keys inside messages). `model` is not a field:
the client names a tier. Values are not coerced (`"1"` is not a number, `1` is not a bool).

Semantic rules the original checked at translation time (§2.5) are checked here. A few limits belong to
one wire format only (Anthropic refuses empty messages and a conversation the assistant opens); those a
translator raises, and the native service then tries another candidate of the tier while the
conversation is not bound to a model (`sentinel.services.native_chat`). They are raised with their path in the error's context (`param`);
`sentinel.native.validation.parse_chat_request` turns any failure into a `NativeValidationError`.
The response, stream-chunk and error shapes live in `sentinel.native.responses`.
"""

from __future__ import annotations

import binascii
import hashlib
import re
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from sentinel.native._wire import MAX_COUNT

Role = Literal["system", "user", "assistant", "tool"]
Tier = Literal["simple", "moderate", "complex"]
ToolChoiceMode = Literal["auto", "none", "required"]

TOOL_NAME_PATTERN = r"^[a-zA-Z0-9_-]{1,64}$"
_TOOL_NAME = re.compile(TOOL_NAME_PATTERN)
# A message's `name` on the Native API: OpenAI refuses one outside this pattern (400 "Invalid
# 'messages[1].name': string does not match pattern"), Anthropic has no place for it (left out). A tier
# may hold both, so the name every candidate takes is checked here, not by whichever model is drawn.
MESSAGE_NAME_PATTERN = TOOL_NAME_PATTERN
_MESSAGE_NAME = _TOOL_NAME
# What a `conversation_id` may not hold: the control characters (C0, DEL, C1); any other text it may.
CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Objects and arrays in one request's `tools`, all together. Their schemas are checked against the
# JSON Schema meta-schema before any quota is taken (in a worker thread: `sentinel.offload`), at
# ~0.17 ms per object or array: 2,000 (~0.35 s, once per distinct schema: see SCHEMAS_REMEMBERED) hold 128 tools (the most a
# request may have) of 14 each, the tool and its `function` included; a function-calling example
# holds 6 to 17, an agent's 20 tools a few hundred.
MAX_TOOL_NODES = 2_000
MAX_TOOLS = 128  # tools in one request
# Characters of regular expressions (`pattern` values, `patternProperties` keys) in one request's
# `tools`: the check compiles each, at ~1 µs per character (one pattern of 1 MB: ~0.9 s). 10,000
# is ~10 ms; a tool's patterns (a date, an email, an id) are tens of characters.
MAX_TOOL_PATTERN_CHARS = 10_000
# Strings, numbers and nulls in the arrays of one request's `tools` (an `enum`, a `required` list):
# none is an object or an array counted above, and the check reads some of them one by one (a
# `required` name ~10 µs: 100,000 of them, ~1 MB, took ~1 s). 10,000 is at most ~0.1 s; a tool's
# enums and required names are tens, an enum of every country 250.
MAX_TOOL_LIST_ITEMS = 10_000
# The items of a `type` list: JSON Schema's types, each at most once. The meta-schema checks that a
# list's items are unique by comparing every pair when they do not sort (numbers and strings mixed):
# 4,000 numbers (~20 KB) took ~10 s, holding the lock every schema check takes.
MAX_TYPE_LIST = 7
# Characters of one stop sequence of a Native API request (`stop`, at most 4 of them, as OpenAI takes).
# A stop sequence is a delimiter (`"\n\nHuman:"`, `"</answer>"`, `"Observation:"`), tens of characters;
# one of up to a whole body's size (~1 MB) reached the provider, which refuses it or reads it, and no
# estimate counts it (it is no prompt text): the reservation held nothing of it. Bounded instead, here
# and on the `/v1` surfaces (`openai_checks.check_stop`).
MAX_STOP_CHARS = 256
# Stop sequences of one OpenAI-format request (`stop`): OpenAI's limit.
MAX_STOP_SEQUENCES = 4
# ... and of one `/v1/messages` body (`stop_sequences`): Anthropic's limit. Their text is counted as
# input, one count each: 2.4 million of one character (a 10 MB body) kept a counting thread ~90 s.
MAX_MESSAGES_STOP_SEQUENCES = 8191
# Images (`image_url` parts) in one request, all its messages together. Anthropic documents a
# per-request maximum of 100 (OpenAI's is higher): a tier may hold both, so the bound every candidate
# takes is checked here, not by whichever model is drawn (500 images reached Claude).
MAX_IMAGES = 100
# The head of an image's data URL: `data:image/<subtype>;base64,`, its scheme in any case (RFC 3986).
# What follows it must be base64 (`image_data_url`); the translators read the URL with it too, and the
# quota's image estimate (`quota.images.url_image_tokens`): one rule of what an image's data URL is.
_IMAGE_DATA_URL = re.compile(r"(?i:data):(image/[a-zA-Z0-9.+-]+);base64,")
# Schemas that passed the check, remembered by the digest of their canonical JSON: a client sends
# the same tools on every turn of a conversation, and pays for the check once.
SCHEMAS_REMEMBERED = 4096


class StrictModel(BaseModel):
    """Base of every native model: unknown keys are errors and values are never coerced."""

    model_config = ConfigDict(extra="forbid", strict=True)

    def to_dict(self) -> dict[str, Any]:
        """The wire form: JSON-ready, absent optional fields left out."""
        return self.model_dump(mode="json", exclude_none=True)


def _kinds(allowed: tuple[type, ...], message: str) -> Callable[[Any], Any]:
    """A before-validator that rejects the wrong JSON type with one clear message (instead of one
    error per union member)."""

    def check(value: Any) -> Any:
        if value is None or isinstance(value, allowed):
            return value
        raise PydanticCustomError("type_error", message)

    return check


class TextPart(StrictModel):
    """A text content part."""

    type: Literal["text"]
    text: str


def image_data_url_head(url: str) -> tuple[str, int] | None:
    """(media type, where the base64 data starts) of a `data:image/<subtype>;base64,<data>` URL, or
    None for any other string: its head alone is read, nothing copied (the URL may be megabytes long;
    the quota's image estimate reads a header from there, on every request)."""
    match = _IMAGE_DATA_URL.match(url)
    return None if match is None else (match.group(1), match.end())


def image_data_url(url: str) -> tuple[str, str] | None:
    """(media type, base64 data) of a `data:image/<subtype>;base64,<data>` URL, or None for any other
    string (`image_data_url_head`). The data is not checked here: `ImageUrl` checks a request's."""
    head = image_data_url_head(url)
    return None if head is None else (head[0], url[head[1]:])


def _is_base64(data: str) -> bool:
    """Whether `data` is non-empty standard base64, padded, nothing else in it (no spaces or line
    breaks). In C, ~1 ms a megabyte: a large body's check runs in a worker thread (`sentinel.offload`)."""
    try:
        return bool(binascii.a2b_base64(data, strict_mode=True))
    except (binascii.Error, ValueError):  # ValueError: a character outside ASCII
        return False


class ImageUrl(StrictModel):
    """An image reference: an http(s) URL or a `data:image/<subtype>;base64,<data>` URL."""

    url: str = Field(min_length=1)
    detail: Literal["auto", "low", "high"] | None = None

    @field_validator("url")
    @classmethod
    def _scheme(cls, url: str) -> str:
        # Another scheme went to an OpenAI-format server as it was (`file://`: vLLM reads it from disk
        # under its allowed media path); Anthropic's builder refused it, an OpenAI model's did not.
        # A data URL that is no base64 image (`data:text/plain,hi`, invalid base64) went to an
        # OpenAI-format model too, refused there and charged, while Claude's translation refused it.
        head = url[:8].lower()
        if head.startswith(("https://", "http://")):
            return url
        if head.startswith("data:"):
            parts = image_data_url(url)
            if parts is None:
                raise PydanticCustomError("image_url", "a data URL must be data:image/<type>;base64,<data>")
            if not _is_base64(parts[1]):
                raise PydanticCustomError(
                    "image_url", "an image's base64 data must be standard base64 (padded, no spaces or line breaks)"
                )
            return url
        raise PydanticCustomError("image_url", "must be an http(s) URL or a data:image/<type>;base64 URL")


class ImagePart(StrictModel):
    """An image content part (user messages only)."""

    type: Literal["image_url"]
    image_url: ImageUrl


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]
Content = Annotated[
    str | list[ContentPart] | None,
    BeforeValidator(_kinds((str, list), "Input should be a string, a list of content parts or null")),
]


class FunctionCall(StrictModel):
    """The function a tool call invokes; `arguments` is a JSON object, not a JSON string."""

    name: str = Field(min_length=1)
    arguments: dict[str, Any]


class ToolCall(StrictModel):
    """A tool call made by the assistant. Its `id` is the provider's and must be echoed back unchanged."""

    id: str = Field(min_length=1)
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(StrictModel):
    """One conversation turn. `content` may be null only on an assistant turn that carries tool_calls."""

    role: Role
    content: Content = None
    name: str | None = Field(default=None, min_length=1)
    tool_call_id: str | None = Field(default=None, min_length=1)
    tool_calls: list[ToolCall] | None = None

    @model_validator(mode="after")
    def _check_role_fields(self) -> Message:
        if self.tool_calls is not None and self.role != "assistant":
            raise PydanticCustomError("message", "tool_calls are only allowed on assistant messages")
        if self.role == "tool" and self.tool_call_id is None:
            raise PydanticCustomError(
                "message", "Missing required field: tool_call_id is required for tool messages"
            )
        if self.role != "tool" and self.tool_call_id is not None:
            raise PydanticCustomError("message", "tool_call_id is only allowed on tool messages")
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise PydanticCustomError(
                "message", "content is required (null is only allowed on assistant messages with tool_calls)"
            )
        if self.role != "user" and isinstance(self.content, list):
            if any(isinstance(part, ImagePart) for part in self.content):
                raise PydanticCustomError("message", "image_url parts are only allowed in user messages")
        return self

    def text(self) -> str:
        """The text of the content: text parts concatenated with no separator, images ignored."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content if isinstance(part, TextPart))


def _empty_object_schema() -> dict[str, Any]:
    return {"type": "object", "properties": {}}


_valid_schemas: OrderedDict[bytes, None] = OrderedDict()
_valid_schemas_lock = threading.Lock()
# Checks run in worker threads (a large request's, one with tools: `sentinel.offload`), and
# `warnings.catch_warnings` swaps the process's warning filters: two at once could restore each
# other's, leaving a FutureWarning of a `pattern` unsilenced (an error where warnings are errors)
# or silenced for good. One check at a time (the GIL runs one at a time anyway).
_checking_lock = threading.Lock()


def _schema_key(schema: dict[str, Any]) -> bytes | None:
    """The key a valid schema is remembered by; None for one that is not JSON (built in Python, not
    parsed: checked, never remembered)."""
    try:
        return hashlib.sha256(orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)).digest()
    except orjson.JSONEncodeError:
        return None


def schemas_remembered(tools: Any) -> bool:
    """Whether reading a request's `tools` (OpenAI's shape, `function.parameters`, or Anthropic's,
    `input_schema`; None or empty: none) checks no parameters schema that is not remembered as valid
    already — so it costs microseconds, not a check's ~0.5 ms and up, and may stay on the event loop
    (`sentinel.offload`). False for anything else, a shape not recognised included: then the read
    may check schemas (in a worker thread)."""
    if tools is None or tools == []:
        return True
    if not isinstance(tools, list) or len(tools) > MAX_TOOLS:
        return False
    for tool in tools:
        if not isinstance(tool, dict):
            return False
        function = tool.get("function")
        schema = function.get("parameters") if isinstance(function, dict) else tool.get("input_schema")
        if schema is None:
            schema = _empty_object_schema()  # the default a tool without one gets
        if not isinstance(schema, dict) or _schema_key(schema) not in _valid_schemas:
            return False
    return True


def _schema_problem(schema: dict[str, Any]) -> str | None:
    """Why `schema` is not a JSON Schema (2020-12) for tool parameters, or None. A schema that
    passed is remembered (SCHEMAS_REMEMBERED, least recently used go first); one that failed is
    not, its message can be as long as the schema."""
    key = _schema_key(schema)
    if key is not None:
        with _valid_schemas_lock:
            if key in _valid_schemas:
                _valid_schemas.move_to_end(key)
                return None
    problem = _check_schema(schema)
    if problem is None and key is not None:
        with _valid_schemas_lock:
            _valid_schemas[key] = None
            if len(_valid_schemas) > SCHEMAS_REMEMBERED:
                _valid_schemas.popitem(last=False)
    return problem


def _check_schema(schema: dict[str, Any]) -> str | None:
    if schema.get("type") != "object":
        return 'parameters must have "type": "object"'
    try:
        with _checking_lock, warnings.catch_warnings():  # a `pattern` like "[[" warns (FutureWarning) as it compiles
            warnings.simplefilter("ignore")
            Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        return exc.message
    except (OverflowError, RecursionError) as exc:
        # Compiling a `pattern` fails beyond the re.error the check expects: a repetition
        # count over the regex engine's limit (`a{4294967295}`), groups nested too deep.
        return f"a pattern cannot be compiled: {exc}"
    return None


def _too_costly(tools: Any) -> str | None:
    """Why checking the schemas of `tools` would cost too much (MAX_TOOL_NODES, MAX_TOOL_PATTERN_CHARS,
    MAX_TOOL_LIST_ITEMS, MAX_TYPE_LIST), or None; an iterative walk that stops at the first limit passed."""
    stack = [tools]
    nodes = chars = items = 0
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            stack.extend(node.values())
            pattern, keyed, kind = node.get("pattern"), node.get("patternProperties"), node.get("type")
            chars += len(pattern) if isinstance(pattern, str) else 0
            chars += sum(map(len, keyed)) if isinstance(keyed, dict) else 0
            if isinstance(kind, list) and len(kind) > MAX_TYPE_LIST:
                return f"a `type` list holds more than JSON Schema's {MAX_TYPE_LIST} types"
        elif isinstance(node, list):
            stack.extend(node)
            items += sum(1 for item in node if not isinstance(item, dict | list | bool))
        elif not isinstance(node, bool):  # `true`/`false` are schemas too, each checked like an object
            continue
        nodes += 1
        if nodes > MAX_TOOL_NODES:
            return f"the tools hold more than {MAX_TOOL_NODES:,} JSON objects, arrays and booleans in all"
        if chars > MAX_TOOL_PATTERN_CHARS:
            return f"the tools' patterns hold more than {MAX_TOOL_PATTERN_CHARS:,} characters in all"
        if items > MAX_TOOL_LIST_ITEMS:
            return f"the tools' arrays hold more than {MAX_TOOL_LIST_ITEMS:,} strings, numbers and nulls in all"
    return None


class FunctionSpec(StrictModel):
    """A callable function as the OpenAI and Anthropic wire formats accept it: `description` may be
    absent; `parameters` must be a JSON Schema (2020-12) for an object."""

    _requires_description: ClassVar[bool] = False

    name: str
    description: str | None = None
    parameters: dict[str, Any] = Field(default_factory=_empty_object_schema)

    @field_validator("name")
    @classmethod
    def _check_name(cls, name: str) -> str:
        if not _TOOL_NAME.fullmatch(name):  # (`match`: `$` passed a final newline, `"lookup\n"`)
            raise PydanticCustomError(
                "tool_definition",
                f"Invalid tool definition: Invalid tool name '{name}': must match {TOOL_NAME_PATTERN}",
            )
        return name

    @model_validator(mode="after")
    def _check_description_and_schema(self) -> FunctionSpec:
        if self._requires_description and not (self.description or "").strip():
            raise PydanticCustomError(
                "tool_definition", f"Invalid tool definition: Tool '{self.name}' has empty description"
            )
        problem = _schema_problem(self.parameters)
        if problem is not None:
            raise PydanticCustomError(
                "tool_definition",
                f"Invalid tool definition: Tool '{self.name}' has invalid schema: {problem}",
            )
        return self


class FunctionDefinition(FunctionSpec):
    """A callable function of the Native API: a non-empty `description` is required."""

    _requires_description: ClassVar[bool] = True

    description: str


class ToolSpec(StrictModel):
    """A tool the model may call (description optional, as both wire formats allow)."""

    type: Literal["function"]
    function: FunctionSpec


class ToolDefinition(ToolSpec):
    """A tool the model may call (Native API: described)."""

    function: FunctionDefinition


class ToolChoiceName(StrictModel):
    """The name of the one function the model must call."""

    name: str = Field(min_length=1)


class ToolChoiceFunction(StrictModel):
    """`{"type": "function", "function": {"name": ...}}`: force one named tool."""

    type: Literal["function"]
    function: ToolChoiceName


ToolChoice = Annotated[
    ToolChoiceMode | ToolChoiceFunction,
    BeforeValidator(
        _kinds((str, dict), "Input should be 'auto', 'none', 'required' or an object naming a function")
    ),
]
# A `stop` as every surface takes it (the Native API's; a translated `/v1` request's, whose `stop` or
# `stop_sequences` the transport checked first, `openai_checks.check_stop`): each sequence of 1 to
# MAX_STOP_CHARS characters, at most MAX_STOP_SEQUENCES of them.
StopSequence = Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]
Stop = Annotated[
    StopSequence | Annotated[list[StopSequence], Field(min_length=1, max_length=MAX_STOP_SEQUENCES)],
    BeforeValidator(_kinds((str, list), "Input should be a string or a list of at most 4 strings")),
]

_REQUEST_EXAMPLES: list[Any] = [
    {"tier": "simple", "messages": [{"role": "user", "content": "Say hello."}]},
    {
        "tier": "moderate",
        "conversation_id": "support-4711",
        "messages": [
            {"role": "system", "content": "You are a weather assistant."},
            {"role": "user", "content": "What is the weather in Paris?"},
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Current weather for a city",
                    "parameters": {
                        "type": "object",
                        "properties": {"city": {"type": "string"}},
                        "required": ["city"],
                    },
                },
            }
        ],
        "tool_choice": "auto",
        "max_tokens": 256,
        "stream": False,
    },
]


def _semantic_error(message: str, param: str) -> PydanticCustomError:
    return PydanticCustomError("semantic", message, {"param": param})


def _check_tool_turns(messages: Sequence[Message]) -> None:
    """Every tool call is answered by exactly one tool message, among the tool messages right after
    the assistant message that made it, and no two tool calls of a conversation share an id.

    Both wire formats refuse a call left unanswered (OpenAI: "An assistant message with 'tool_calls'
    must be followed by tool messages responding to each 'tool_call_id'"; Anthropic: "tool_use ids were
    found without tool_result blocks immediately after") and a result naming no call just made;
    Anthropic refuses a repeated id (in one message or across the conversation), OpenAI may not. Checked
    here for every model alike: one sent upstream was a request charged and the provider's 400 relayed.
    """
    seen: set[str] = set()
    pending: dict[str, str] = {}  # the calls awaiting their result: id -> the call's `param`
    for i, msg in enumerate(messages):
        if msg.role == "tool":
            call_id = msg.tool_call_id or ""
            if call_id in pending:
                del pending[call_id]
                continue
            if call_id not in seen:
                raise _semantic_error(
                    f"No tool call found in history for tool_call_id: {call_id}", f"messages.{i}.tool_call_id"
                )
            raise _semantic_error(
                f"tool_call_id {call_id} answers a tool call already answered or not made by the assistant"
                " message just before these tool messages (tool messages follow the call they answer, one each)",
                f"messages.{i}.tool_call_id",
            )
        if pending:
            _refuse_unanswered(pending, f"messages.{i}")
        for j, call in enumerate(msg.tool_calls or ()):
            if call.id in seen:
                raise _semantic_error(
                    f"duplicate tool call id {call.id}: each tool call of a conversation needs an id of its own",
                    f"messages.{i}.tool_calls.{j}.id",
                )
            seen.add(call.id)
            pending[call.id] = f"messages.{i}.tool_calls.{j}.id"
    if pending:
        _refuse_unanswered(pending, "the end of the conversation")


def _refuse_unanswered(pending: dict[str, str], before: str) -> None:
    call_id, param = next(iter(pending.items()))
    raise _semantic_error(
        f"tool call {call_id} has no tool message answering it before {before}: the tool messages answering"
        " each of an assistant message's tool calls must follow it directly",
        param,
    )


class ChatParams(StrictModel):
    """What every unified chat request holds, with the semantic rules every translator relies on.

    `ChatRequest` (the Native API: a tier) and `sentinel.native.model_request.ModelChatRequest`
    (the `/v1` surfaces: a catalogue model) declare these fields themselves, each in its own order
    (the order of validation errors and of the documented schema), and add how the model is chosen.
    """

    if TYPE_CHECKING:  # declared by each subclass
        messages: list[Message]
        temperature: float | None
        max_tokens: int | None
        top_p: float | None
        stop: str | list[str] | None
        stream: bool
        tools: Sequence[ToolSpec] | None
        tool_choice: ToolChoiceMode | ToolChoiceFunction | None

    @field_validator("tools", mode="before", check_fields=False)
    @classmethod
    def _check_tools_size(cls, tools: Any) -> Any:
        """Before any tool's schema is checked (see MAX_TOOL_NODES, MAX_TOOL_PATTERN_CHARS)."""
        problem = _too_costly(tools)
        if problem is not None:
            raise _semantic_error(f"Invalid tool definition: {problem}", "tools")
        return tools

    @field_validator("tools", check_fields=False)
    @classmethod
    def _empty_tools_are_absent(cls, tools: Sequence[ToolSpec] | None) -> Sequence[ToolSpec] | None:
        return tools or None

    @model_validator(mode="after")
    def _check_semantics(self) -> ChatParams:
        seen_non_system = False
        for i, msg in enumerate(self.messages):
            if msg.role == "system" and seen_non_system:
                raise _semantic_error(
                    "System messages must appear before any non-system messages", f"messages.{i}.role"
                )
            seen_non_system = seen_non_system or msg.role != "system"
        _check_tool_turns(self.messages)
        self._check_tools()
        return self

    def _check_tools(self) -> None:
        names: set[str] = set()
        for i, tool in enumerate(self.tools or ()):
            if tool.function.name in names:
                raise _semantic_error(
                    f"Invalid tool definition: duplicate tool name '{tool.function.name}'",
                    f"tools.{i}.function.name",
                )
            names.add(tool.function.name)
        choice = self.tool_choice
        if (choice == "required" or isinstance(choice, ToolChoiceFunction)) and not names:
            raise _semantic_error("tool_choice requires tools", "tool_choice")
        if isinstance(choice, ToolChoiceFunction) and choice.function.name not in names:
            raise _semantic_error(
                f"tool_choice names unknown tool '{choice.function.name}'", "tool_choice.function.name"
            )


class ChatRequest(ChatParams):
    """POST /native/v1/chat/completions. The client names a tier; Sentinel picks the model."""

    model_config = ConfigDict(json_schema_extra={"examples": _REQUEST_EXAMPLES})

    messages: list[Message] = Field(min_length=1)
    tier: Tier = "simple"
    temperature: float | None = Field(default=None, ge=0, le=2)
    # MAX_COUNT, Sentinel's bound on any token count (the `/v1` output caps' too): one past it, on a
    # model whose maximum the catalogue does not know, was sent upstream as asked.
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_COUNT)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stop: Stop | None = None
    stream: bool = False
    conversation_id: str | None = Field(default=None, min_length=1, max_length=256)
    tools: list[ToolDefinition] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: ToolChoice | None = None

    @field_validator("conversation_id")
    @classmethod
    def _check_conversation_id(cls, value: str | None) -> str | None:
        if value is not None and CONTROL_CHARS.search(value):
            raise PydanticCustomError(
                "conversation_id", "conversation_id must not contain control characters"
            )
        return value

    @model_validator(mode="after")
    def _check_message_names(self) -> ChatRequest:
        """See MESSAGE_NAME_PATTERN (the `/v1` surfaces name one model, whose provider judges its names).
        The name of a tool an assistant message's call invokes is held to the tool definitions' rule
        (TOOL_NAME_PATTERN): a history replayed with a name a provider refuses was admitted, sent and
        refused upstream (OpenAI: the `tool_calls` function name's pattern; Anthropic: `tool_use.name`)."""
        for i, msg in enumerate(self.messages):
            if msg.name is not None and not _MESSAGE_NAME.fullmatch(msg.name):
                raise _semantic_error(
                    f"a message name must match {MESSAGE_NAME_PATTERN}"
                    " (letters, digits, '_' and '-'; no spaces), what every model of a tier accepts",
                    f"messages.{i}.name",
                )
            for j, call in enumerate(msg.tool_calls or ()):
                if not _TOOL_NAME.fullmatch(call.function.name):
                    param = f"messages.{i}.tool_calls.{j}.function.name"
                    raise _semantic_error(
                        f"a tool call's function name must match {TOOL_NAME_PATTERN}"
                        " (letters, digits, '_' and '-'), as a tool definition's name must", param,
                    )
        return self

    @model_validator(mode="after")
    def _check_image_count(self) -> ChatRequest:
        """See MAX_IMAGES: the image past it is refused, named."""
        seen = 0
        for i, msg in enumerate(self.messages):
            for j, part in enumerate(msg.content if isinstance(msg.content, list) else ()):
                if isinstance(part, ImagePart):
                    seen += 1
                    if seen > MAX_IMAGES:
                        raise _semantic_error(
                            f"a request may hold at most {MAX_IMAGES} images, what every model of a tier accepts",
                            f"messages.{i}.content.{j}.image_url",
                        )
        return self

    @model_validator(mode="after")
    def _check_one_sampling_knob(self) -> ChatRequest:
        """See `sampling_knobs_refused`: refused for every model of a tier alike, rather than one of
        them dropped for some models only."""
        refused = sampling_knobs_refused(self, "some models of a tier")
        if refused is not None:
            raise _semantic_error(*refused)
        return self


def sampling_knobs_refused(req: ChatParams, refusing: str) -> tuple[str, str] | None:
    """(message, param) when `req` sets both `temperature` and `top_p`, else None; `refusing` names
    the models that refuse the pair. Anthropic's newer models (Claude 4.5 and later, Opus 4.1) refuse
    the two together ("`temperature` and `top_p` cannot both be specified for this model"), and OpenAI
    and Anthropic both advise altering one. The one rule of the Native API (every tier: `ChatRequest`)
    and of a `/v1` request translated to Anthropic (`anthropic.build_anthropic_model_request`); a
    relayed `/v1` request's provider judges it."""
    if req.temperature is None or req.top_p is None:
        return None
    return f"set temperature or top_p, not both: {refusing} refuse the two together", "top_p"

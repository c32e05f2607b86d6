"""Jinja chat templates, rendered the way llama-server renders them.

llama.cpp renders chat templates with its own Jinja engine (common/jinja), written
to agree with Hugging Face's: jinja2's ImmutableSandboxedEnvironment with
`trim_blocks`, `lstrip_blocks`, the `loopcontrols` extension, `raise_exception`,
`strftime_now` and a `tojson` that keeps non-ASCII text. This module sets jinja2 up
that way, plus the places where llama.cpp's engine differs from jinja2 and the
templates llama.cpp ships rely on it: `list.append` and `list.pop`, an undefined
value that chains and concatenates as an empty string (so does none with `+`),
`map`/`select` results that are lists, `|safe` as plain text, transformers'
`{% generation %}` block, and what `{{ value }}` prints (nothing for none or a
mapping, a list's items run together).

It also finds a template's capabilities as llama.cpp does (common/jinja/caps.cpp):
by rendering probe conversations and watching which of their values the template
reads. Those capabilities decide how messages are handed to the template (a string
or typed parts, arguments as text or as an object, a system message or not).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.meta
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment


class ChatTemplateError(ValueError):
    """The messages cannot be formatted with this template (a one-line message)."""


def one_line(text: str) -> str:
    return " ".join(str(text).split())


# ------------------------------------------------------------ what templates can call


class TemplateRaised(jinja2.TemplateError):
    """The template called raise_exception(message)."""


def raise_exception(message: str) -> None:
    raise TemplateRaised(message)


def strftime_now(format: str) -> str:
    """The local time, formatted (Llama 3.x templates print today's date with it)."""
    return datetime.now().strftime(format)


def _json_default(value: object) -> object:
    # What jinja2 hands around that JSON does not know: `map`/`select` results kept
    # lazy by a template, and undefined values (llama.cpp writes them as null).
    if isinstance(value, jinja2.Undefined):
        return None
    if isinstance(value, Iterable) and not isinstance(value, (str, bytes, Mapping)):
        return list(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | str | None = None,
    separators: tuple[str, str] | list[str] | None = None,
    sort_keys: bool = False,
) -> str:
    """Hugging Face's `tojson`: json.dumps with its keywords, non-ASCII kept by default."""
    return json.dumps(
        value,
        ensure_ascii=ensure_ascii,
        indent=indent,
        separators=tuple(separators) if separators is not None else None,  # type: ignore[arg-type]
        sort_keys=sort_keys,
        default=_json_default,
    )


class LenientUndefined(jinja2.ChainableUndefined):
    """llama.cpp's undefined: attributes of it are undefined too, and `+` with a
    string treats it as empty (templates concatenate optional fields)."""

    def __add__(self, other: object) -> Any:
        if isinstance(other, str):
            return other
        return self._fail_with_undefined_error()

    def __radd__(self, other: object) -> Any:
        if isinstance(other, str):
            return other
        return self._fail_with_undefined_error()


class GenerationBlock(jinja2.ext.Extension):
    """transformers' `{% generation %}...{% endgeneration %}` (it marks the assistant's
    tokens for training): rendered as its body, as llama.cpp and transformers do."""

    tags = {"generation"}

    def parse(self, parser: Any) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body, lineno=lineno)


def _as_list(filter_function: Callable[..., Any]) -> Callable[..., Any]:
    """jinja2's map/select/... return generators; llama.cpp's return arrays, which
    templates then index, measure with |length or pass to |tojson."""

    def listed(*args: Any, **kwargs: Any) -> Any:
        return list(filter_function(*args, **kwargs))

    pass_arg = getattr(filter_function, "jinja_pass_arg", None)
    if pass_arg is not None:
        listed.jinja_pass_arg = pass_arg  # type: ignore[attr-defined]
    return listed


def printed(value: Any) -> Any:
    """What `{{ value }}` writes, as llama.cpp's engine writes it: nothing for none,
    undefined or a mapping, a list's items one after the other, a float in C's
    fixed notation; strings and the rest as jinja2 writes them."""
    if value is None or isinstance(value, (jinja2.Undefined, Mapping)):
        return ""
    if isinstance(value, (list, tuple)):
        return "".join(str(printed(item)) for item in value)
    if isinstance(value, float) and value == value and abs(value) != float("inf"):
        text = f"{value:f}".rstrip("0")
        return text + "0" if text.endswith(".") else text
    return value


def plain_text(value: Any) -> str:
    """`|safe`: llama.cpp has no markup, so no escaping of what is later added to it."""
    return str(value)


LIST_FILTERS = ("map", "select", "reject", "selectattr", "rejectattr")
# llama.cpp's arrays have these two in-place methods; chat templates (Kimi K2) use them.
LIST_METHODS = frozenset({"append", "pop"})


class ChatTemplateEnvironment(ImmutableSandboxedEnvironment):
    """jinja2 as transformers sets it up, with llama.cpp's leniencies."""

    intercepted_binops = frozenset({"+"})

    def __init__(self, **options: Any) -> None:
        options.setdefault("finalize", printed)
        super().__init__(
            trim_blocks=True,
            lstrip_blocks=True,
            extensions=[jinja2.ext.loopcontrols, GenerationBlock],
            undefined=LenientUndefined,
            **options,
        )
        self.filters["tojson"] = tojson
        self.filters["safe"] = plain_text
        for name in LIST_FILTERS:
            self.filters[name] = _as_list(self.filters[name])
        self.globals["raise_exception"] = raise_exception
        self.globals["strftime_now"] = strftime_now

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if isinstance(obj, list) and attr in LIST_METHODS:
            return True
        return super().is_safe_attribute(obj, attr, value)

    def call_binop(self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any) -> Any:
        # llama.cpp concatenates null with a string as if it were empty.
        if operator == "+":
            if left is None and isinstance(right, str):
                return right
            if right is None and isinstance(left, str):
                return left
        return super().call_binop(context, operator, left, right)


# ------------------------------------------------------------ compiled templates


class JinjaTemplate:
    """One template's source, compiled, with its capabilities."""

    def __init__(self, source: str, environment: ChatTemplateEnvironment | None = None) -> None:
        self.source = source
        try:
            self._template = (environment or ChatTemplateEnvironment()).from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise ChatTemplateError(
                f"the chat template does not compile: {one_line(exc.message or '')} (line {exc.lineno})"
            ) from None
        self.caps = detect_caps(source)

    def render(self, context: Mapping[str, Any]) -> str:
        try:
            return self._template.render(**context)
        except TemplateRaised as exc:
            raise ChatTemplateError(
                one_line(exc.message or "the chat template raised an exception")
            ) from None
        except jinja2.TemplateError as exc:
            raise ChatTemplateError(
                f"the chat template failed: {one_line(exc.message or str(exc))}"
            ) from None
        except (TypeError, ValueError, KeyError, IndexError, AttributeError, ArithmeticError) as exc:
            # A template's own mistakes (`'a' + 1`, `x[9]`) reach Python as these.
            raise ChatTemplateError(
                f"the chat template failed: {type(exc).__name__}: {one_line(str(exc))}"
            ) from None
        except RecursionError:
            raise ChatTemplateError("the chat template failed: it recursed too deep") from None


# ------------------------------------------------------------ capabilities


@dataclass(frozen=True)
class TemplateCaps:
    """What a template does with its inputs (llama.cpp's `chat_template_caps`)."""

    supports_string_content: bool = True
    supports_typed_content: bool = False
    supports_tools: bool = True
    supports_tool_calls: bool = True
    supports_parallel_tool_calls: bool = True
    supports_system_role: bool = True
    supports_preserve_reasoning: bool = False
    supports_reasoning_effort: bool = False
    supports_object_arguments: bool = False

    def to_json(self) -> dict[str, bool]:
        return asdict(self)


class _Usage:
    """Which probe values a render read, and how (llama.cpp's value stats)."""

    def __init__(self) -> None:
        self.used: set[int] = set()
        self.ops: dict[int, set[str]] = {}

    def track(self, value: Any) -> Any:
        tracked: _Tracked
        if isinstance(value, str):
            tracked = _TrackedStr(value)
        elif isinstance(value, dict):
            tracked = _TrackedDict({key: self.track(item) for key, item in value.items()})
        elif isinstance(value, list):
            tracked = _TrackedList(self.track(item) for item in value)
        else:
            return value
        tracked.usage = self
        return tracked

    def was_used(self, value: object) -> bool:
        return id(value) in self.used

    def had(self, value: object, *ops: str) -> bool:
        return bool(self.ops.get(id(value), set()) & set(ops))


class _Tracked:
    usage: _Usage


def _touch(value: object, op: str | None = None, deep: bool = False) -> None:
    if isinstance(value, _Tracked):
        value.usage.used.add(id(value))
        if op:
            value.usage.ops.setdefault(id(value), set()).add(op)
    if deep:  # through plain containers too: `tools | map(attribute='function') | tojson`
        # The plain methods: the tracked ones would record this walk as the template's.
        children: Iterable[object] = ()
        if isinstance(value, dict):
            children = dict.values(value)
        elif isinstance(value, list):
            children = list.__iter__(value)
        for child in children:
            _touch(child, deep=True)


class _TrackedStr(_Tracked, str):
    # llama.cpp marks a value read whenever a variable holding it is evaluated; jinja2
    # keeps local variables out of reach, so a string records what is done with it.
    def __iter__(self) -> Iterator[str]:
        # llama.cpp cannot loop over a string: a template that does treats content as parts.
        _touch(self, "array_access")
        raise TypeError("a string is not iterable")

    def __str__(self) -> str:
        _touch(self)
        return str.__str__(self)

    def __add__(self, other: str) -> str:
        _touch(self)
        return str.__add__(self, other)

    def __radd__(self, other: str) -> str:
        _touch(self)
        return str.__add__(other, self)

    def __mod__(self, other: object) -> str:
        _touch(self)
        return str.__mod__(self, other)

    def __eq__(self, other: object) -> bool:
        _touch(self)
        return str.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        _touch(self)
        return str.__ne__(self, other)

    def __hash__(self) -> int:
        return str.__hash__(self)

    def __len__(self) -> int:
        _touch(self)
        return str.__len__(self)

    def __contains__(self, other: object) -> bool:
        _touch(self)
        return str.__contains__(self, other)  # type: ignore[operator]


class _TrackedList(_Tracked, list):
    def __iter__(self) -> Iterator[Any]:
        _touch(self, "array_access")
        return list.__iter__(self)


class _TrackedDict(_Tracked, dict):
    def __iter__(self) -> Iterator[Any]:
        _touch(self, "object_access")
        return dict.__iter__(self)

    # A template that walks an object's items uses its values (Qwen3-Coder's arguments).
    def items(self) -> Any:
        _touch_children(self)
        return dict.items(self)

    def values(self) -> Any:
        _touch_children(self)
        return dict.values(self)

    def get(self, key: Any, default: Any = None) -> Any:
        _touch(self, "get")
        value = dict.get(self, key, default)
        _touch(value)
        return value


def _touch_children(value: dict[Any, Any]) -> None:
    _touch(value, "object_access")
    for child in dict.values(value):
        _touch(child)


DEEP_FILTERS = frozenset({"tojson", "string", "pprint"})
CHILDREN_FILTERS = frozenset({"items", "dictsort"})


def _tracking(kind: str, name: str, function: Any) -> Callable[..., Any]:
    """A filter or test that records its input's use, as llama.cpp's runtime does."""
    pass_arg = getattr(function, "jinja_pass_arg", None)
    op = f"test_is_{name}" if kind == "test" else name

    position = 1 if pass_arg is not None else 0
    deep = kind == "filter" and name in DEEP_FILTERS

    def tracked(*args: Any, **kwargs: Any) -> Any:
        value = args[position] if len(args) > position else None
        _touch(value, op, deep=deep)
        if kind == "filter" and name in CHILDREN_FILTERS and isinstance(value, dict):
            _touch_children(value)
        if deep:
            # Serialized as plain values: the serializer's own walk is not the template's.
            args = (*args[:position], _plain(value), *args[position + 1 :])
        return function(*args, **kwargs)

    if pass_arg is not None:
        tracked.jinja_pass_arg = pass_arg  # type: ignore[attr-defined]
    return tracked


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in dict.items(value)}
    if isinstance(value, list):
        return [_plain(item) for item in list.__iter__(value)]
    if isinstance(value, str):
        return str.__str__(value)
    return value


def _touch_output(value: Any) -> Any:
    _touch(value)
    return printed(value)


class _ProbeEnvironment(ChatTemplateEnvironment):
    """Renders probes, recording every read of a tracked value."""

    def __init__(self) -> None:
        super().__init__(finalize=_touch_output)
        self.filters = {name: _tracking("filter", name, f) for name, f in self.filters.items()}
        self.tests = {name: _tracking("test", name, t) for name, t in self.tests.items()}

    def getitem(self, obj: Any, argument: Any) -> Any:
        result = super().getitem(obj, argument)
        _accessed(obj, argument, result)
        return result

    def getattr(self, obj: Any, attribute: str) -> Any:
        result = super().getattr(obj, attribute)
        _accessed(obj, attribute, result)
        return result


def _accessed(obj: object, key: object, result: object) -> None:
    if isinstance(key, str) and not isinstance(obj, dict) and callable(result):
        _touch(obj, key)  # a method: `content.startswith(...)`
    elif isinstance(key, int) and not isinstance(key, bool):
        _touch(obj, "array_access")
    else:
        _touch(obj, "object_access")
    _touch(result)


STRING_MARKER = "STRING_MARKER"
REASONING_MARKER = "<REASONING_CONTENT_PLACEHOLDER>"
PROBE_TOOLS = [
    {
        "name": "tool",
        "type": "function",
        "function": {
            "name": "tool1",
            "description": "Tool description",
            "parameters": {
                "type": "object",
                "properties": {"arg": {"type": "string", "description": "Arg description"}},
                "required": ["arg"],
            },
        },
    }
]


def _tool_conversation(arguments: object, calls: int = 1) -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": "User message"},
        {
            "role": "assistant",
            "content": "",  # some templates expect empty content beside tool calls
            "tool_calls": [
                {
                    "id": f"call0000{n + 1}",
                    "type": "function",
                    "function": {"name": "tool1", "arguments": arguments},
                }
                for n in range(calls)
            ],
        },
        {"role": "tool", "content": "Tool response", "tool_call_id": "call00001"},
        {"role": "assistant", "content": "The tool response was 'tool response'"},
        {"role": "user", "content": "User message"},
    ]


class _Prober:
    def __init__(self, source: str) -> None:
        self._template = _ProbeEnvironment().from_string(source)

    def run(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> tuple[_Usage, Any, Any, str | None]:
        """Render a probe: its usage record, the tracked messages and tools, and the
        output (None when the template failed, which capability checks ignore)."""
        usage = _Usage()
        tracked_messages = usage.track(messages)
        tracked_tools = usage.track(tools if tools is not None else [])
        context = {
            "messages": tracked_messages,
            "tools": tracked_tools,
            "bos_token": "",
            "eos_token": "",
            "add_generation_prompt": True,
            **(extra or {}),
        }
        try:
            output: str | None = self._template.render(**context)
        except Exception:  # noqa: BLE001 - a probe that fails tells what the template refuses
            output = None
        return usage, tracked_messages, tracked_tools, output


def detect_caps(source: str) -> TemplateCaps:
    """The capabilities llama.cpp's caps_get() finds, by the same probes."""
    try:
        prober = _Prober(source)
    except jinja2.TemplateError:
        return TemplateCaps()
    found: dict[str, bool] = {}

    # Content given as a string: does the template read it as a list of parts?
    usage, messages, _, output = prober.run([{"role": "user", "content": STRING_MARKER}])
    content = messages[0]["content"]
    checks_for_string = usage.had(content, "test_is_string")
    used_as_array = usage.had(content, "selectattr", "array_access")
    if used_as_array:
        found["supports_typed_content"] = True
    if output is None or (used_as_array and STRING_MARKER not in output):
        found["supports_string_content"] = False
    if checks_for_string:
        usage, messages, _, output = prober.run([{"role": "user", "content": []}])
        parts = messages[0]["content"]
        if usage.had(parts, "selectattr", "array_access") and output is not None:
            found["supports_typed_content"] = True

    # A system message: is its content read at all?
    usage, messages, _, _ = prober.run(
        [{"role": "system", "content": "System message"}, {"role": "user", "content": "User message"}]
    )
    if not usage.was_used(messages[0]["content"]):
        found["supports_system_role"] = False

    # Tool calls whose arguments are an object, then (if that tells nothing) a string.
    usage, messages, tools, output = prober.run(_tool_conversation({"arg": "value"}), PROBE_TOOLS)
    if output is not None:
        found.update(_tool_caps(usage, messages, tools))
        call = messages[1]["tool_calls"]
        if "supports_tool_calls" not in found and usage.was_used(call[0]["function"]["arguments"]["arg"]):
            found["supports_object_arguments"] = True
    if not found.get("supports_object_arguments"):
        usage, messages, tools, output = prober.run(_tool_conversation('{"arg": "value"}'), PROBE_TOOLS)
        if output is None:
            found["supports_tool_calls"] = found["supports_tools"] = False
        else:
            found.update(_tool_caps(usage, messages, tools))

    # Two calls in one message: is the second one read?
    arguments: object = {"arg": "value"} if found.get("supports_object_arguments") else '{"arg": "value"}'
    usage, messages, _, output = prober.run(_tool_conversation(arguments, calls=2), PROBE_TOOLS)
    if output is None or not usage.was_used(messages[1]["tool_calls"][1]["function"]):
        found["supports_parallel_tool_calls"] = False

    # Reasoning kept in earlier assistant turns, when asked to preserve it.
    history = [
        {"role": "user", "content": "User message"},
        {"role": "assistant", "content": "Assistant message", "reasoning_content": REASONING_MARKER},
        {"role": "user", "content": "User message"},
        {"role": "assistant", "content": "Assistant message", "reasoning_content": "Reasoning content"},
        {"role": "user", "content": "User message"},
    ]
    _, _, _, output = prober.run(
        history, extra={"enable_thinking": True, **preserve_reasoning_variables(True)}
    )
    if output is not None and REASONING_MARKER in output:
        found["supports_preserve_reasoning"] = True

    # llama.cpp watches whether `reasoning_effort` is read while rendering; a
    # template names it only to read it.
    free_names = _free_variables(source)
    found["supports_reasoning_effort"] = bool(free_names & REASONING_EFFORT_VARIABLES)
    return TemplateCaps(**found)


def _tool_caps(usage: _Usage, messages: Any, tools: Any) -> dict[str, bool]:
    found: dict[str, bool] = {}
    if not usage.was_used(tools[0]["function"]["name"]):
        found["supports_tools"] = False
    if not usage.was_used(messages[1]["tool_calls"]):
        found["supports_tool_calls"] = False
    return found


def _free_variables(source: str) -> set[str]:
    environment = ChatTemplateEnvironment()
    return set(jinja2.meta.find_undeclared_variables(environment.parse(source)))


# ------------------------------------------------------------ reasoning variables

REASONING_EFFORT_VARIABLES = frozenset({"reasoning_effort", "reasoning_strength"})


def preserve_reasoning_variables(enabled: bool) -> dict[str, bool]:
    """The names templates use for keeping earlier turns' reasoning (llama.cpp sets them all)."""
    return {
        "preserve_thinking": enabled,
        "clear_thinking": not enabled,
        "truncate_history_thinking": not enabled,
        "drop_thinking": not enabled,
    }


def reasoning_effort_variables(effort: str) -> dict[str, str]:
    return dict.fromkeys(REASONING_EFFORT_VARIABLES, effort)

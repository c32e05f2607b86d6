"""Tool calls and reasoning read out of model text (runtime/server/toolcalls/).

The replies are llama.cpp's own test cases (tests/test-chat.cpp of the vendored tree)
and what the model families write; every case is also streamed, cut at every point,
and must add up to the reply parsed whole.
"""

from __future__ import annotations

import ctypes
import json
import math
import random
import re
from collections.abc import Callable, Iterator
from itertools import count
from pathlib import Path
from typing import Any, NamedTuple

import llama_cpp.llama_cpp as llama
import pytest

from llamapack.runtime.server.requests import BadRequest
from llamapack.runtime.server.toolcalls import (
    THINK,
    ChoiceMode,
    Delta,
    ParsedReply,
    ReasoningTags,
    ReplyParser,
    ToolCall,
    ToolFormat,
    accumulate,
    chat_tools,
    detect_format,
    detect_reasoning,
    generic_schema,
    grammar_triggers,
    opened_reasoning,
    parse,
    parse_tool_choice,
    parse_tools,
    prompt_messages,
    supports_parallel_calls,
    tool_grammar,
)
from llamapack.runtime.server.toolcalls.grammar import excluding_rules
from tests.support.llama_cpp_source import llama_cpp_templates

TOOL_NAMES = ("special_function", "special_function_with_opt", "python", "get_current_weather")


def tool(name: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    schema = {"type": "object", "properties": properties, "required": required}
    return {"type": "function", "function": {"name": name, "description": f"{name}.", "parameters": schema}}


SPECIAL = tool("special_function", {"arg1": {"type": "integer", "description": "The arg."}}, ["arg1"])
WITH_OPT = tool(
    "special_function_with_opt", {"arg1": {"type": "integer"}, "arg2": {"type": "integer"}}, ["arg1"]
)
PYTHON = tool("python", {"code": {"type": "string", "description": "The code to run."}}, ["code"])
WEATHER = tool("get_current_weather", {"location": {"type": "string"}}, ["location"])
TOOLS = parse_tools([SPECIAL, WITH_OPT, PYTHON, WEATHER])


def ids() -> Callable[[], str]:
    numbers = count(1)
    return lambda: f"call{next(numbers)}"


# ------------------------------------------------------------------ whole replies


class Case(NamedTuple):
    fmt: ToolFormat
    text: str
    content: str = ""
    reasoning: str = ""
    calls: tuple[tuple[str, str, str | None], ...] = ()  # name, arguments, the model's id
    options: dict[str, Any] = {}  # shared, never changed


ARG1 = '{"arg1": 1}'
SPECIAL_JSON = '{"name": "special_function", "arguments": {"arg1": 1}}'
OPT_JSON = '{"name": "special_function_with_opt", "arguments": {"arg1": 1, "arg2": 2}}'
CALL = ("special_function", ARG1, None)
OPT_CALL = ("special_function_with_opt", '{"arg1": 1, "arg2": 2}', None)
WEATHER_CALL = ("get_current_weather", '{"location": "Istanbul"}', None)
HELLO = "Hello, world!\nWhat's up?"
ANSWER = "The answer is 42."
THINKING = {"reasoning": THINK}
OPENED = {"reasoning": THINK, "reasoning_opened": "<think>\n"}
R1_CALL = (
    "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>special_function\n"
    '```json\n{"arg1": 1}```<｜tool▁call▁end｜><｜tool▁calls▁end｜>'
)
V31_CALL = (
    "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>special_function<｜tool▁sep｜>"
    '{"arg1": 1}<｜tool▁call▁end｜><｜tool▁calls▁end｜>'
)
MISTRAL_PARALLEL = (
    '[TOOL_CALLS]special_function[CALL_ID]000000001[ARGS]{"arg1": 1}'
    '[TOOL_CALLS]special_function_with_opt[CALL_ID]000000002[ARGS]{"arg1": 1, "arg2": 2}'
)
NOT_OFFERED = '<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call> ok'
CASES = [
    # Hermes 2 Pro / Hermes 3 / Qwen 2.5 (test-chat.cpp)
    Case(ToolFormat.HERMES, f"<tool_call>\n{SPECIAL_JSON}</tool_call>", calls=(CALL,)),
    Case(ToolFormat.HERMES, f"{HELLO}<tool_call>\n{SPECIAL_JSON}</tool_call>", HELLO, calls=(CALL,)),
    Case(
        ToolFormat.HERMES,
        f"<tool_call>\n{SPECIAL_JSON}\n</tool_call>\n<tool_call>\n{OPT_JSON}\n</tool_call>",
        calls=(CALL, OPT_CALL),
    ),
    Case(ToolFormat.HERMES, HELLO, HELLO),
    # A name the request does not offer: not a call (llama.cpp's parser matches the offered names only).
    Case(ToolFormat.HERMES, NOT_OFFERED, NOT_OFFERED),
    # Cut short by max_tokens: the arguments are closed, as llama.cpp's mapper closes them.
    Case(
        ToolFormat.HERMES,
        '<tool_call>\n{"name": "python", "arguments": {"code": "print(1)',
        calls=(("python", '{"code": "print(1)"}', None),),
    ),
    # ... and after whitespace, which streaming held back as the call went on.
    Case(
        ToolFormat.HERMES,
        '<tool_call>{"name": "python", "arguments": {"code": "x  ',
        calls=(("python", '{"code": "x"}', None),),
    ),
    # Arguments written as a string of JSON.
    Case(
        ToolFormat.HERMES,
        '<tool_call>{"name": "special_function", "arguments": "{\\"arg1\\": 1}"}</tool_call>',
        calls=(CALL,),
    ),
    # Qwen3 / QwQ: reasoning, then a call; the prompt may open the reasoning (QwQ: "<think>\n").
    Case(
        ToolFormat.HERMES,
        "<think>\nThe user wants weather.\n</think>\n\n<tool_call>\n"
        '{"name": "get_current_weather", "arguments": {"location": "Istanbul"}}\n</tool_call>',
        reasoning="The user wants weather.",
        calls=(WEATHER_CALL,),
        options=THINKING,
    ),
    Case(
        ToolFormat.HERMES,
        f"Let me think about this...\n</think>\n{ANSWER}",
        ANSWER,
        "Let me think about this...",
        options=OPENED,
    ),  # fmt: skip
    Case(ToolFormat.HERMES, "</think>Hello, world!", "Hello, world!", options=OPENED),
    # --reasoning-format none: the thoughts stay in the content, the prompt's opening tag too.
    Case(
        ToolFormat.HERMES,
        f"I think\n</think>\n{ANSWER}",
        f"<think>\nI think\n</think>\n{ANSWER}",
        options={**OPENED, "reasoning_format": "none"},
    ),
    # A reasoning block the reply never closes (max_tokens) is all reasoning.
    Case(ToolFormat.HERMES, "<think>Still thinking about", "", "Still thinking about", options=THINKING),
    # <think> later in the reply is content: reasoning opens the reply or not at all.
    Case(ToolFormat.HERMES, "Hi <think>x</think>", "Hi <think>x</think>", options=THINKING),
    # Llama 3.x: JSON that opens the reply, <|python_tag|> code.
    Case(ToolFormat.LLAMA_3, '{"name": "special_function", "parameters": {"arg1": 1}}', calls=(CALL,)),
    Case(
        ToolFormat.LLAMA_3,
        '{"type": "function", "name": "python", "parameters": {"code": "print(2)"}}',
        calls=(("python", '{"code": "print(2)"}', None),),
    ),
    Case(
        ToolFormat.LLAMA_3,
        '{"name": "special_function", "parameters": {"arg1": 1}}; '
        '{"name": "get_current_weather", "parameters": {"location": "Istanbul"}}',
        calls=(CALL, WEATHER_CALL),
    ),
    Case(
        ToolFormat.LLAMA_3,
        '<|python_tag|>print("hello world")',
        calls=(("python", '{"code": "print(\\"hello world\\")"}', None),),
    ),
    Case(ToolFormat.LLAMA_3, HELLO, HELLO),
    Case(ToolFormat.LLAMA_3, '{"a": 1} is JSON', '{"a": 1} is JSON'),
    # Mistral Nemo: the ids are the model's.
    Case(
        ToolFormat.MISTRAL_NEMO,
        '[TOOL_CALLS][{"name": "special_function", "arguments": {"arg1": 1}, "id": "123456789"}]',
        calls=(("special_function", ARG1, "123456789"),),
    ),
    Case(ToolFormat.MISTRAL_NEMO, HELLO, HELLO),
    # Mistral Small 3.2 / Devstral; Magistral with [THINK] reasoning.
    Case(
        ToolFormat.MISTRAL,
        MISTRAL_PARALLEL,
        calls=(("special_function", ARG1, "000000001"), (*OPT_CALL[:2], "000000002")),
    ),
    Case(ToolFormat.MISTRAL, HELLO + '[TOOL_CALLS]special_function[ARGS]{"arg1": 1}', HELLO, calls=(CALL,)),
    Case(
        ToolFormat.MISTRAL,
        '[THINK]Need arg1.[/THINK][TOOL_CALLS]special_function[ARGS]{"arg1": 1}',
        reasoning="Need arg1.",
        calls=(CALL,),
        options={"reasoning": ReasoningTags("[THINK]", "[/THINK]")},
    ),
    # Functionary v3.1, FireFunction v2.
    Case(ToolFormat.FUNCTIONARY_V3_1, '<function=special_function>{"arg1": 1}</function>', calls=(CALL,)),
    Case(ToolFormat.FIREFUNCTION_V2, f" functools[{SPECIAL_JSON}]", calls=(CALL,)),
    # DeepSeek R1: the prompt opens the reasoning. V3.1 names the function first.
    Case(ToolFormat.DEEPSEEK_R1, "I'm\nthinking</think>" + HELLO, HELLO, "I'm\nthinking", options=OPENED),
    Case(ToolFormat.DEEPSEEK_R1, "</think>" + R1_CALL, calls=(CALL,), options=OPENED),
    Case(ToolFormat.DEEPSEEK_R1, V31_CALL, calls=(CALL,)),
    # The generic format: the whole reply is one JSON object.
    Case(ToolFormat.GENERIC, f'{{"tool_call": {SPECIAL_JSON}}}', calls=(CALL,)),
    Case(
        ToolFormat.GENERIC,
        '{"tool_calls": [{"name": "special_function", "arguments": {"arg1": 1}, "id": "123456789"}]}',
        calls=(("special_function", ARG1, "123456789"),),
    ),
    Case(
        ToolFormat.GENERIC,
        '{"response": "Hello, world!\\nWhat\'s up? \\u00e9\\ud83d\\ude00"}',
        HELLO + " é😀",
    ),
    Case(ToolFormat.GENERIC, '{"response": {"a": [1, 2]}}', '{\n  "a": [\n    1,\n    2\n  ]\n}'),
    Case(ToolFormat.GENERIC, "Hello, world!", "Hello, world!"),
    # A format that is not read: everything is content.
    Case(
        ToolFormat.CONTENT_ONLY,
        f"<tool_call>{SPECIAL_JSON}</tool_call>",
        f"<tool_call>{SPECIAL_JSON}</tool_call>",
    ),
]


def parser_options(options: dict[str, Any]) -> dict[str, Any]:
    return {
        "reasoning_format": options.get("reasoning_format", "auto"),
        "reasoning": options.get("reasoning"),
        "reasoning_opened": options.get("reasoning_opened", ""),
    }


def run_case(fmt: ToolFormat, text: str, options: dict[str, Any]) -> ParsedReply:
    return parse(text, fmt, tools=TOOL_NAMES, new_id=ids(), **parser_options(options))


@pytest.mark.parametrize("case", CASES)
def test_reply_is_parsed(case: Case) -> None:
    reply = run_case(case.fmt, case.text, case.options)
    assert reply.content == case.content
    assert reply.reasoning_content == case.reasoning
    generated = (f"call{n}" for n in count(1))
    expected = [ToolCall(model_id or next(generated), name, args) for name, args, model_id in case.calls]
    assert reply.tool_calls == expected
    for call in reply.tool_calls:
        json.loads(call.arguments)  # clients load them


def test_without_tools_nothing_is_a_call() -> None:
    text = '<tool_call>{"name": "special_function", "arguments": {"arg1": 1}}</tool_call>'
    assert parse(text, ToolFormat.HERMES, tools=()) == ParsedReply(content=text)


def test_only_the_callable_tools_are_calls() -> None:
    text = '<tool_call>{"name": "python", "arguments": {"code": ""}}</tool_call>'
    assert parse(text, ToolFormat.HERMES, tools=["special_function"]).tool_calls == []


def test_ids_are_llama_servers_or_mistrals() -> None:
    reply = parse(
        '<tool_call>{"name": "python", "arguments": {}}</tool_call>', ToolFormat.HERMES, tools=["python"]
    )
    assert len(reply.tool_calls[0].id) == 32 and reply.tool_calls[0].id.isalnum()
    reply = parse('[TOOL_CALLS]python[ARGS]{"code": "1"}', ToolFormat.MISTRAL, tools=["python"])
    assert len(reply.tool_calls[0].id) == 9 and reply.tool_calls[0].id.isalnum()  # the template demands 9


def test_openai_shapes() -> None:
    text = (
        '<think>Weather.</think><tool_call>{"name": "get_current_weather", "arguments": {"location": "Oslo"}}'
    )
    reply = run_case(ToolFormat.HERMES, text, {"reasoning": THINK})
    assert reply.message() == {
        "role": "assistant",
        "content": "",
        "reasoning_content": "Weather.",
        "tool_calls": [{"id": "call1", "type": "function",
                        "function": {"name": "get_current_weather", "arguments": '{"location": "Oslo"}'}}],
    }  # fmt: skip
    assert reply.finish_reason == "tool_calls"
    assert ParsedReply(content="hi").message() == {"role": "assistant", "content": "hi"}
    assert ParsedReply(content="hi").finish_reason == "stop"
    assert Delta(reasoning_content="a").to_openai() == {"reasoning_content": "a"}


# ------------------------------------------------------------------ streaming


def stream(fmt: ToolFormat, pieces: list[str], options: dict[str, Any]) -> list[Delta]:
    parser = ReplyParser(fmt, tools=TOOL_NAMES, new_id=ids(), **parser_options(options))
    deltas = []
    for piece in pieces:
        deltas += parser.feed(piece)
    deltas += parser.finish()
    assert accumulate(deltas) == parser.reply
    return deltas


def cuttings(text: str, rng: random.Random) -> Iterator[list[str]]:
    yield [text]
    yield list(text)
    for cut in range(1, len(text)):
        yield [text[:cut], text[cut:]]
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(1, 8))))
        yield [text[start:end] for start, end in zip([0, *cuts], [*cuts, len(text)], strict=True)]


def assert_well_formed(deltas: list[Delta]) -> None:
    """A call's first delta has its index, id and name; the others only arguments."""
    announced: set[int] = set()
    for delta in deltas:
        piece = delta.tool_call
        if piece is None:
            assert delta.content or delta.reasoning_content
            continue
        if piece.index in announced:
            assert piece.id is None and piece.name is None and piece.arguments
        else:
            assert piece.index == len(announced) and piece.id and piece.name
            announced.add(piece.index)


@pytest.mark.parametrize("case", CASES)
def test_streamed_deltas_add_up_to_the_whole_reply(case: Case) -> None:
    whole = run_case(case.fmt, case.text, case.options)
    rng = random.Random(case.text)
    for pieces in cuttings(case.text, rng):
        deltas = stream(case.fmt, pieces, case.options)
        assert accumulate(deltas) == whole, pieces
        assert_well_formed(deltas)


# Fragments that meet markers, JSON and tags halfway, to fuzz the reader.
FRAGMENTS = [
    *("<tool_call>", "</tool_call>", "<tool_", "{", "}", "[", "]", '"', ",", ":", " ", "\n", "\\", "\\n"),
    *('"name"', '"arguments"', '"parameters"', '"id"', '"special_function"', '"python"', '"x"', "1", "tr"),
    *("true", ARG1, '{"code": "a\\"b"}', "\\u00e9", "<think>", "</think>", "</thi", "[TOOL_CALLS]", "[ARGS]"),
    *("[CALL_ID]", "special_function", "<|python_tag|>", "<function=", "</function>", ">", "hello"),
    *('"tool_call"', '"tool_calls"', '"response"', "function", "```json", "```"),
    *(
        "<｜tool▁calls▁begin｜>",
        "<｜tool▁call▁begin｜>",
        "<｜tool▁sep｜>",
        "<｜tool▁call▁end｜>",
        "<｜tool▁calls▁end｜>",
    ),
]


@pytest.mark.parametrize("fmt", list(ToolFormat))
def test_any_text_streams_as_it_parses(fmt: ToolFormat) -> None:
    """Split invariance on random text: whatever the model writes, the deltas add up to the parse."""
    rng = random.Random(fmt.value)
    for options in ({}, {"reasoning": THINK}, {"reasoning": THINK, "reasoning_opened": "<think>\n"}):
        for _ in range(40):
            text = "".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(1, 20)))
            whole = run_case(fmt, text, options)
            cuts = rng.sample(range(1, len(text)), min(len(text) - 1, 12)) if len(text) > 1 else []
            for pieces in [list(text), *([text[:cut], text[cut:]] for cut in cuts)]:
                deltas = stream(fmt, pieces, options)
                assert accumulate(deltas) == whole, (text, pieces)
                assert_well_formed(deltas)


def test_marker_starts_are_held_back() -> None:
    parser = ReplyParser(ToolFormat.HERMES, tools=TOOL_NAMES, new_id=ids())
    assert parser.feed("Sure. <tool") == [Delta(content="Sure. ")]
    assert parser.feed("_call>\n") == []
    assert parser.feed('{"name": "python", "argu') == []  # a call only once it names a tool
    first = parser.feed('ments": {"code": "pri')
    assert [delta.to_openai() for delta in first] == [{
        "tool_calls": [{"index": 0, "id": "call1", "type": "function",
                        "function": {"name": "python", "arguments": '{"code": "pri'}}]
    }]  # fmt: skip
    rest = parser.feed('nt(1)"}}\n</tool_call>')
    assert [delta.to_openai() for delta in rest] == [
        {"tool_calls": [{"index": 0, "function": {"arguments": 'nt(1)"}'}}]}
    ]
    assert parser.finish() == []
    assert parser.reply.content == "Sure. "


def test_a_false_start_is_content_when_it_proves_false() -> None:
    parser = ReplyParser(ToolFormat.HERMES, tools=TOOL_NAMES)
    assert parser.feed("a <tool_cal") == [Delta(content="a ")]
    assert parser.feed("m> b") == [Delta(content="<tool_calm> b")]


def test_reasoning_streams_before_its_end_tag_is_complete() -> None:
    parser = ReplyParser(ToolFormat.HERMES, tools=TOOL_NAMES, reasoning=THINK, reasoning_opened="<think>\n")
    assert parser.feed("Step one. ") == [Delta(reasoning_content="Step one.")]  # trailing space held back
    assert parser.feed("Two</th") == [Delta(reasoning_content=" Two")]
    assert parser.feed("ink>\n\nDone") == [Delta(content="Done")]


def test_ids_that_follow_the_arguments_hold_the_first_delta() -> None:
    """Nemo writes the id last: the call's first delta waits for it, so it carries the model's id."""
    text = '[TOOL_CALLS][{"name": "special_function", "arguments": {"arg1": 1}, "id": "abcdefghi"}]'
    deltas = stream(ToolFormat.MISTRAL_NEMO, list(text), {})
    assert [d.tool_call.id for d in deltas if d.tool_call] == ["abcdefghi"]


# ------------------------------------------------------------------ detection

KNOWN = {
    "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use": (ToolFormat.HERMES, None),
    "NousResearch-Hermes-3-Llama-3.1-8B-tool_use": (ToolFormat.HERMES, None),
    "Qwen-Qwen2.5-7B-Instruct": (ToolFormat.HERMES, None),
    "Qwen-QwQ-32B": (ToolFormat.HERMES, THINK),
    "Qwen-Qwen3-0.6B": (ToolFormat.HERMES, THINK),
    "MiMo-VL": (ToolFormat.HERMES, None),
    "ibm-granite-granite-4.0": (ToolFormat.HERMES, None),
    "meta-llama-Llama-3.1-8B-Instruct": (ToolFormat.LLAMA_3, None),
    "meta-llama-Llama-3.2-3B-Instruct": (ToolFormat.LLAMA_3, None),
    "meta-llama-Llama-3.3-70B-Instruct": (ToolFormat.LLAMA_3, None),
    "mistralai-Mistral-Nemo-Instruct-2407": (ToolFormat.MISTRAL_NEMO, None),
    "Mistral-Small-3.2-24B-Instruct-2506": (ToolFormat.MISTRAL, None),
    "unsloth-mistral-Devstral-Small-2507": (ToolFormat.MISTRAL, None),
    "mistralai-Ministral-3-14B-Reasoning-2512": (ToolFormat.MISTRAL, ReasoningTags("[THINK]", "[/THINK]")),
    "meetkai-functionary-medium-v3.1": (ToolFormat.FUNCTIONARY_V3_1, None),
    "fireworks-ai-llama-3-firefunction-v2": (ToolFormat.FIREFUNCTION_V2, None),
    "deepseek-ai-DeepSeek-R1-Distill-Llama-8B": (ToolFormat.DEEPSEEK_R1, THINK),
    "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B": (ToolFormat.DEEPSEEK_R1, THINK),
    "llama-cpp-deepseek-r1": (ToolFormat.DEEPSEEK_R1, THINK),
    "google-gemma-2-2b-it": (ToolFormat.GENERIC, None),
    "microsoft-Phi-3.5-mini-instruct": (ToolFormat.GENERIC, None),
    # Calls in XML or markup of their own: rendered by the template, left in the text.
    "Qwen3-Coder": (ToolFormat.CONTENT_ONLY, None),
    "Qwen3.5-4B": (ToolFormat.CONTENT_ONLY, THINK),
    "GLM-4.6": (ToolFormat.CONTENT_ONLY, THINK),
    "openai-gpt-oss-120b": (ToolFormat.CONTENT_ONLY, None),
    "unsloth-Apriel-1.5": (ToolFormat.CONTENT_ONLY, None),
    "CohereForAI-c4ai-command-r7b-12-2024-tool_use": (
        ToolFormat.CONTENT_ONLY, ReasoningTags("<|START_THINKING|>", "<|END_THINKING|>")),
}  # fmt: skip


def test_every_template_of_llama_cpp_is_detected() -> None:
    sources = llama_cpp_templates()
    assert len(sources) > 60 and KNOWN.keys() <= sources.keys()
    for name, source in sources.items():
        fmt, tags = detect_format(source), detect_reasoning(source)
        if name in KNOWN:
            assert (fmt, tags) == KNOWN[name], name
        # A template that renders tools never gets the generic format (it would contradict it).
        assert fmt is not ToolFormat.GENERIC or "tools" not in source, name
    assert supports_parallel_calls(sources["Qwen-Qwen2.5-7B-Instruct"])
    assert not supports_parallel_calls(sources["meta-llama-Llama-3.1-8B-Instruct"])


def test_detection_without_a_template() -> None:
    assert detect_format(None) is ToolFormat.GENERIC  # a llama.cpp built-in template knows no tools
    assert detect_reasoning(None) is None
    assert detect_format("{{ messages[0].content }}") is ToolFormat.GENERIC


def test_the_prompt_can_open_the_reasoning() -> None:
    assert opened_reasoning("<｜Assistant｜><think>\n", THINK) == "<think>\n"
    assert opened_reasoning("<|im_start|>assistant\n<think>\n\n</think>\n\n", THINK) == ""  # thinking off
    assert opened_reasoning("<|im_start|>assistant\n", THINK) == ""
    assert opened_reasoning("<think>\n", None) == ""


# ------------------------------------------------------------------ tools and tool_choice


@pytest.mark.parametrize(
    ("tools", "message"),
    [
        ({"type": "function"}, "'tools' must be an array"),
        ([{"function": {"name": "f"}}], "'tools[0]' is missing 'type'"),
        ([{"type": "code_interpreter"}], "unsupported type"),
        ([{"type": "function"}], "missing its 'function'"),
        ([{"type": "function", "function": {"description": "no name"}}], "needs a 'name'"),
        ([{"type": "function", "function": {"name": "f", "parameters": []}}], "JSON schema object"),
        ([SPECIAL, SPECIAL], "repeats the function name"),
    ],
)
def test_bad_tools_are_bad_requests(tools: Any, message: str) -> None:
    with pytest.raises(BadRequest, match=re.escape(message)) as caught:
        parse_tools(tools)
    assert caught.value.param == "tools"


@pytest.mark.parametrize(
    ("choice", "message"),
    [
        ("sometimes", "Invalid tool_choice: sometimes"),
        ({"type": "function", "function": {"name": "nope"}}, "a function not in 'tools': 'nope'"),
        ({"type": "function"}, "needs a 'name'"),
        ({"type": "tool", "name": "python"}, "must be 'auto', 'none', 'required'"),
    ],
)
def test_bad_tool_choices_are_bad_requests(choice: Any, message: str) -> None:
    with pytest.raises(BadRequest, match=re.escape(message)) as caught:
        parse_tool_choice(choice, TOOLS)
    assert caught.value.param == "tool_choice"


def test_required_needs_tools() -> None:
    with pytest.raises(BadRequest, match="no 'tools'"):
        parse_tool_choice("required", [])


def test_choices() -> None:
    assert parse_tool_choice(None, TOOLS).mode is ChoiceMode.AUTO
    named = parse_tool_choice({"type": "function", "function": {"name": "python"}}, TOOLS)
    assert named.required and [t.name for t in named.callable_tools(TOOLS)] == ["python"]
    assert parse_tool_choice("none", TOOLS).callable_tools(TOOLS) == []
    assert parse_tools([tool("f", {}, [])] + [{"type": "function", "function": {"name": "g"}}])[1].schema == {
        "type": "object", "properties": {}}  # fmt: skip


def test_a_request_plan() -> None:
    qwen = "{% for t in tools %}{{ t | tojson }}{% endfor %}<tool_call>\n<think>"
    plan = chat_tools(qwen, [SPECIAL, PYTHON], {"type": "function", "function": {"name": "python"}})
    assert (plan.format, plan.reasoning, plan.parallel) == (ToolFormat.HERMES, THINK, True)
    assert [t["function"]["name"] for t in plan.template_tools() or []] == ["special_function", "python"]
    reply = '<tool_call>{"name": "special_function", "arguments": {"arg1": 1}}</tool_call>'
    parser = plan.parser("<|im_start|>assistant\n", "auto")
    parser.feed(reply)
    parser.finish()
    assert parser.reply.tool_calls == []  # the named function only
    assert plan.grammar("<|im_start|>assistant\n") is not None
    none = chat_tools(qwen, [SPECIAL], "none")
    # The template still shows the tools under "none", as llama-server; nothing constrains or parses calls.
    assert none.template_tools() == [SPECIAL] and none.grammar("") is None
    assert none.messages([{"role": "user", "content": "hi"}]) == [{"role": "user", "content": "hi"}]
    assert chat_tools(qwen, None).template_tools() is None
    gemma = "{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}"
    generic = chat_tools(gemma, [SPECIAL])
    assert generic.format is ToolFormat.GENERIC and generic.template_tools() is None
    assert "special_function" in generic.messages([{"role": "user", "content": "hi"}])[0]["content"]
    assert chat_tools(gemma, [SPECIAL], generic=False).format is ToolFormat.CONTENT_ONLY


# ------------------------------------------------------------------ prompt


def test_generic_prompt_is_llama_cpps() -> None:
    """The texts minja and common_chat_params_init_generic add, for a template without tools."""
    messages = [{"role": "system", "content": "You are a bot."}, {"role": "user", "content": "I need help"}]
    arg1 = {"type": "integer", "description": "The arg."}
    parameters = {"type": "object", "properties": {"arg1": arg1}, "required": ["arg1"]}
    function = {"name": "special_function", "description": "I'm special", "parameters": parameters}
    special = parse_tools([{"type": "function", "function": function}])
    system = prompt_messages(messages, ToolFormat.GENERIC, special, template_describes_tools=False)[0]
    assert system == {"role": "system", "content": (
        "You are a bot.\n\n"
        "Respond in JSON format, either with `tool_call` (a request to call tools) or with `response` "
        "reply to the user's request\n\n"
        "You can call any of the following tools to satisfy the user's requests: [\n"
        '  {\n    "type": "function",\n    "function": {\n      "name": "special_function",\n'
        '      "description": "I\'m special",\n      "parameters": {\n        "type": "object",\n'
        '        "properties": {\n          "arg1": {\n            "type": "integer",\n'
        '            "description": "The arg."\n          }\n        },\n        "required": [\n'
        '          "arg1"\n        ]\n      }\n    }\n  }\n]\n\n'
        "Example tool call syntax:\n\n"
        '{\n  "tool_calls": [\n    {\n      "name": "tool_name",\n      "arguments": {\n'
        '        "arg1": "some_value"\n      },\n      "id": "call_1___"\n    }\n  ]\n}\n\n')}  # fmt: skip


def test_generic_prompt_writes_calls_and_results_out() -> None:
    call = {"name": "calculate", "arguments": '{"expression":"sin(30 * pi / 180)"}'}
    history: list[dict[str, Any]] = [
        {"role": "user", "content": "y at 30 degrees?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "call_6789", "type": "function", "function": call}],
        },
        {"role": "tool", "name": "calculate", "content": "0.55644242476", "tool_call_id": "call_6789"},
    ]
    written = prompt_messages(history, ToolFormat.GENERIC, [], template_describes_tools=False)
    assert written[1] == {"role": "assistant", "content": (
        '{\n  "tool_calls": [\n    {\n      "name": "calculate",\n      "arguments": {\n'
        '        "expression": "sin(30 * pi / 180)"\n      },\n'
        '      "id": "call_6789"\n    }\n  ]\n}')}  # fmt: skip
    assert written[2] == {"role": "user", "tool_call_id": "call_6789", "content": (
        '{\n  "tool_response": {\n    "tool": "calculate",\n    "content": "0.55644242476",\n'
        '    "tool_call_id": "call_6789"\n  }\n}')}  # fmt: skip


def test_native_templates_render_tools_themselves() -> None:
    messages = [{"role": "user", "content": "hi"}]
    assert prompt_messages(messages, ToolFormat.HERMES, TOOLS, template_describes_tools=True) == messages
    # DeepSeek R1's template renders calls but not the tools: they are described, with its syntax.
    added = prompt_messages(messages, ToolFormat.DEEPSEEK_R1, TOOLS, template_describes_tools=False)[0]
    assert added["role"] == "system" and "<｜tool▁sep｜>tool_name\n```json" in added["content"]


# ------------------------------------------------------------------ grammars

REQUIRED = parse_tool_choice("required", TOOLS)
AUTO = parse_tool_choice("auto", TOOLS)


def parses(grammar: str) -> bool:
    """llama.cpp's own GBNF parser accepts it (no vocabulary needed to parse)."""
    sampler = llama.llama_sampler_init_grammar(None, grammar.encode(), b"root")
    if not sampler:
        return False
    llama.llama_sampler_free(sampler)
    return True


@pytest.mark.parametrize("fmt", [fmt for fmt in ToolFormat if fmt is not ToolFormat.CONTENT_ONLY])
@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize(("reasoning", "opened"), [(None, False), (THINK, False), (THINK, True)])
def test_required_calls_have_a_grammar_llama_cpp_parses(
    fmt: ToolFormat, parallel: bool, reasoning: ReasoningTags | None, opened: bool
) -> None:
    grammar = tool_grammar(fmt, TOOLS, REQUIRED, parallel, reasoning=reasoning, reasoning_opened=opened)
    assert grammar is not None and parses(grammar)
    assert all(name in grammar for name in TOOL_NAMES)
    assert ("reasoning" in grammar) == (reasoning is not None and fmt is not ToolFormat.GENERIC)


def test_which_requests_get_a_grammar() -> None:
    assert tool_grammar(ToolFormat.HERMES, TOOLS, AUTO, True) is None  # llama.cpp's is lazy: we have none
    assert tool_grammar(ToolFormat.CONTENT_ONLY, TOOLS, REQUIRED, True) is None
    assert tool_grammar(ToolFormat.GENERIC, TOOLS, parse_tool_choice("none", TOOLS), True) is None
    generic = tool_grammar(ToolFormat.GENERIC, TOOLS, AUTO, False)
    assert generic is not None and parses(generic) and "response" in generic
    named = parse_tool_choice({"type": "function", "function": {"name": "python"}}, TOOLS)
    only_python = tool_grammar(ToolFormat.HERMES, TOOLS, named, False)
    assert only_python is not None and "python" in only_python and "special_function" not in only_python


@pytest.mark.parametrize("fmt", list(ToolFormat))
def test_lazy_grammars_for_auto(fmt: ToolFormat) -> None:
    """For auto, once the engine has trigger words: no reasoning (it comes before the trigger)."""
    grammar = tool_grammar(fmt, TOOLS, AUTO, True, reasoning=THINK, lazy=True)
    if fmt is ToolFormat.GENERIC:
        assert grammar is not None and not grammar_triggers(fmt)  # always a full grammar
    elif not grammar_triggers(fmt):
        assert grammar is None
    else:
        assert grammar is not None and parses(grammar) and "reasoning" not in grammar


def test_generic_schema_is_llama_cpps() -> None:
    weather = parse_tools([WEATHER])
    assert generic_schema(weather, required=True, parallel=False) == {
        "type": "object",
        "properties": {"tool_call": {
            "type": "object",
            "properties": {"name": {"type": "string", "const": "get_current_weather"},
                           "arguments": WEATHER["function"]["parameters"]},
            "required": ["name", "arguments"],
            "description": "get_current_weather."}},
        "required": ["tool_call"],
    }  # fmt: skip
    parallel = generic_schema(weather, required=False, parallel=True)
    calls, response = parallel["anyOf"]
    assert calls["properties"]["tool_calls"]["items"]["required"] == ["name", "arguments", "id"]
    assert response == {
        "type": "object",
        "properties": {"response": {"type": "string"}},
        "required": ["response"],
    }


def class_members(char_class: str) -> tuple[set[str], bool]:
    """The characters of a GBNF class as excluding_rules writes them: letters, digits, \\xHH, \\uHHHH."""
    body, negate = char_class[1:-1], char_class.startswith("[^")
    body = body[1:] if negate else body
    members, i = set(), 0
    while i < len(body):
        if body[i] == "\\":
            width = {"x": 2, "u": 4, "U": 8}[body[i + 1]]
            members.add(chr(int(body[i + 2 : i + 2 + width], 16)))
            i += 2 + width
        else:
            members.add(body[i])
            i += 1
    return members, negate


def test_reasoning_text_never_holds_its_end_tag() -> None:
    """The excluding rules, run as the automaton they describe."""
    rules = excluding_rules("r", "</think>")

    def accepts(text: str) -> bool:
        state = "r"
        for char in text:
            for alternative in filter(None, (part.strip() for part in rules[state].split("|"))):
                char_class, target = alternative.split()
                members, negate = class_members(char_class)
                if (char in members) != negate:
                    state = target
                    break
            else:
                return False
        return True

    assert accepts("a < b </thin k> <</think") and accepts("") and accepts("</think")
    assert not accepts("x</think>") and not accepts("<</think>y") and not accepts("</th</think>")


# ------------------------------------------------------------------ grammars on the real vocabulary


@pytest.fixture(scope="module")
def vocabulary(gemma_gguf: Path) -> Iterator[Any]:
    from llamapack.runtime.fileformat.layout import ModelSource
    from llamapack.runtime.llama.model import Model, init_backend

    init_backend()
    model = Model(ModelSource(gemma_gguf), vocab_only=True)
    yield model
    model.close()


def accepted(model: Any, grammar: str, text: str) -> bool:
    """Whether sampling under `grammar` could write `text`, token by token."""
    sampler = llama.llama_sampler_init_grammar(model.vocab, grammar.encode(), b"root")
    assert sampler
    try:
        for token in model.tokenize(text, add_special=False, parse_special=False):
            data = (llama.llama_token_data * 1)(llama.llama_token_data(token, 0.0, 0.0))
            array = llama.llama_token_data_array(data, 1, -1, False)
            llama.llama_sampler_apply(sampler, ctypes.byref(array))
            if math.isinf(data[0].logit):
                return False
            llama.llama_sampler_accept(sampler, token)
        return True
    finally:
        llama.llama_sampler_free(sampler)


@pytest.mark.parametrize(
    ("fmt", "reply"),
    [
        (ToolFormat.HERMES, '<tool_call>\n{"name": "python", "arguments": {"code": "print(1)"}}</tool_call>'),
        (ToolFormat.LLAMA_3, '{"name": "python", "parameters": {"code": "print(1)"}}'),
        (
            ToolFormat.MISTRAL_NEMO,
            '[TOOL_CALLS][{"name": "python", "arguments": {"code": ""}, "id": "a1B2c3D4e"}]',
        ),
        (ToolFormat.MISTRAL, '[TOOL_CALLS]python[ARGS]{"code": "x"}'),
        (ToolFormat.FUNCTIONARY_V3_1, '<function=python>{"code": "x"}</function>'),
        (ToolFormat.FIREFUNCTION_V2, ' functools[{"name": "python", "arguments": {"code": "x"}}]'),
        (ToolFormat.GENERIC, '{"tool_call": {"name": "python", "arguments": {"code": "x"}}}'),
    ],
)  # fmt: skip
def test_grammars_let_calls_through_and_nothing_else(vocabulary: Any, fmt: ToolFormat, reply: str) -> None:
    # (Not DeepSeek's: Gemma's vocabulary writes its markers' U+2581 as a space.)
    grammar = tool_grammar(fmt, TOOLS, REQUIRED, False)
    assert grammar is not None
    assert accepted(vocabulary, grammar, reply)
    assert parse(reply, fmt, tools=TOOL_NAMES).tool_calls[0].name == "python"  # and the parser reads it
    assert not accepted(vocabulary, grammar, reply.replace("python", "pythoff"))
    assert not accepted(vocabulary, grammar, "Sure! " + reply)
    triggers = grammar_triggers(fmt)
    if triggers:  # the lazy grammar takes the reply from its trigger on
        lazy = tool_grammar(fmt, TOOLS, AUTO, False, lazy=True)
        assert lazy is not None and reply.startswith(triggers[0]) and accepted(vocabulary, lazy, reply)


def test_grammar_lets_reasoning_through_first(vocabulary: Any) -> None:
    grammar = tool_grammar(ToolFormat.HERMES, TOOLS, REQUIRED, False, reasoning=THINK, reasoning_opened=True)
    assert grammar is not None
    call = '<tool_call>\n{"name": "python", "arguments": {"code": "x"}}\n</tool_call>'
    assert accepted(vocabulary, grammar, "I should run <code> here.</think>\n\n" + call)
    assert not accepted(vocabulary, grammar, "thinking</think>\n\nSure, I can help.")
    response = tool_grammar(ToolFormat.GENERIC, TOOLS, AUTO, False)
    assert response is not None and accepted(vocabulary, response, '{"response": "Hi!"}')

"""Anthropic's Messages API translated to and from OpenAI's chat completion, no model needed.

The translation is checked form by form, then on the wire: the official
`anthropic` SDK talks to a small aiohttp app that answers canned OpenAI chat
results through the translation, and must parse a message, a stream (thinking,
text and a tool call), the token count and the errors.
"""

from __future__ import annotations

import json
from typing import Any

import anthropic
import pytest
from aiohttp import web

from llamapack.runtime.server.anthropic import (
    DEFAULT_MAX_TOKENS,
    ImageInputUnsupported,
    MessageStream,
    count_tokens_reply,
    count_tokens_request,
    error_body,
    sse_bytes,
    to_chat_request,
    to_message,
)
from llamapack.runtime.server.requests import BadRequest

HELLO = [{"role": "user", "content": "Hello"}]
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Get the current weather in a location",
    "input_schema": {
        "type": "object",
        "properties": {"location": {"type": "string"}},
        "required": ["location"],
    },
}
WEATHER_FUNCTION = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a location",
        "parameters": WEATHER_TOOL["input_schema"],
    },
}
RED_PIXEL = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}


def body(**fields: Any) -> dict[str, Any]:
    return {"model": "test", "max_tokens": 50, "messages": HELLO, **fields}


# ------------------------------------------------------------ requests


def test_a_plain_conversation_keeps_its_turns_and_sampling():
    chat = to_chat_request(
        {
            "model": "claude-x",
            "max_tokens": 64,
            "system": "You are terse.",
            "messages": [
                {"role": "user", "content": "Hello"},
                {"role": "assistant", "content": "Hi there!"},
                {"role": "user", "content": "How are you?"},
            ],
            "temperature": 0.5,
            "top_p": 0.9,
            "top_k": 40,
            "stop_sequences": ["\n", "END"],
            "metadata": {"user_id": "u1"},
        }
    )
    assert chat == {
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Hi there!"},
            {"role": "user", "content": "How are you?"},
        ],
        "max_tokens": 64,
        "temperature": 0.5,
        "top_p": 0.9,
        "top_k": 40,
        "stop": ["\n", "END"],
    }


def test_max_tokens_left_out_is_llama_servers_default():
    chat = to_chat_request({"messages": HELLO})
    assert chat["max_tokens"] == DEFAULT_MAX_TOKENS == 4096


def test_nulls_mean_absent():
    chat = to_chat_request(
        {"messages": HELLO, "max_tokens": None, "system": None, "tools": None, "stream": None}
    )
    assert chat == {"messages": HELLO, "max_tokens": DEFAULT_MAX_TOKENS}


def test_an_empty_message_list_is_taken_as_llama_server_takes_it():
    assert to_chat_request(body(messages=[]))["messages"] == []


def test_a_stream_asks_for_the_usage_chunk():
    chat = to_chat_request(body(stream=True))
    assert chat["stream"] is True and chat["stream_options"] == {"include_usage": True}
    assert "stream" not in to_chat_request(body(stream=False))


def test_system_blocks_are_paragraphs_and_an_empty_system_is_none():
    blocks = [
        {"type": "text", "text": "One."},
        {"type": "text", "text": ""},
        {"type": "text", "text": "Two."},
    ]
    assert to_chat_request(body(system=blocks))["messages"][0] == {
        "role": "system",
        "content": "One.\n\nTwo.",
    }
    assert to_chat_request(body(system=""))["messages"] == HELLO
    assert to_chat_request(body(system=[]))["messages"] == HELLO


def test_claude_codes_billing_stamp_is_steadied_for_the_prompt_cache():
    stamped = "x-anthropic-billing-header: cc_version=2.1.101.e51; cc_entrypoint=cli; cch=a5145;"
    steady = "x-anthropic-billing-header: cc_version=2.1.101.e51; cc_entrypoint=cli; cch=fffff;"
    as_string = to_chat_request(body(system=stamped + "You are Claude Code."))["messages"][0]["content"]
    assert as_string == steady + "You are Claude Code."
    blocks = [{"type": "text", "text": stamped}, {"type": "text", "text": "You are Claude Code."}]
    assert (
        to_chat_request(body(system=blocks))["messages"][0]["content"] == steady + "\n\nYou are Claude Code."
    )
    for untouched in ("Mention cch=a5145; freely.", "x-anthropic-billing-header: cch=abc;"):
        assert to_chat_request(body(system=untouched))["messages"][0]["content"] == untouched


def test_text_blocks_stay_text_parts():
    content = [
        {"type": "text", "text": "What is"},
        {"type": "text", "text": " the answer?", "cache_control": {}},
    ]
    chat = to_chat_request(body(messages=[{"role": "user", "content": content}]))
    parts = [{"type": "text", "text": "What is"}, {"type": "text", "text": " the answer?"}]
    assert chat["messages"] == [{"role": "user", "content": parts}]


def test_tool_use_and_thinking_become_tool_calls_and_reasoning():
    history = [
        {"role": "user", "content": "Fix the bug"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "Look first.", "signature": "sig"},
                {"type": "redacted_thinking", "data": "opaque"},
                {"type": "text", "text": "Listing."},
                {
                    "type": "tool_use",
                    "id": "call_1",
                    "name": "list_files",
                    "input": {"path": ".", "deep": "é"},
                },
                {"type": "tool_use", "id": "call_2", "name": "now", "input": {}},
            ],
        },
    ]
    assistant = to_chat_request(body(messages=history))["messages"][1]
    assert assistant == {
        "role": "assistant",
        "content": [{"type": "text", "text": "Listing."}],
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "list_files", "arguments": '{"path":".","deep":"é"}'},
            },
            {"id": "call_2", "type": "function", "function": {"name": "now", "arguments": "{}"}},
        ],
        "reasoning_content": "Look first.",
    }


def test_a_turn_of_tool_calls_alone_has_empty_content_not_null():
    turn = {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {"a": 1}}]}
    assistant = to_chat_request(body(messages=[*HELLO, turn]))["messages"][1]
    assert assistant["content"] == "" and "reasoning_content" not in assistant


def test_tool_results_become_tool_messages_in_block_order():
    results = {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "t1", "content": "Sunny, 25°C"},
            {
                "type": "tool_result",
                "tool_use_id": "t2",
                "is_error": True,
                "content": [{"type": "text", "text": "City "}, {"type": "text", "text": "not found"}],
            },
            {"type": "tool_result", "tool_use_id": "t3"},
            {"type": "text", "text": "Go on."},
        ],
    }
    assert to_chat_request(body(messages=[results]))["messages"] == [
        {"role": "tool", "tool_call_id": "t1", "content": "Sunny, 25°C"},
        {"role": "tool", "tool_call_id": "t2", "content": "City not found"},
        {"role": "tool", "tool_call_id": "t3", "content": ""},
        {"role": "user", "content": [{"type": "text", "text": "Go on."}]},
    ]
    # Text before a result stays before it (llama-server's test_anthropic_tool_result_with_text).
    text_first = {
        "role": "user",
        "content": [
            {"type": "text", "text": "Here are the results:"},
            {"type": "tool_result", "tool_use_id": "t1", "content": "Sunny"},
        ],
    }
    assert to_chat_request(body(messages=[text_first]))["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Here are the results:"}]},
        {"role": "tool", "tool_call_id": "t1", "content": "Sunny"},
    ]


@pytest.mark.parametrize(
    "content",
    [
        [{"type": "image", "source": RED_PIXEL}, {"type": "text", "text": "What is this?"}],
        [
            {
                "type": "tool_result",
                "tool_use_id": "t1",
                "content": [{"type": "text", "text": "File: a.png"}, {"type": "image", "source": RED_PIXEL}],
            }
        ],
    ],
    ids=["in a message", "in a tool result"],
)
def test_images_are_refused_in_llama_servers_words(content):
    with pytest.raises(ImageInputUnsupported) as refused:
        to_chat_request(body(messages=[{"role": "user", "content": content}]))
    assert isinstance(refused.value, BadRequest) and refused.value.param == "messages"
    assert "image input is not supported" in str(refused.value).lower()


def test_tools_become_functions():
    bare = {"name": "str_replace_based_edit_tool", "type": "text_editor_20250728"}
    chat = to_chat_request(body(tools=[WEATHER_TOOL, bare]))
    assert chat["tools"] == [
        WEATHER_FUNCTION,
        {
            "type": "function",
            "function": {
                "name": "str_replace_based_edit_tool",
                "description": "",
                "parameters": {"type": "object", "properties": {}},
            },
        },
    ]
    assert "tool_choice" not in chat and "parallel_tool_calls" not in chat


@pytest.mark.parametrize(
    ("choice", "expected", "parallel"),
    [
        ({"type": "auto"}, "auto", None),
        ({"type": "any"}, "required", None),
        ({"type": "none"}, "none", None),
        ({"type": "auto", "disable_parallel_tool_use": True}, "auto", False),
        ({"type": "any", "disable_parallel_tool_use": False}, "required", True),
    ],
)
def test_tool_choice(choice, expected, parallel):
    chat = to_chat_request(body(tools=[WEATHER_TOOL], tool_choice=choice))
    assert chat["tool_choice"] == expected and chat["tools"] == [WEATHER_FUNCTION]
    assert chat.get("parallel_tool_calls") == parallel


def test_a_named_tool_choice_offers_that_tool_alone():
    other = {"name": "get_time", "input_schema": {"type": "object"}}
    chat = to_chat_request(
        body(tools=[other, WEATHER_TOOL], tool_choice={"type": "tool", "name": "get_weather"})
    )
    assert chat["tool_choice"] == "required" and chat["tools"] == [WEATHER_FUNCTION]


def test_thinking_gives_llama_servers_budget():
    assert (
        to_chat_request(body(thinking={"type": "enabled", "budget_tokens": 50}))["thinking_budget_tokens"]
        == 50
    )
    assert to_chat_request(body(thinking={"type": "enabled"}))["thinking_budget_tokens"] == 10000
    assert "thinking_budget_tokens" not in to_chat_request(body(thinking={"type": "disabled"}))


def _message(content: Any, role: str = "user") -> dict[str, Any]:
    return body(messages=[{"role": role, "content": content}])


@pytest.mark.parametrize(
    ("request_body", "param", "message"),
    [
        ({"model": "test", "max_tokens": 5}, "messages", "'messages' is required"),
        (body(messages="hi"), "messages", "'messages' must be a list of messages"),
        (body(messages=["hi"]), "messages", "'messages[0]' must be an object"),
        (
            body(messages=[{"role": "system", "content": "x"}]),
            "messages",
            '\'messages[0].role\' must be "user" or "assistant"',
        ),
        (body(messages=[{"role": "user"}]), "messages", "'messages[0].content' must be a string or a list"),
        (
            _message([{"type": "document", "source": {}}]),
            "messages",
            "'messages[0].content[0]' must be a text, image or tool_result block in a user message",
        ),
        (
            _message([{"type": "tool_use", "id": "t", "name": "f", "input": {}}]),
            "messages",
            "'messages[0].content[0]' must be a text, image or tool_result block in a user message",
        ),
        (
            _message([{"type": "tool_result", "tool_use_id": "t"}], "assistant"),
            "messages",
            "'messages[0].content[0]' must be a text, thinking, redacted_thinking or tool_use block",
        ),
        (
            _message([{"type": "text", "text": 5}]),
            "messages",
            "'messages[0].content[0].text' must be a string",
        ),
        (
            _message([{"type": "tool_use", "id": "t", "name": "f", "input": "{}"}], "assistant"),
            "messages",
            "'messages[0].content[0].input' must be an object",
        ),
        (
            _message([{"type": "tool_use", "name": "f", "input": {}}], "assistant"),
            "messages",
            "'messages[0].content[0].id' must be a string",
        ),
        (
            _message([{"type": "tool_result", "tool_use_id": "t", "content": 3}]),
            "messages",
            "'messages[0].content[0].content' must be a string or a list of text blocks",
        ),
        (body(system=7), "system", "'system' must be a string or a list of text blocks"),
        (body(system=[{"type": "image", "source": RED_PIXEL}]), "system", "'system[0]' must be a text block"),
        (body(tools={"name": "f"}), "tools", "'tools' must be a list of tools"),
        (body(tools=[{"description": "no name"}]), "tools", "'tools[0].name' must be a string"),
        (body(tools=[{"name": ""}]), "tools", "'tools[0].name' must not be empty"),
        (
            body(tools=[{"name": "f", "input_schema": "object"}]),
            "tools",
            "'tools[0].input_schema' must be an object",
        ),
        (body(tools=[WEATHER_TOOL], tool_choice="auto"), "tool_choice", "'tool_choice.type' must be"),
        (
            body(tools=[WEATHER_TOOL], tool_choice={"type": "tool", "name": "nope"}),
            "tool_choice",
            "'tool_choice.name' names no tool in 'tools': 'nope'",
        ),
        (body(tool_choice={"type": "any"}), "tool_choice", "'tool_choice' of type \"any\" needs 'tools'"),
        (
            body(tools=[WEATHER_TOOL], tool_choice={"type": "auto", "disable_parallel_tool_use": "yes"}),
            "tool_choice",
            "'tool_choice.disable_parallel_tool_use' must be true or false",
        ),
        (body(stop_sequences="END"), "stop_sequences", "'stop_sequences' must be a list of strings"),
        (body(stream="yes"), "stream", "'stream' must be true or false"),
        (body(thinking=True), "thinking", "'thinking' must be an object"),
        (
            body(thinking={"type": "enabled", "budget_tokens": -1}),
            "thinking",
            "'thinking.budget_tokens' must be a non-negative integer",
        ),
        (body(model=3), "model", "'model' must be a string"),
    ],
)
def test_bad_bodies_name_the_field(request_body, param, message):
    with pytest.raises(BadRequest) as refused:
        to_chat_request(request_body)
    assert not isinstance(refused.value, ImageInputUnsupported)
    assert refused.value.param == param
    assert str(refused.value).startswith(message)
    assert "\n" not in str(refused.value)


def test_count_tokens_measures_the_conversation_alone():
    history = [
        {"role": "user", "content": "Fix the bug"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "Look first."},
                {"type": "tool_use", "id": "c1", "name": "get_weather", "input": {}},
            ],
        },
    ]
    # No max_tokens needed (llama-server's test_anthropic_count_tokens_no_max_tokens).
    chat = count_tokens_request(
        {
            "model": "test",
            "system": "Be brief.",
            "messages": history,
            "tools": [WEATHER_TOOL],
            "temperature": 0.2,
            "stream": True,
        }
    )
    assert chat == {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Fix the bug"},
            {
                "role": "assistant",
                "content": "",
                "reasoning_content": "Look first.",
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
                ],
            },
        ],
        "tools": [WEATHER_FUNCTION],
    }
    assert count_tokens_reply(17) == {"input_tokens": 17}
    with pytest.raises(BadRequest, match="'messages' is required"):
        count_tokens_request({"model": "test"})


# ------------------------------------------------------------ replies


def chat_reply(message: dict[str, Any], finish_reason: str = "stop", cached: int = 0) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": "gemma",
        "choices": [
            {"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish_reason}
        ],
        "usage": {
            "prompt_tokens": 31,
            "completion_tokens": 12,
            "total_tokens": 43,
            "prompt_tokens_details": {"cached_tokens": cached},
        },
        "timings": {"prompt_n": 31},
    }


def test_a_text_reply_is_a_message():
    message = to_message(chat_reply({"content": "Hello!"}, cached=8))
    assert message["id"].startswith("msg_") and len(message["id"]) > len("msg_")
    assert message == {
        "id": message["id"],
        "type": "message",
        "role": "assistant",
        "content": [{"type": "text", "text": "Hello!"}],
        "model": "gemma",
        "stop_reason": "end_turn",
        "stop_sequence": None,
        # Anthropic counts cached prompt tokens apart; no timings (llama-server's test checks).
        "usage": {"cache_read_input_tokens": 8, "input_tokens": 23, "output_tokens": 12},
    }
    assert to_message(chat_reply({"content": "x"}), message_id="msg_given")["id"] == "msg_given"


def test_thinking_text_and_tool_calls_are_blocks_in_order():
    reply = chat_reply(
        {
            "content": "Let me check.",
            "reasoning_content": "The user wants the weather.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"location":"Paris"}'},
                },
                {"id": "", "type": "function", "function": {"name": "get_time", "arguments": "not json"}},
                {"id": "call_3", "type": "function", "function": {"name": "get_list", "arguments": "[1, 2]"}},
            ],
        },
        finish_reason="tool_calls",
    )
    message = to_message(reply)
    assert message["stop_reason"] == "tool_use"
    content = message["content"]
    assert content[:2] == [
        {"type": "thinking", "thinking": "The user wants the weather.", "signature": ""},
        {"type": "text", "text": "Let me check."},
    ]
    assert content[2] == {
        "type": "tool_use",
        "id": "call_1",
        "name": "get_weather",
        "input": {"location": "Paris"},
    }
    # Unreadable or non-object arguments give {} (as llama-server); a missing id gets one.
    assert content[3]["input"] == {} and content[3]["id"].startswith("toolu_")
    assert content[4]["input"] == {}


@pytest.mark.parametrize(
    ("finish_reason", "stop_sequence", "stop_reason"),
    [
        ("stop", None, "end_turn"),
        ("length", None, "max_tokens"),
        ("stop", "END", "stop_sequence"),
        ("length", "END", "max_tokens"),
        (None, None, "end_turn"),
    ],
)
def test_stop_reasons(finish_reason, stop_sequence, stop_reason):
    message = to_message(chat_reply({"content": "1 2 3"}, finish_reason), stop_sequence=stop_sequence)
    assert message["stop_reason"] == stop_reason
    assert message["stop_sequence"] == stop_sequence


def test_tool_calls_stop_for_tool_use_whatever_the_finish_reason_says():
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    assert (
        to_message(chat_reply({"content": None, "tool_calls": [call]}, "stop"))["stop_reason"] == "tool_use"
    )


def test_an_empty_reply_is_one_empty_text_block():
    assert to_message(chat_reply({"content": ""}))["content"] == [{"type": "text", "text": ""}]
    assert to_message(chat_reply({"content": None, "tool_calls": []}))["content"] == [
        {"type": "text", "text": ""}
    ]


# ------------------------------------------------------------ streams


def chunk(delta: dict[str, Any] | None = None, finish_reason: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "gemma",
        "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish_reason}],
    }


def usage_chunk(prompt: int = 31, completion: int = 3, cached: int = 0) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "gemma",
        "choices": [],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached},
        },
    }


def play(stream: MessageStream, chunks: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    events = [event for one in chunks for event in stream.feed(one)]
    return events + stream.end()


def test_a_text_stream_in_anthropics_order_and_shapes():
    stream = MessageStream("gemma", input_tokens=31, cached_tokens=8, message_id="msg_1")
    events = play(
        stream,
        [
            chunk({"role": "assistant", "content": None}),
            chunk({"content": "Hel"}),
            chunk({"content": ""}),
            chunk({"content": "lo"}),
            chunk(finish_reason="stop"),
            usage_chunk(completion=2, cached=8),
        ],
    )
    assert events == [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_1",
                    "type": "message",
                    "role": "assistant",
                    "content": [],
                    "model": "gemma",
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"cache_read_input_tokens": 8, "input_tokens": 23, "output_tokens": 0},
                },
            },
        ),
        (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}},
        ),
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "lo"}},
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"cache_read_input_tokens": 8, "input_tokens": 23, "output_tokens": 2},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    assert stream.finished
    assert stream.feed(chunk({"content": "late"})) == [] and stream.end() == []


def test_message_start_can_go_before_the_first_token():
    stream = MessageStream("gemma", input_tokens=5)
    first = stream.start()
    assert [name for name, _ in first] == ["message_start"]
    assert stream.start() == []
    assert [name for name, _ in stream.feed(chunk({"content": "a"}))] == [
        "content_block_start",
        "content_block_delta",
    ]


def test_thinking_then_text_then_tool_calls_are_blocks_one_at_a_time():
    stream = MessageStream("gemma", input_tokens=31)
    events = play(
        stream,
        [
            chunk({"role": "assistant", "content": None}),
            chunk({"reasoning_content": "Weather "}),
            chunk({"reasoning_content": "wanted."}),
            chunk({"content": "Checking."}),
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": ""},
                        }
                    ]
                }
            ),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"loca'}}]}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'tion":"Paris"}'}}]}),
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": 1,
                            "id": "call_2",
                            "type": "function",
                            "function": {"name": "get_time", "arguments": "{}"},
                        }
                    ]
                }
            ),
            chunk(finish_reason="tool_calls"),
            usage_chunk(completion=20),
        ],
    )
    summary = [
        (name, data.get("index"), (data.get("delta") or data.get("content_block") or {}).get("type"))
        for name, data in events
    ]
    assert summary == [
        ("message_start", None, None),
        ("content_block_start", 0, "thinking"),
        ("content_block_delta", 0, "thinking_delta"),
        ("content_block_delta", 0, "thinking_delta"),
        ("content_block_delta", 0, "signature_delta"),  # before a thinking block closes, as Anthropic's
        ("content_block_stop", 0, None),
        ("content_block_start", 1, "text"),
        ("content_block_delta", 1, "text_delta"),
        ("content_block_stop", 1, None),
        ("content_block_start", 2, "tool_use"),
        ("content_block_delta", 2, "input_json_delta"),
        ("content_block_delta", 2, "input_json_delta"),
        ("content_block_stop", 2, None),
        ("content_block_start", 3, "tool_use"),
        ("content_block_delta", 3, "input_json_delta"),
        ("content_block_stop", 3, None),
        ("message_delta", None, None),
        ("message_stop", None, None),
    ]
    starts = [data["content_block"] for name, data in events if name == "content_block_start"]
    assert starts[0] == {"type": "thinking", "thinking": "", "signature": ""}
    assert starts[2] == {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {}}
    pieces = [
        data["delta"]["partial_json"]
        for name, data in events
        if data.get("index") == 2 and name.endswith("delta")
    ]
    assert "".join(pieces) == '{"location":"Paris"}'
    assert events[1][1]["content_block"]["type"] == "thinking"
    message_delta = events[-2][1]
    assert (
        message_delta["delta"]["stop_reason"] == "tool_use" and message_delta["usage"]["output_tokens"] == 20
    )


def test_a_stream_without_its_usage_chunk_still_ends():
    stream = MessageStream("gemma", input_tokens=4)
    events = [*stream.feed(chunk({"content": "cut"})), *stream.feed(chunk(finish_reason="length"))]
    assert [name for name, _ in events][-1] == "content_block_stop" and not stream.finished
    tail = stream.end()
    assert tail == [
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "max_tokens", "stop_sequence": None},
                "usage": {"output_tokens": 0},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]


def test_an_empty_stream_has_one_empty_text_block_as_an_empty_reply_has():
    stream = MessageStream("gemma", input_tokens=4)
    events = play(stream, [chunk({"role": "assistant", "content": None}), chunk(finish_reason="stop")])
    assert [name for name, _ in events] == [
        "message_start",
        "content_block_start",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[1][1]["content_block"] == to_message(chat_reply({"content": ""}))["content"][0]


def test_a_stream_cut_short_closes_its_open_block():
    stream = MessageStream("gemma")
    stream.feed(chunk({"reasoning_content": "hm"}))
    assert [name for name, _ in stream.end()] == [
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]


def test_a_stop_sequence_in_a_stream():
    stream = MessageStream("gemma", input_tokens=4)
    stream.feed(chunk({"content": "1 2"}))
    events = stream.feed(chunk(finish_reason="stop"), stop_sequence="END") + stream.feed(usage_chunk())
    assert events[-2][1]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "END"}


def test_an_error_mid_stream_is_anthropics_error_event():
    stream = MessageStream("gemma", input_tokens=4)
    stream.feed(chunk({"content": "par"}))
    failed = chunk(finish_reason="stop")
    failed["error"] = {"message": "decode failed", "type": "server_error"}
    assert stream.feed(failed) == [
        ("error", {"type": "error", "error": {"type": "api_error", "message": "decode failed"}})
    ]
    assert stream.finished and stream.end() == []


def test_sse_bytes_names_the_event():
    assert (
        sse_bytes("message_stop", {"type": "message_stop"})
        == b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    )
    assert sse_bytes("x", {"t": "é"}) == 'event: x\ndata: {"t":"é"}\n\n'.encode()


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (404, "not_found_error"),
        (413, "request_too_large"),
        (422, "invalid_request_error"),
        (500, "api_error"),
        (501, "api_error"),
        (503, "overloaded_error"),
    ],
)
def test_error_body(status, kind):
    assert error_body(status, "no") == {"type": "error", "error": {"type": kind, "message": "no"}}


# ------------------------------------------------------------ on the wire, through the SDK

# What the chat pipeline would answer: a turn that thinks, says a line and calls a tool.
REPLY = chat_reply(
    {
        "content": "Let me look that up.",
        "reasoning_content": "The user wants the weather in Paris.",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'},
            }
        ],
    },
    finish_reason="tool_calls",
    cached=8,
)


def reply_chunks(reply: dict[str, Any]) -> list[dict[str, Any]]:
    """The same reply as the chat pipeline would stream it, a few characters a chunk."""
    message = reply["choices"][0]["message"]
    chunks = [chunk({"role": "assistant", "content": None})]
    for field in ("reasoning_content", "content"):
        text = message[field]
        chunks += [chunk({field: text[at : at + 5]}) for at in range(0, len(text), 5)]
    for index, call in enumerate(message["tool_calls"]):
        head = {
            "index": index,
            "id": call["id"],
            "type": "function",
            "function": {"name": call["function"]["name"], "arguments": ""},
        }
        chunks.append(chunk({"tool_calls": [head]}))
        arguments = call["function"]["arguments"]
        chunks += [
            chunk({"tool_calls": [{"index": index, "function": {"arguments": arguments[at : at + 4]}}]})
            for at in range(0, len(arguments), 4)
        ]
    usage = reply["usage"]
    return [
        *chunks,
        chunk(finish_reason=reply["choices"][0]["finish_reason"]),
        usage_chunk(usage["prompt_tokens"], usage["completion_tokens"], 8),
    ]


SEEN: web.AppKey[list[dict[str, Any]]] = web.AppKey("seen", list)


async def messages_route(request: web.Request) -> web.StreamResponse:
    """What a /v1/messages route does with the translation, the engine replaced by REPLY."""
    try:
        chat = to_chat_request(await request.json())
    except ImageInputUnsupported as exc:
        return web.json_response(error_body(500, str(exc)), status=500)
    except BadRequest as exc:
        return web.json_response(error_body(400, str(exc)), status=400)
    request.app[SEEN].append(chat)
    if not chat.get("stream"):
        return web.json_response(to_message(REPLY))
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    stream = MessageStream(REPLY["model"], input_tokens=31)
    for name, data in stream.start():
        await response.write(sse_bytes(name, data))
    chunks = reply_chunks(REPLY)
    if chat["messages"][-1]["content"] == "fail midway":
        chunks[3]["error"] = {"message": "the engine stopped", "type": "server_error"}
    for one in chunks:
        for name, data in stream.feed(one):
            await response.write(sse_bytes(name, data))
    for name, data in stream.end():
        await response.write(sse_bytes(name, data))
    await response.write_eof()
    return response


async def count_tokens_route(request: web.Request) -> web.Response:
    chat = count_tokens_request(await request.json())
    request.app[SEEN].append(chat)
    return web.json_response(count_tokens_reply(len(json.dumps(chat["messages"]))))


@pytest.fixture
async def sdk(aiohttp_server):
    app = web.Application()
    app[SEEN] = []
    app.router.add_post("/v1/messages", messages_route)
    app.router.add_post("/v1/messages/count_tokens", count_tokens_route)
    server = await aiohttp_server(app)
    async with anthropic.AsyncAnthropic(
        base_url=str(server.make_url("")), api_key="none", max_retries=0
    ) as client:
        yield client, app[SEEN]


ASK = {
    "model": "test",
    "max_tokens": 200,
    "system": [{"type": "text", "text": "You answer with tools."}],
    "tools": [WEATHER_TOOL],
    "messages": [
        {"role": "user", "content": "What's the weather in Paris?"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "Ask the tool.", "signature": ""},
                {"type": "tool_use", "id": "call_0", "name": "get_weather", "input": {"location": "Paris"}},
            ],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_0", "content": "Rain"}]},
        {"role": "user", "content": "And again?"},
    ],
}


def expect_reply_blocks(content: list[Any]) -> None:
    assert [block.type for block in content] == ["thinking", "text", "tool_use"]
    assert content[0].thinking == "The user wants the weather in Paris." and content[0].signature == ""
    assert content[1].text == "Let me look that up."
    assert (content[2].id, content[2].name, content[2].input) == (
        "call_1",
        "get_weather",
        {"location": "Paris"},
    )


async def test_the_sdk_reads_a_message(sdk):
    client, seen = sdk
    message = await client.messages.create(**ASK)
    assert isinstance(message, anthropic.types.Message)
    expect_reply_blocks(message.content)
    assert message.id.startswith("msg_") and message.model == "gemma"
    assert (message.stop_reason, message.stop_sequence) == ("tool_use", None)
    assert (message.usage.input_tokens, message.usage.output_tokens) == (23, 12)
    assert message.usage.cache_read_input_tokens == 8
    # The SDK's body reached the chat pipeline translated.
    (chat,) = seen
    assert [m["role"] for m in chat["messages"]] == ["system", "user", "assistant", "tool", "user"]
    assert chat["messages"][2]["tool_calls"][0]["function"]["arguments"] == '{"location":"Paris"}'
    assert chat["tools"] == [WEATHER_FUNCTION] and "stream" not in chat


async def test_the_sdk_reads_a_stream(sdk):
    client, seen = sdk
    async with client.messages.stream(**ASK) as stream:
        kinds = [event.type async for event in stream]
        message = await stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert "thinking" in kinds and "text" in kinds and "input_json" in kinds  # the SDK's own derived events
    expect_reply_blocks(message.content)
    assert message.stop_reason == "tool_use"
    # message_delta's totals replace message_start's, which could not know the cache.
    assert (
        message.usage.input_tokens,
        message.usage.output_tokens,
        message.usage.cache_read_input_tokens,
    ) == (23, 12, 8)
    assert seen[0]["stream"] is True and seen[0]["stream_options"] == {"include_usage": True}
    # The stream and the whole reply say the same.
    whole = await client.messages.create(**ASK)
    assert message.model_dump(exclude={"id"}) == whole.model_dump(exclude={"id"})


async def test_the_sdk_reads_a_text_stream(sdk):
    client, _ = sdk
    async with client.messages.stream(**ASK) as stream:
        text = "".join([piece async for piece in stream.text_stream])
    assert text == "Let me look that up."


async def test_the_sdk_counts_tokens(sdk):
    client, seen = sdk
    count = await client.messages.count_tokens(model="test", messages=ASK["messages"], tools=ASK["tools"])
    assert count.input_tokens == len(json.dumps(seen[0]["messages"])) > 0
    assert "max_tokens" not in seen[0]


async def test_the_sdk_raises_anthropics_errors(sdk):
    client, _ = sdk
    with pytest.raises(anthropic.BadRequestError) as refused:
        await client.messages.create(
            model="test", max_tokens=5, messages=[{"role": "system", "content": "x"}]
        )
    assert refused.value.type == "invalid_request_error"
    assert refused.value.api_message == '\'messages[0].role\' must be "user" or "assistant"'
    image = [{"type": "image", "source": RED_PIXEL}, {"type": "text", "text": "What is this?"}]
    with pytest.raises(anthropic.InternalServerError) as failed:
        await client.messages.create(
            model="test", max_tokens=5, messages=[{"role": "user", "content": image}]
        )
    assert "image input is not supported" in (failed.value.api_message or "")


async def test_the_sdk_raises_an_error_event_mid_stream(sdk):
    client, _ = sdk
    received: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as failed:
        async with client.messages.stream(
            model="test", max_tokens=5, messages=[{"role": "user", "content": "fail midway"}]
        ) as stream:
            async for event in stream:
                received.append(event.type)
    assert failed.value.api_message == "the engine stopped" and failed.value.type == "api_error"
    assert received[0] == "message_start"

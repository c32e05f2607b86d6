"""The Responses API translation, model-free: requests to chat requests, chat
replies and chunks to Responses objects and events.

Every object and event is validated against the official SDK's own pydantic
types (which the SDK itself only constructs, unchecked), and the last tests
drive the SDK against a small app that serves canned chat results through the
translation, so the wire format is proven by the SDK's parsers: the plain event
iterator of `responses.create(stream=True)` and the stricter accumulator of
`responses.stream()`.
"""

from __future__ import annotations

import json
from typing import Any

import openai
import pydantic
import pytest
from aiohttp import web
from openai.types.responses import Response, ResponseStreamEvent

from llamapack.runtime.server.requests import BadRequest, ChatCompletionRequest, parse
from llamapack.runtime.server.responses import (
    ResponseStream,
    StreamEvent,
    responses_error,
    sse_bytes,
    to_chat_request,
    to_response,
)

EVENT = pydantic.TypeAdapter(ResponseStreamEvent)
MODEL = "gemma"
WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def valid_response(reply: dict[str, Any]) -> Response:
    """`reply` checked field by field against the SDK's Response type."""
    return Response.model_validate(reply)


def valid_events(events: list[StreamEvent]) -> list[StreamEvent]:
    for name, data in events:
        assert name == data["type"]
        EVENT.validate_python(data)
    return events


# ------------------------------------------------------------ requests


def test_text_input_is_one_user_message_after_the_instructions():
    chat = to_chat_request({"model": "m", "input": "Hi", "instructions": "Be brief."})
    assert chat == {
        "model": "m",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    }


def test_input_messages_keep_their_roles_and_text_parts():
    chat = to_chat_request(
        {
            "input": [
                {"role": "system", "content": "Book"},
                {"role": "developer", "content": [{"type": "input_text", "text": "Rules"}]},
                {
                    "type": "message",
                    "role": "user",
                    "status": "completed",
                    "content": [
                        {"type": "input_text", "text": "What is this?"},
                        {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "auto"},
                    ],
                },
            ]
        }
    )
    assert chat["messages"] == [
        {"role": "system", "content": "Book"},
        {"role": "developer", "content": [{"type": "text", "text": "Rules"}]},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            ],
        },
    ]


def test_an_assistant_turn_given_back_folds_into_one_assistant_message():
    """What the SDK sends back after a tool call: the earlier output items, then the result."""
    chat = to_chat_request(
        {
            "input": [
                {"role": "user", "content": "Weather in Paris?"},
                {
                    "type": "reasoning",
                    "id": "rs_1",
                    "summary": [],
                    "content": [{"type": "reasoning_text", "text": "Call the tool."}],
                },
                {
                    "type": "message",
                    "id": "msg_1",
                    "role": "assistant",
                    "status": "completed",
                    "content": [{"type": "output_text", "text": "Checking.", "annotations": []}],
                },
                {
                    "type": "function_call",
                    "call_id": "call_1",
                    "name": "get_weather",
                    "arguments": '{"city":"Paris"}',
                },
                {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
                {"role": "assistant", "content": "It is sunny."},
            ]
        }
    )
    assert chat["messages"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "reasoning_content": "Call the tool.",
            "content": [{"type": "text", "text": "Checking."}],
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "assistant", "content": [{"type": "text", "text": "It is sunny."}]},
    ]


def test_a_function_call_alone_is_an_assistant_message_with_tool_calls_only():
    chat = to_chat_request(
        {
            "input": [
                {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
                {
                    "type": "function_call_output",
                    "call_id": "c",
                    "output": [{"type": "input_text", "text": "42"}],
                },
            ]
        }
    )
    assert chat["messages"] == [
        {
            "role": "assistant",
            "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "c", "content": [{"type": "text", "text": "42"}]},
    ]


def test_flat_function_tools_become_nested_and_other_tools_are_skipped():
    chat = to_chat_request(
        {
            "input": "x",
            "tools": [WEATHER_TOOL, {"type": "web_search"}, {**WEATHER_TOOL, "name": "g", "strict": False}],
        }
    )
    function = {key: value for key, value in WEATHER_TOOL.items() if key != "type"}
    assert chat["tools"] == [
        {"type": "function", "function": {**function, "strict": True}},
        {"type": "function", "function": {**function, "name": "g", "strict": False}},
    ]
    assert "tools" not in to_chat_request({"input": "x", "tools": [{"type": "web_search"}]})


@pytest.mark.parametrize(
    ("choice", "chat_choice"),
    [
        ("auto", "auto"),
        ("none", "none"),
        ("required", "required"),
        (
            {"type": "function", "name": "get_weather"},
            {"type": "function", "function": {"name": "get_weather"}},
        ),
        (
            {"type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "f"}]},
            "required",
        ),
    ],
)
def test_tool_choice(choice, chat_choice):
    assert to_chat_request({"input": "x", "tool_choice": choice})["tool_choice"] == chat_choice


def test_settings_are_renamed_or_passed_through():
    chat = to_chat_request(
        {
            "input": "x",
            "model": "gpt-4.1",
            "max_output_tokens": 8,
            "temperature": 0.8,
            "top_p": 0.9,
            "top_k": 40,  # llama-server's own field, passed through as it does
            "reasoning": {"effort": "low", "summary": "auto"},
            "stream": True,
            "stream_options": {"include_obfuscation": False},
            "store": False,
            "previous_response_id": None,
            "include": ["message.output_text.logprobs"],
            "top_logprobs": 3,
        }
    )
    assert chat == {
        "model": "gpt-4.1",
        "messages": [{"role": "user", "content": "x"}],
        "max_tokens": 8,
        "temperature": 0.8,
        "top_p": 0.9,
        "top_k": 40,
        "reasoning_effort": "low",
        "stream": True,
        "stream_options": {"include_usage": True},
        "store": False,
        "logprobs": True,
        "top_logprobs": 3,
    }


def test_top_logprobs_without_the_include_asks_for_none():
    assert "top_logprobs" not in to_chat_request({"input": "x", "top_logprobs": 2})


@pytest.mark.parametrize(
    ("text", "response_format"),
    [
        ({"format": {"type": "text"}}, None),
        ({"format": {"type": "json_object"}}, {"type": "json_object"}),
        (
            {"format": {"type": "json_schema", "name": "p", "schema": {"type": "object"}, "strict": True}},
            {
                "type": "json_schema",
                "json_schema": {"name": "p", "schema": {"type": "object"}, "strict": True},
            },
        ),
        ({"verbosity": "low"}, None),
    ],
)
def test_text_format_is_the_response_format(text, response_format):
    chat = to_chat_request({"input": "x", "text": text})
    assert chat.get("response_format") == response_format
    assert "text" not in chat


def test_the_chat_request_passes_the_chat_checks():
    chat = to_chat_request(
        {
            "input": [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
            "instructions": "Answer in French.",
            "max_output_tokens": 5,
            "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}}},
            "stream": True,
        }
    )
    request = parse(chat, ChatCompletionRequest)
    assert [message.role for message in request.messages] == ["system", "developer", "user"]
    assert request.token_limit() == 5 and request.include_usage
    assert request.response_format is not None and request.response_format.type == "json_schema"


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({}, "input", "'input' is required"),
        ({"input": "x", "previous_response_id": "resp_1"}, "previous_response_id", "previous_response_id"),
        ({"input": "x", "conversation": "conv_1"}, "conversation", "conversation"),
        ({"input": 5}, "input", "a string or a list of items"),
        ({"input": ["hi"]}, "input", "'input[0]' must be an object"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input", "no items"),
        ({"input": [{"type": "web_search_call", "id": "ws"}]}, "input", "'input[0]' must be a message"),
        ({"input": [{"role": "tool", "content": "x"}]}, "input", "'input[0].role'"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
            "input",
            "input_file",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "output_text", "text": "x"}]}]},
            "input",
            "'input[0].content[0].type' must be one of input_text, input_image, input_file",
        ),
        (
            {"input": [{"type": "function_call_output", "call_id": "c", "output": [{"type": "refusal"}]}]},
            "input",
            "'input[0].output[0].type' must be one of input_text, input_image",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_text"}]}]},
            "input",
            ".text' must be a string",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
            "input",
            "image_url",
        ),
        ({"input": [{"role": "assistant", "content": [{"type": "input_image"}]}]}, "input", "output_text"),
        ({"input": [{"role": "user", "content": 3}]}, "input", "content parts"),
        ({"input": [{"type": "function_call", "call_id": "c", "arguments": "{}"}]}, "input", ".name"),
        ({"input": [{"type": "function_call_output", "output": "x"}]}, "input", ".call_id"),
        ({"input": "x", "instructions": ["a"]}, "instructions", "string"),
        ({"input": "x", "tools": {"type": "function"}}, "tools", "list"),
        ({"input": "x", "tools": [{"type": "function"}]}, "tools", "'tools[0].name'"),
        ({"input": "x", "tool_choice": {"type": "web_search"}}, "tool_choice", "tool_choice"),
        ({"input": "x", "text": {"format": {"type": "json_schema", "name": "n"}}}, "text", "schema"),
        ({"input": "x", "text": {"format": {"type": "xml"}}}, "text", "text.format.type"),
    ],
)
def test_refused_requests_name_the_field(body, param, words):
    with pytest.raises(BadRequest) as caught:
        to_chat_request(body)
    assert caught.value.param == param
    assert words in str(caught.value) and "\n" not in str(caught.value)


def test_the_chat_checks_errors_name_the_responses_field():
    with pytest.raises(BadRequest) as caught:
        parse(to_chat_request({"input": "x", "max_output_tokens": -1}), ChatCompletionRequest)
    error = responses_error(caught.value)
    assert error.param == "max_output_tokens" and str(error).startswith("'max_output_tokens' must be")
    with pytest.raises(BadRequest) as caught:
        parse({"messages": [{"role": "user", "content": 5}]}, ChatCompletionRequest)
    assert responses_error(caught.value).param == "input"
    other = BadRequest("'top_k' must be a number", "top_k")
    assert responses_error(other) is other


# ------------------------------------------------------------ whole replies

USAGE = {
    "prompt_tokens": 12,
    "completion_tokens": 5,
    "total_tokens": 17,
    "prompt_tokens_details": {"cached_tokens": 4},
}


def chat_reply(message: dict[str, Any], finish_reason: str = "stop", **extra: Any) -> dict[str, Any]:
    choice = {
        "index": 0,
        "message": {"role": "assistant", **message},
        "finish_reason": finish_reason,
        **extra,
    }
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1700000000, "model": MODEL,
            "choices": [choice], "usage": USAGE}  # fmt: skip


def test_a_text_reply_is_one_message_item():
    body = {"input": "Hi", "instructions": "Be brief.", "temperature": 0.5, "max_output_tokens": 9}
    reply = to_response(chat_reply({"content": "Hello there."}), body)
    parsed = valid_response(reply)
    assert reply["id"].startswith("resp_") and reply["object"] == "response"
    assert reply["status"] == "completed" and reply["incomplete_details"] is None
    assert reply["created_at"] == 1700000000 and reply["model"] == MODEL
    assert parsed.output_text == "Hello there."
    [item] = reply["output"]
    assert item["id"].startswith("msg_") and item["role"] == "assistant" and item["status"] == "completed"
    assert reply["usage"] == {
        "input_tokens": 12,
        "input_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 0},
        "output_tokens": 5,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 17,
    }
    assert (reply["instructions"], reply["temperature"], reply["max_output_tokens"]) == ("Be brief.", 0.5, 9)


def test_reasoning_then_text_then_function_calls():
    body = {"input": "Weather?", "tools": [WEATHER_TOOL], "tool_choice": "required"}
    message = {
        "reasoning_content": "The user wants weather.",
        "content": "Let me check.",
        "tool_calls": [
            {
                "id": "abc",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
            },
            {"id": "call_xyz", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}},
        ],
    }
    reply = to_response(chat_reply(message, "tool_calls"), body)
    valid_response(reply)
    reasoning, text, first, second = reply["output"]
    assert reasoning["id"].startswith("rs_") and reasoning["content"][0]["text"] == "The user wants weather."
    assert text["content"][0]["text"] == "Let me check."
    assert (first["id"], first["call_id"], first["name"]) == ("fc_abc", "call_abc", "get_weather")
    assert first["arguments"] == '{"city":"Paris"}' and first["status"] == "completed"
    assert (second["id"], second["call_id"]) == ("fc_xyz", "call_xyz")
    assert reply["tools"] == [WEATHER_TOOL] and reply["tool_choice"] == "required"


def test_a_reply_cut_at_its_limit_is_incomplete():
    reply = to_response(chat_reply({"content": "Suddenly"}, "length"), {"input": "x", "max_output_tokens": 1})
    valid_response(reply)
    assert reply["status"] == "incomplete"
    assert reply["incomplete_details"] == {"reason": "max_output_tokens"}
    assert reply["output"][0]["status"] == "incomplete" and reply["completed_at"] is None


def test_an_empty_reply_has_no_output_items():
    reply = to_response(chat_reply({"content": ""}), {"input": "x"})
    assert valid_response(reply).output_text == "" and reply["output"] == []


def test_logprobs_and_timings_carry_over():
    hi = {"token": "Hi", "logprob": -0.1, "bytes": [72, 105]}
    logprobs = {"content": [{"id": 7, **hi, "top_logprobs": [{"id": 7, **hi}]}]}  # chat's carry token ids
    chat = chat_reply({"content": "Hi"}, logprobs=logprobs)
    chat["timings"] = {"predicted_per_second": 50.0}
    reply = to_response(chat, {"input": "x", "include": ["message.output_text.logprobs"]})
    valid_response(reply)
    assert reply["output"][0]["content"][0]["logprobs"] == [{**hi, "top_logprobs": [hi]}]
    assert reply["timings"] == {"predicted_per_second": 50.0}


def test_the_text_format_is_echoed():
    text_format = {"type": "json_schema", "name": "p", "schema": {"type": "object"}, "strict": True}
    reply = to_response(chat_reply({"content": "{}"}), {"input": "x", "text": {"format": text_format}})
    text = valid_response(reply).text
    assert text is not None and text.format is not None and text.format.type == "json_schema"
    assert reply["text"] == {"format": text_format}


# ------------------------------------------------------------ streams


def chunk(
    delta: dict[str, Any] | None = None, finish_reason: str | None = None, **extra: Any
) -> dict[str, Any]:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": MODEL,
            "choices": choices, **extra}  # fmt: skip


def text_chunks(pieces: list[str], finish_reason: str = "stop") -> list[dict[str, Any]]:
    """A chat stream as this server sends it: the role, the text, the finish reason, the usage."""
    return [
        chunk({"role": "assistant", "content": None}),
        *(chunk({"content": piece}) for piece in pieces),
        chunk({}, finish_reason, timings={"predicted_per_second": 10.0}),
        chunk(None, usage=USAGE),
    ]


def run_stream(chunks: list[dict[str, Any]], body: dict[str, Any] | None = None) -> list[StreamEvent]:
    stream = ResponseStream(body or {"input": "x", "stream": True})
    events = [event for part in chunks for event in stream.feed(part)]
    return valid_events(events + stream.finish())


def test_a_text_stream():
    events = run_stream(text_chunks(["Sudden", "ly"]))
    assert [name for name, _ in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    by_name = {name: data for name, data in events}
    response_id = by_name["response.created"]["response"]["id"]
    assert response_id.startswith("resp_")
    assert by_name["response.created"]["response"]["status"] == "in_progress"
    item_id = by_name["response.output_item.added"]["item"]["id"]
    assert item_id.startswith("msg_")
    assert all(data.get("item_id", item_id) == item_id for _, data in events)
    assert (
        "".join(data["delta"] for name, data in events if name == "response.output_text.delta") == "Suddenly"
    )
    assert by_name["response.output_text.done"]["text"] == "Suddenly"
    completed = by_name["response.completed"]
    final = valid_response(completed["response"])
    assert final.id == response_id and final.status == "completed" and final.output_text == "Suddenly"
    assert completed["response"]["output"] == [by_name["response.output_item.done"]["item"]]
    assert final.usage is not None and final.usage.total_tokens == 17
    assert completed["timings"] == {"predicted_per_second": 10.0}


def test_reasoning_text_and_tool_calls_stream_as_successive_items():
    """Tool call pieces as llama-server streams them: id and name first, then the arguments."""
    chunks = [
        chunk({"role": "assistant", "content": None}),
        chunk({"reasoning_content": "Think"}),
        chunk({"reasoning_content": "ing."}),
        chunk({"content": "Checking."}),
        chunk(
            {
                "tool_calls": [
                    {"index": 0, "id": "a1", "type": "function", "function": {"name": "get_weather"}}
                ]
            }
        ),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 1,
                        "id": "call_b2",
                        "type": "function",
                        "function": {"name": "get_time", "arguments": "{}"},
                    }
                ]
            }
        ),  # fmt: skip
        chunk({}, "tool_calls"),
        chunk(None, usage=USAGE),
    ]
    events = run_stream(chunks)
    names = [name for name, _ in events]
    assert names == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.reasoning_text.delta",
        "response.reasoning_text.delta",
        "response.reasoning_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    added = [data for name, data in events if name == "response.output_item.added"]
    assert [data["output_index"] for data in added] == [0, 1, 2, 3]
    assert [data["item"]["type"] for data in added] == [
        "reasoning",
        "message",
        "function_call",
        "function_call",
    ]
    assert added[2]["item"]["arguments"] == "" and added[2]["item"]["name"] == "get_weather"
    done = [data["item"] for name, data in events if name == "response.output_item.done"]
    assert done[0]["content"] == [{"type": "reasoning_text", "text": "Thinking."}]
    assert (done[2]["id"], done[2]["call_id"], done[2]["arguments"]) == (
        "fc_a1",
        "call_a1",
        '{"city":"Paris"}',
    )
    assert (done[3]["call_id"], done[3]["name"], done[3]["arguments"]) == ("call_b2", "get_time", "{}")
    [arguments_done] = [data for name, data in events if name == "response.function_call_arguments.done"][:1]
    assert arguments_done["item_id"] == "fc_a1" and arguments_done["output_index"] == 2
    assert events[-1][1]["response"]["output"] == done


def test_a_stream_cut_at_its_limit_completes_as_incomplete():
    """llama-server's clients wait for response.completed: the status inside says it was cut."""
    events = run_stream(text_chunks(["Sudden"], finish_reason="length"))
    name, data = events[-1]
    assert name == "response.completed"
    assert data["response"]["status"] == "incomplete"
    assert data["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert data["response"]["output"][0]["status"] == "incomplete"


def test_an_error_in_the_stream_fails_the_response():
    final = chunk({}, "stop", error={"message": "engine crashed", "type": "server_error"})
    events = run_stream([chunk({"content": "Hi"}), final])
    name, data = events[-1]
    assert name == "response.failed"
    assert data["response"]["status"] == "failed"
    assert data["response"]["error"] == {"code": "server_error", "message": "engine crashed"}
    assert "error" not in data  # a top-level error would make the SDK raise before the event


def test_timings_and_prompt_progress_go_where_llama_server_puts_them():
    progress = {"total": 40, "cache": 0, "processed": 32, "time_ms": 5}
    stream = ResponseStream({"input": "x", "stream": True})
    first = stream.feed(chunk({"role": "assistant", "content": None}, prompt_progress=progress))
    assert [name for name, _ in first] == ["response.created", "response.in_progress"]
    assert first[1][1]["prompt_progress"] == progress and "prompt_progress" not in first[0][1]
    again = stream.feed(chunk({}, prompt_progress={**progress, "processed": 40}))
    assert [name for name, _ in again] == ["response.in_progress"]
    assert again[0][1]["prompt_progress"]["processed"] == 40
    delta = stream.feed(chunk({"content": "A"}, timings={"predicted_per_second": 3.0}))
    assert delta[-1][0] == "response.output_text.delta"
    assert delta[-1][1]["timings"] == {"predicted_per_second": 3.0}
    assert all("timings" not in data for _, data in delta[:-1])
    valid_events(first + again + delta + stream.finish())


def test_a_stream_without_tokens_still_opens_and_completes():
    events = run_stream([])
    assert [name for name, _ in events] == ["response.created", "response.in_progress", "response.completed"]
    assert events[-1][1]["response"]["output"] == []


def test_logprobs_stream_with_the_deltas():
    entry = {"id": 1, "token": "A", "logprob": -0.5, "bytes": [65], "top_logprobs": []}
    part = chunk({"content": "A"})
    part["choices"][0]["logprobs"] = {"content": [entry]}
    events = run_stream([part])
    expected = [{"token": "A", "logprob": -0.5, "bytes": [65], "top_logprobs": []}]
    [delta] = [data for name, data in events if name == "response.output_text.delta"]
    [done] = [data for name, data in events if name == "response.output_text.done"]
    assert delta["logprobs"] == expected and done["logprobs"] == expected


def test_a_finished_stream_takes_nothing_more():
    stream = ResponseStream({"input": "x"})
    stream.finish()
    with pytest.raises(RuntimeError):
        stream.feed(chunk({"content": "late"}))
    with pytest.raises(RuntimeError):
        stream.finish()


def test_sse_bytes_names_the_event():
    assert sse_bytes("response.output_text.delta", {"delta": "é"}) == (
        'event: response.output_text.delta\ndata: {"delta":"é"}\n\n'.encode()
    )


# ------------------------------------------------------------ the SDK against the wire

WEATHER_CALL = {
    "id": "w1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
}


def canned_chat(chat: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """What a chat pipeline would answer `chat` with, whole and streamed: a call of
    the weather tool when it is offered, JSON when a schema is asked for, else text."""
    if chat.get("response_format"):
        return chat_reply({"content": '{"title": "Dune"}'}), text_chunks(['{"title": "Dune"}'])
    if chat.get("tools"):
        chunks = [
            chunk({"role": "assistant", "content": None}),
            chunk(
                {
                    "tool_calls": [
                        {"index": 0, "id": "w1", "type": "function", "function": {"name": "get_weather"}}
                    ]
                }
            ),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
            chunk({}, "tool_calls"),
            chunk(None, usage=USAGE),
        ]
        return chat_reply({"content": None, "tool_calls": [WEATHER_CALL]}, "tool_calls"), chunks
    return chat_reply({"content": "Suddenly Suddenly"}), text_chunks(["Sudden", "ly", " Sudden", "ly"])


@pytest.fixture
async def sdk(aiohttp_server):
    """The SDK against an app whose /v1/responses is the translation around canned chat results."""
    seen: list[dict[str, Any]] = []

    async def responses(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        try:
            chat = to_chat_request(body)
        except BadRequest as exc:
            error = {"message": str(exc), "type": "invalid_request_error", "param": exc.param, "code": None}
            return web.json_response({"error": error}, status=400)
        seen.append(chat)
        reply, chunks = canned_chat(chat)
        if not chat.get("stream"):
            return web.json_response(to_response(reply, body))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        stream = ResponseStream(body)
        for part in chunks:
            for name, data in stream.feed(part):
                await response.write(sse_bytes(name, data))
        for name, data in stream.finish():
            await response.write(sse_bytes(name, data))
        return response

    app = web.Application()
    app.router.add_post("/v1/responses", responses)
    server = await aiohttp_server(app)
    async with openai.AsyncOpenAI(
        base_url=str(server.make_url("/v1")), api_key="none", max_retries=0
    ) as client:
        client.seen = seen  # type: ignore[attr-defined]
        yield client


BOOK = [{"role": "system", "content": "Book"}, {"role": "user", "content": "What is the best book"}]


async def test_sdk_text(sdk):
    """llama.cpp's test_responses_with_openai_library."""
    res = await sdk.responses.create(model="gpt-4.1", input=BOOK, max_output_tokens=8, temperature=0.8)
    assert res.id.startswith("resp_")
    assert res.output[0].id is not None and res.output[0].id.startswith("msg_")
    assert res.output_text == "Suddenly Suddenly"
    assert res.usage is not None and res.usage.input_tokens == 12
    assert sdk.seen[-1]["messages"] == BOOK and sdk.seen[-1]["max_tokens"] == 8


async def test_sdk_text_stream(sdk):
    """llama.cpp's test_responses_stream_with_openai_library, every branch reached."""
    stream = await sdk.responses.create(
        model="gpt-4.1", input=BOOK, max_output_tokens=8, temperature=0.8, stream=True
    )
    gathered_text, resp_id, msg_id = "", "", ""
    seen_types = set()
    async for r in stream:
        seen_types.add(r.type)
        if r.type == "response.created":
            assert r.response.id.startswith("resp_")
            resp_id = r.response.id
        if r.type == "response.in_progress":
            assert r.response.id == resp_id
        if r.type == "response.output_item.added":
            assert r.item.id is not None and r.item.id.startswith("msg_")
            msg_id = r.item.id
        if r.type in (
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
        ):
            assert r.item_id == msg_id
        if r.type == "response.output_item.done":
            assert r.item.id == msg_id
        if r.type == "response.output_text.delta":
            gathered_text += r.delta
        if r.type == "response.completed":
            assert r.response.id.startswith("resp_")
            assert r.response.output[0].id.startswith("msg_")
            assert gathered_text == r.response.output_text == "Suddenly Suddenly"
    assert {"response.created", "response.output_text.delta", "response.completed"} <= seen_types
    assert sdk.seen[-1]["stream_options"] == {"include_usage": True}


async def test_sdk_function_call_and_its_result(sdk):
    res = await sdk.responses.create(model="m", input="Weather in Paris?", tools=[WEATHER_TOOL])
    [call] = res.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Paris"}
    assert sdk.seen[-1]["tools"][0]["function"]["name"] == "get_weather"
    # The usual next turn: the output given back, then the tool's result.
    await sdk.responses.create(
        model="m",
        input=[
            {"role": "user", "content": "Weather in Paris?"},
            *[item.model_dump(exclude_none=True) for item in res.output],
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
        ],
    )
    messages = sdk.seen[-1]["messages"]
    assert messages[1]["tool_calls"][0]["id"] == call.call_id == messages[2]["tool_call_id"]
    assert messages[2] == {"role": "tool", "tool_call_id": call.call_id, "content": "sunny"}


async def test_sdk_stream_accumulator_with_text(sdk):
    """`responses.stream()` rebuilds the response from the events and checks their
    indexes and ids against each other."""
    async with sdk.responses.stream(model="m", input="Hi") as stream:
        deltas = [event.delta async for event in stream if event.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    assert "".join(deltas) == final.output_text == "Suddenly Suddenly"


async def test_sdk_stream_accumulator_with_a_function_call(sdk):
    async with sdk.responses.stream(
        model="m", input="Weather?", tools=[{**WEATHER_TOOL, "strict": True}]
    ) as stream:
        snapshots = [
            event.snapshot async for event in stream if event.type == "response.function_call_arguments.delta"
        ]
        final = await stream.get_final_response()
    assert snapshots == ['{"city":', '{"city":"Paris"}']
    [call] = final.output
    assert call.type == "function_call" and call.parsed_arguments == {"city": "Paris"}


async def test_sdk_parse_reads_the_json_schema_reply(sdk):
    class Book(pydantic.BaseModel):
        title: str

    parsed = await sdk.responses.parse(model="m", input="A book?", text_format=Book)
    assert parsed.output_parsed == Book(title="Dune")
    assert sdk.seen[-1]["response_format"]["json_schema"]["schema"]["properties"] == {
        "title": {"title": "Title", "type": "string"}
    }


async def test_sdk_sees_a_refusal_as_bad_request(sdk):
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.responses.create(model="m", input="x", previous_response_id="resp_1")
    assert caught.value.param == "previous_response_id"

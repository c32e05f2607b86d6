"""The chat-shaped APIs on the real model, through their official SDKs: OpenAI's tool
calls, Anthropic's Messages and OpenAI's Responses, all run by one chat pipeline."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import openai
import pytest

from tests.support.api import ALIAS, gemma_app, wait_ready

WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture
async def base_url(aiohttp_server, aiohttp_client, backend):
    server = await aiohttp_server(gemma_app(backend))
    await wait_ready(await aiohttp_client(server))
    return str(server.make_url("")).rstrip("/")


@pytest.fixture
async def oai(base_url):
    async with openai.AsyncOpenAI(base_url=base_url + "/v1", api_key="none", max_retries=0) as client:
        yield client


# ------------------------------------------------------------ OpenAI tools


async def test_required_tool_call_is_parsed_back(oai):
    reply = await oai.chat.completions.create(
        model=ALIAS, messages=ASK, tools=[WEATHER], tool_choice="required", max_tokens=64, temperature=0
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather" and call.id
    assert isinstance(json.loads(call.function.arguments)["city"], str)


async def test_streamed_tool_call_deltas_add_up(oai):
    stream = await oai.chat.completions.create(
        model=ALIAS, messages=ASK, tools=[WEATHER], max_tokens=64, temperature=0, stream=True,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )  # fmt: skip
    names, arguments, reasons = "", "", []
    async for chunk in stream:
        for choice in chunk.choices:
            reasons.append(choice.finish_reason)
            for piece in choice.delta.tool_calls or []:
                names += piece.function.name or ""
                arguments += piece.function.arguments or ""
    assert names == "get_weather" and "city" in json.loads(arguments)
    assert reasons[-1] == "tool_calls"


async def test_tool_result_goes_back_through_the_template(oai):
    history = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 24 degrees"},
    ]  # fmt: skip
    reply = await oai.chat.completions.create(
        model=ALIAS, messages=history, tools=[WEATHER], tool_choice="none", max_tokens=16
    )
    assert reply.choices[0].message.content and not reply.choices[0].message.tool_calls


async def test_bad_tools_are_refused(oai):
    with pytest.raises(openai.BadRequestError):
        await oai.chat.completions.create(
            model=ALIAS, messages=ASK, tools=[WEATHER], max_tokens=4,
            tool_choice={"type": "function", "function": {"name": "no_such_tool"}},
        )  # fmt: skip
    with pytest.raises(openai.BadRequestError, match="grammar"):
        await oai.chat.completions.create(
            model=ALIAS, messages=ASK, tools=[WEATHER], max_tokens=4, extra_body={"grammar": 'root ::= "a"'}
        )


# ------------------------------------------------------------ Anthropic


@pytest.fixture
async def claude(base_url):
    async with anthropic.AsyncAnthropic(base_url=base_url, api_key="none", max_retries=0) as client:
        yield client


async def test_anthropic_message(claude):
    message = await claude.messages.create(
        model=ALIAS, max_tokens=12, system="You answer briefly.", messages=ASK
    )
    assert message.role == "assistant" and message.content[0].type == "text"
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert message.usage.input_tokens > 0 and 0 < message.usage.output_tokens <= 12


async def test_anthropic_stream_equals_its_final_message(claude):
    # This SDK has no temperature argument: our server takes it from the body.
    greedy = {"temperature": 0}
    async with claude.messages.stream(model=ALIAS, max_tokens=12, messages=ASK, extra_body=greedy) as stream:
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()
    assert text and final.content[0].text == text


async def test_anthropic_tool_use_and_count_tokens(claude):
    tool = {"name": "get_weather", "description": "The weather in a city",
            "input_schema": WEATHER["function"]["parameters"]}  # fmt: skip
    message = await claude.messages.create(
        model=ALIAS, max_tokens=64, messages=ASK, tools=[tool], tool_choice={"type": "any"},
        extra_body={"temperature": 0},
    )  # fmt: skip
    (use,) = [block for block in message.content if block.type == "tool_use"]
    assert use.name == "get_weather" and "city" in use.input and message.stop_reason == "tool_use"
    counted = await claude.messages.count_tokens(model=ALIAS, messages=ASK)
    assert counted.input_tokens > 5


# ------------------------------------------------------------ OpenAI Responses


async def test_responses_create_and_stream(oai):
    response = await oai.responses.create(model=ALIAS, input="Say hello.", max_output_tokens=8)
    assert response.status in ("completed", "incomplete") and response.output_text
    assert response.usage.output_tokens <= 8
    events = [event async for event in await oai.responses.create(
        model=ALIAS, input="Say hello.", max_output_tokens=8, stream=True,
    )]  # fmt: skip
    kinds = [event.type for event in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    deltas = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    assert deltas == events[-1].response.output_text


async def test_responses_function_call(oai):
    tool = {"type": "function", **WEATHER["function"]}
    response = await oai.responses.create(
        model=ALIAS, input="What is the weather in Paris?", tools=[tool], tool_choice="required",
        max_output_tokens=64, temperature=0,
    )  # fmt: skip
    (call,) = [item for item in response.output if item.type == "function_call"]
    assert call.name == "get_weather" and "city" in json.loads(call.arguments)


# ------------------------------------------------------------ real templates


@pytest.mark.parametrize(
    "template",
    ["Qwen-Qwen2.5-7B-Instruct", "meta-llama-Llama-3.3-70B-Instruct", "mistralai-Mistral-Nemo-Instruct-2407"],
)
async def test_tool_calls_in_each_family_format(gemma_gguf, aiohttp_server, aiohttp_client, template):
    """Gemma served with another family's template: a required call is held to that family's
    format by the grammar, and parsed back into `tool_calls` from it, whole and streamed."""
    from llamapack.runtime.fileformat import ChatTemplateChoice
    from tests.support.api import gemma_backend
    from tests.support.llama_cpp_source import llama_cpp_templates

    text = llama_cpp_templates()[template]
    backend = gemma_backend(gemma_gguf, ctx_size=2048, parallel=1,
                            chat_template=ChatTemplateChoice("jinja", template, text=text))  # fmt: skip
    try:
        server = await aiohttp_server(gemma_app(backend))
        await wait_ready(await aiohttp_client(server))
        url = str(server.make_url("/v1"))
        async with openai.AsyncOpenAI(base_url=url, api_key="none", max_retries=0) as oai:
            asked: Any = {"model": ALIAS, "messages": ASK, "tools": [WEATHER], "tool_choice": "required",
                     "parallel_tool_calls": False, "max_tokens": 96, "temperature": 0}  # fmt: skip
            reply = await oai.chat.completions.create(**asked)
            (call,) = reply.choices[0].message.tool_calls
            assert call.function.name == "get_weather" and "city" in json.loads(call.function.arguments)
            assert reply.choices[0].finish_reason == "tool_calls"
            arguments = ""
            async for chunk in await oai.chat.completions.create(**asked, stream=True):
                for piece in chunk.choices[0].delta.tool_calls or [] if chunk.choices else []:
                    arguments += piece.function.arguments or ""
            assert json.loads(arguments) == json.loads(call.function.arguments)
    finally:
        backend.close()

"""Chat templates rendered as llama-server renders them.

Expected texts come from llama.cpp itself: its server test suite
(tools/server/tests/unit/test_template.py, test_chat_completion.py) and its chat
template tests (tests/test-chat-template.cpp). The templates in chat_templates/ are
copies of llama.cpp's models/templates/ at the pinned version; the whole set comes
from the pinned sdist (tests/support/llama_cpp_source.py, fetched once into the cache).
"""

from __future__ import annotations

import ast
import datetime
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from llamapack.runtime.fileformat import ChatTemplateChoice
from llamapack.runtime.llama.chat_jinja import TemplateCaps, detect_caps
from llamapack.runtime.llama.chat_messages import specialized_family
from llamapack.runtime.llama.chat_reasoning import ReasoningTags, calculate_diff_split
from llamapack.runtime.llama.chat_template import (
    CHATML_TEMPLATE,
    ChatFormatter,
    ChatTemplateError,
    continues_final_message,
)
from tests.support.llama_cpp_source import llama_cpp_source

ROOT = Path(__file__).resolve().parents[3]
TEMPLATES = Path(__file__).with_name("chat_templates")
GGUF = ChatTemplateChoice("gguf", "gguf")


@dataclass
class FakeModel:
    """What ChatFormatter reads from a model."""

    template: str | None = None
    bos_text: str = "<s>"
    eos_text: str = "</s>"
    add_bos: bool = False

    def chat_template(self) -> str | None:
        return self.template


def formatter(template: str, **options: Any) -> ChatFormatter:
    model_options = {k: options.pop(k) for k in ("bos_text", "eos_text", "add_bos") if k in options}
    return ChatFormatter(FakeModel(template, **model_options), GGUF, **options)


def vendored(name: str) -> str:
    return (TEMPLATES / f"{name}.jinja").read_text()


def user(text: Any) -> dict[str, Any]:
    return {"role": "user", "content": text}


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
# The suite's TEST_TOOL (tools/server/tests/unit/test_tool_call.py).
TEST_TOOL = {
    "type": "function",
    "function": {
        "name": "test",
        "description": "",
        "parameters": {
            "type": "object",
            "properties": {"success": {"type": "boolean", "const": True}},
            "required": ["success"],
        },
    },
}
# Mistral's templates want call ids of 9 letters and digits.
TOOL_CALL = {
    "type": "function",
    "id": "call12345",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
}
TOOL_CONVERSATION = [
    {"role": "system", "content": "You are helpful."},
    user("Weather in Paris?"),
    {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]},
    {"role": "tool", "content": "sunny", "tool_call_id": "call12345", "name": "get_weather"},
    user("Thanks!"),
]


# ------------------------------------------------------------ exact prompts


def test_qwen_renders_chatml_with_tools_and_a_parsed_tool_call():
    text = (
        formatter(vendored("Qwen-Qwen2.5-7B-Instruct")).format(TOOL_CONVERSATION, tools=[WEATHER_TOOL]).text
    )
    assert text == (
        "<|im_start|>system\nYou are helpful.\n\n# Tools\n\n"
        "You may call one or more functions to assist with "
        "the user query.\n\nYou are provided with function si"
        "gnatures within <tools></tools> XML tags:\n<tools>\n"
        '{"type": "function", "function": {"name": "get_weather", "description": "Get the weather", '
        '"parameters": {"type": "object", "properties": {"ci'
        'ty": {"type": "string"}}, "required": ["city"]}}}\n'
        "</tools>\n\nFor each function call, return a json object with function name and arguments within "
        '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": '
        "<args-json-object>}\n</tool_call><|im_end|>\n<|im_start|>user\nWeather in Paris?<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
        "</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>\nsunny\n</tool_response><|im_end|>\n"
        "<|im_start|>user\nThanks!<|im_end|>\n<|im_start|>assistant\n"
    )


def test_llama_3_writes_todays_date_and_strips_the_bos_the_tokenizer_adds():
    chat = formatter(
        vendored("meta-llama-Llama-3.3-70B-Instruct"), bos_text="<|begin_of_text|>", add_bos=True
    )
    text = chat.format([{"role": "system", "content": "Book"}, user("What is the best book")]).text
    today = datetime.date.today().strftime("%d %b %Y")
    assert text == (
        "<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
        f"Today Date: {today}\n\nBook<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
        "What is the best book<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    kept = formatter(
        vendored("meta-llama-Llama-3.3-70B-Instruct"), bos_text="<|begin_of_text|>", add_bos=False
    )
    assert kept.format([user("Hi")]).text.startswith("<|begin_of_text|><|start_header_id|>system")


def test_gemma_merges_the_system_message_into_the_first_user_turn():
    chat = formatter(vendored("google-gemma-2-2b-it"), bos_text="<bos>", add_bos=True)
    assert not chat.caps.supports_system_role
    turns = [
        {"role": "system", "content": "Be brief."},
        user("Hi"),
        {"role": "assistant", "content": "Hello"},
    ]
    text = chat.format([*turns, user("Bye")]).text
    assert text == (
        "<start_of_turn>user\nBe brief.\nHi<end_of_turn>\n<start_of_turn>model\nHello<end_of_turn>\n"
        "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
    )


def test_mistral_nemo_puts_the_system_message_and_tools_in_the_last_user_turn():
    chat = formatter(vendored("mistralai-Mistral-Nemo-Instruct-2407"), bos_text="<s>", add_bos=True)
    conversation = [*TOOL_CONVERSATION[:4], {"role": "assistant", "content": "Sunny."}, user("Thanks!")]
    text = chat.format(conversation, tools=[WEATHER_TOOL]).text
    assert text == (
        '[INST]Weather in Paris?[/INST][TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}, '
        '"id": "call12345"}]</s>[TOOL_RESULTS]{"content": sun'
        'ny, "call_id": "call12345"}[/TOOL_RESULTS]Sunny.</s>'
        '[AVAILABLE_TOOLS][{"type": "function", "function": {"name": "get_weather", "description": "Get the '
        'weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": '
        '["city"]}}}][/AVAILABLE_TOOLS][INST]You are helpful.\n\nThanks![/INST]'
    )


# The suite's test_template.py::test_reasoning: the end of the prompt per template and
# --reasoning setting, with no tools, no tools given as [], and one tool.
REASONING_ENDINGS = [
    ("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B", "on", "<think>\n"),
    ("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B", "auto", "<think>\n"),
    ("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B", "off", "<think>\n</think>"),
    ("Qwen-Qwen3-0.6B", "auto", "<|im_start|>assistant\n"),
    ("Qwen-Qwen3-0.6B", "off", "<|im_start|>assistant\n<think>\n\n</think>\n\n"),
    ("Qwen-QwQ-32B", "auto", "<|im_start|>assistant\n<think>\n"),
    ("Qwen-QwQ-32B", "off", "<|im_start|>assistant\n<think>\n</think>"),
    ("CohereForAI-c4ai-command-r7b-12-2024-tool_use", "auto", "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>"),
    ("CohereForAI-c4ai-command-r7b-12-2024-tool_use", "off",
     "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|><|START_THINKING|><|END_THINKING|>"),
]  # fmt: skip
# llama-server's --reasoning sets enable_thinking among its default template kwargs.
REASONING_KWARGS: dict[str, dict[str, Any] | None] = {
    "on": {"enable_thinking": True},
    "off": {"enable_thinking": False},
    "auto": None,
}


@pytest.mark.parametrize("tools", [None, [], [TEST_TOOL]], ids=["none", "empty", "one"])
@pytest.mark.parametrize(("name", "reasoning", "ending"), REASONING_ENDINGS)
def test_reasoning_settings_end_the_prompt_as_llama_server(name, reasoning, ending, tools):
    chat = formatter(vendored(name), template_kwargs=REASONING_KWARGS[reasoning])
    assert chat.format([user("What is today?")], tools=tools).text.endswith(ending)


@pytest.mark.parametrize("tools", [None, [], [TEST_TOOL]], ids=["none", "empty", "one"])
@pytest.mark.parametrize(
    ("name", "date_format"),
    [("meta-llama-Llama-3.3-70B-Instruct", "%d %b %Y"), ("fireworks-ai-llama-3-firefunction-v2", "%b %d %Y")],
)
def test_todays_date_is_inside_the_prompt(name, date_format, tools):
    text = formatter(vendored(name)).format([user("What is today?")], tools=tools).text
    assert datetime.date.today().strftime(date_format) in text


@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_add_generation_prompt(add_generation_prompt):
    chat = formatter(vendored("meta-llama-Llama-3.3-70B-Instruct"))
    text = chat.format([user("What is today?")], add_generation_prompt=add_generation_prompt).text
    assert ("<|start_header_id|>assistant<|end_header_id|>" in text) == add_generation_prompt
    assert text.endswith(
        "<|start_header_id|>assistant<|end_header_id|>\n\n" if add_generation_prompt else "<|eot_id|>"
    )


def test_request_kwargs_override_the_servers_enable_thinking_on_qwen3():
    chat = formatter(vendored("Qwen-Qwen3-0.6B"), template_kwargs={"enable_thinking": False})
    assert chat.format([user("Hi")]).text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    thinking = chat.format([user("Hi")], template_kwargs={"enable_thinking": True}).text
    assert thinking.endswith("<|im_start|>assistant\n")
    with pytest.raises(ChatTemplateError, match='^invalid type for "enable_thinking"'):
        chat.format([user("Hi")], template_kwargs={"enable_thinking": "false"})


# A few of llama.cpp's tests/test-chat-template.cpp cases, Jinja expectations: the
# conversation below, the template, BOS and EOS texts, and the expected prompt.
CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant"},
    user("Hello"),
    {"role": "assistant", "content": "Hi there"},
    user("Who are you"),
    {"role": "assistant", "content": "   I am an assistant   "},
    user("Another question"),
]
LLAMA_CPP_CASES = [
    (  # mistralai/Mistral-7B-Instruct-v0.2: no system role, so it is merged into the first user turn
        "{{ bos_token }}{% for message in messages %}{% if (me"
        "ssage['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alterna"
        "te user/assistant/user/assistant/...') }}{% endif %}"
        "{% if message['role'] == 'user' %}{{ '[INST] ' + mess"
        "age['content'] + ' [/INST]' }}{% elif message['role']"
        " == 'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and "
        "assistant roles are supported!') }}{% endif %}{% endfor %}",
        "", "</s>",
        "[INST] You are a helpful assistant\nHello [/INST]Hi there</s>[INST] Who are you [/INST]   I am an "
        "assistant   </s>[INST] Another question [/INST]",
    ),
    (  # mlabonne/AlphaMonarch-7B: BOS written by the template, kept when the vocabulary adds none
        "{% for message in messages %}{{bos_token + message["
        "'role'] + '\\n' + message['content'] + eos_token + "
        "'\\n'}}{% endfor %}{% if add_generation_prompt %}{{ bos_token + 'assistant\\n' }}{% endif %}",
        "<s>", "</s>",
        "<s>system\nYou are a helpful assistant</s>\n<s>use"
        "r\nHello</s>\n<s>assistant\nHi there</s>\n<s>user\n"
        "Who are you</s>\n<s>assistant\n   I am an assistant "
        "  </s>\n<s>user\nAnother question</s>\n<s>assistant\n",
    ),
    (  # google/gemma-7b-it: raises on a system message, trims content
        "{% if messages[0]['role'] == 'system' %}{{ raise_e"
        "xception('System role not supported') }}{% endif %}"
        "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alterna"
        "te user/assistant/user/assistant/...') }}{% endif %}"
        "{% if (message['role'] == 'assistant') %}{% set role"
        " = 'model' %}{% else %}{% set role = message['role'] "
        "%}{% endif %}{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}",
        "", "",
        "<start_of_turn>user\nYou are a helpful assistant\nHello<end_of_turn>\n<start_of_turn>model\nHi there"
        "<end_of_turn>\n<start_of_turn>user\nWho are you<en"
        "d_of_turn>\n<start_of_turn>model\nI am an assistant"
        "<end_of_turn>\n<start_of_turn>user\nAnother question<end_of_turn>\n<start_of_turn>model\n",
    ),
    (  # openchat/openchat-3.5-0106: a string method (title)
        "{{ bos_token }}{% for message in messages %}{{ 'GPT4 Correct ' + message['role'].title() + ': ' + "
        "message['content'] + '<|end_of_turn|>'}}{% endfor %}{% if add_generation_prompt %}"
        "{{ 'GPT4 Correct Assistant:' }}{% endif %}",
        "", "",
        "GPT4 Correct System: You are a helpful assistant<|e"
        "nd_of_turn|>GPT4 Correct User: Hello<|end_of_turn|>"
        "GPT4 Correct Assistant: Hi there<|end_of_turn|>GPT4 "
        "Correct User: Who are you<|end_of_turn|>GPT4 Correct"
        " Assistant:    I am an assistant   <|end_of_turn|>GPT4 Correct User: Another question<|end_of_turn|>"
        "GPT4 Correct Assistant:",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("template", "bos", "eos", "expected"), LLAMA_CPP_CASES)
def test_llama_cpp_chat_template_cases(template, bos, eos, expected):
    assert formatter(template, bos_text=bos, eos_text=eos).format(CONVERSATION).text == expected


# ------------------------------------------------------------ the whole vendored set


SOURCE = llama_cpp_source()
ALL_TEMPLATES = sorted((SOURCE / "models" / "templates").glob("*.jinja"))
# Templates that refuse a tool result followed by a user turn, with no assistant
# answer between: they require strictly alternating user and assistant turns.
ALTERNATING_ONLY = {
    "Mistral-Small-3.2-24B-Instruct-2506",
    "mistralai-Ministral-3-14B-Reasoning-2512",
    "mistralai-Mistral-Nemo-Instruct-2407",
}
# Gemma 2 knows user and model turns only: a tool result breaks its alternation.
USER_AND_MODEL_ONLY = {"google-gemma-2-2b-it"}


@pytest.mark.parametrize("path", ALL_TEMPLATES, ids=lambda p: p.stem)
def test_every_llama_cpp_template_renders_a_tool_conversation(path):
    chat = formatter(path.read_text(), bos_text="<s>", eos_text="</s>")
    if path.stem in ALTERNATING_ONLY | USER_AND_MODEL_ONLY:
        with pytest.raises(ChatTemplateError, match="alternate"):
            chat.format(TOOL_CONVERSATION, tools=[WEATHER_TOOL])
    else:
        text = chat.format(TOOL_CONVERSATION, tools=[WEATHER_TOOL]).text
        assert "Weather in Paris?" in text and "Thanks!" in text
    # With the assistant's answer between the tool result and the next question, the others do too.
    answered = [*TOOL_CONVERSATION[:4], {"role": "assistant", "content": "It is sunny."}, user("Thanks!")]
    if path.stem in USER_AND_MODEL_ONLY:
        with pytest.raises(ChatTemplateError, match="alternate"):
            chat.format(answered, tools=[WEATHER_TOOL])
        return
    text = chat.format(answered, tools=[WEATHER_TOOL]).text
    assert "Weather in Paris?" in text and "It is sunny." in text and "Thanks!" in text


def test_the_copies_here_are_llama_cpps_own():
    # The files copied here are byte for byte llama.cpp's, so the set above covers them.
    for copy in TEMPLATES.glob("*.jinja"):
        assert copy.read_bytes() == (SOURCE / "models" / "templates" / copy.name).read_bytes(), copy.name


def test_every_test_chat_template_cpp_case():
    """All of llama.cpp's tests/test-chat-template.cpp cases, Jinja and built-in."""
    cases = _test_chat_template_cases((SOURCE / "tests" / "test-chat-template.cpp").read_text())
    assert len(cases) > 30
    llama_cpp = _has_llama_cpp()
    for case in cases:
        conversation = CONVERSATION + [{"role": r, "content": t} for r, t in case["extra"]]
        model = FakeModel(case["template_str"], case.get("bos_token", ""), case.get("eos_token", ""))
        if case.get("supported_with_jinja", "true").startswith("true"):
            expected = case.get("expected_output_jinja") or case["expected_output"]
            assert ChatFormatter(model, GGUF).format(conversation).text == expected, case["name"]
        if llama_cpp:
            builtin = ChatFormatter(model, GGUF, jinja=False)
            assert builtin.format(conversation).text == case["expected_output"], case["name"]


def _test_chat_template_cases(source: str) -> list[dict[str, Any]]:
    table = source[
        source.index("std::vector<TestCase> test_cases {") : source.index("std::vector<char> formatted_chat")
    ]
    literal = r'(?:U8C\()?"((?:[^"\\]|\\.)*)"\)?'
    cases = []
    for block in re.split(r"\n        \{\n", table)[1:]:
        case: dict[str, Any] = {"extra": []}
        for key, value in re.findall(r"/\* \.(\w+)\s*=?\s*\*/\s*(.*?),?\n", block):
            value = value.strip().rstrip(",")
            if key == "extra_conversation":
                pairs = re.findall(r'\{"([^"]*)", "((?:[^"\\]|\\.)*)"\}', value)
                case["extra"] = [tuple(ast.literal_eval(f'"{part}"') for part in pair) for pair in pairs]
                continue
            match = re.fullmatch(literal, value)
            case[key] = ast.literal_eval(f'"{match.group(1)}"') if match else value
        cases.append(case)
    return cases


def _has_llama_cpp() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


# ------------------------------------------------------------ messages as llama-server passes them

ECHO_MESSAGES = "{{ messages | tojson }}"


def passed(template: str, messages: list[dict[str, Any]], **options: Any) -> list[dict[str, Any]]:
    """The `messages` a template receives (the template prints them as JSON)."""
    messages_seen: list[dict[str, Any]] = json.loads(formatter(template).format(messages, **options).text)
    return messages_seen


def test_messages_are_written_back_as_llama_server_writes_them():
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "Hi", "name": None},
        {"role": "assistant", "content": None, "reasoning_content": "Let me look.",
         "tool_calls": [{"type": "function", "id": "c1", "function": {"name": "f", "arguments": {"x": 1}}}]},
        {"role": "tool", "content": "42", "tool_call_id": "c1", "name": "f"},
        {"role": "assistant", "content": []},
    ]  # fmt: skip
    # |tojson reads every field: to llama.cpp, a template that reads arguments as an object.
    assert passed(ECHO_MESSAGES, messages) == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "", "reasoning_content": "Let me look.",
         "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {"x": 1}}, "id": "c1"}]},
        {"role": "tool", "content": "42", "name": "f", "tool_call_id": "c1"},
        {"role": "assistant", "content": ""},
    ]  # fmt: skip


def test_typed_parts_reach_templates_that_read_them_and_are_joined_for_the_others():
    parts = [{"type": "text", "text": "What is"}, {"type": "text", "text": "the best book"}]
    reads_both = (
        "{% for m in messages %}{% if m.content is string %}{{ m.content }}{% else %}"
        "{% for p in m.content %}[{{ p.text }}]{% endfor %}{% endif %}{% endfor %}"
    )
    assert formatter(reads_both).format([user(parts), user("plain")]).text == "[What is][the best book]plain"
    strings_only = "{% for m in messages %}<{{ m.content }}>{% endfor %}"
    assert formatter(strings_only).format([user(parts)]).text == "<What is\nthe best book>"
    parts_only = "{% for m in messages %}{{ m.content[0].text }}{% endfor %}"
    chat = formatter(parts_only)
    assert (chat.caps.supports_typed_content, chat.caps.supports_string_content) == (True, False)
    assert chat.format([user("a string becomes a part")]).text == "a string becomes a part"


def test_tool_call_arguments_are_objects_for_templates_that_read_them_and_text_otherwise():
    call = {"role": "assistant", "content": "", "tool_calls": [TOOL_CALL]}
    calls = "{% for m in messages %}{% for c in m.tool_calls or [] %}CALL{% endfor %}{% endfor %}"
    reads_fields = calls.replace(
        "CALL", "{% for k, v in c.function.arguments.items() %}{{ k }}={{ v }}{% endfor %}"
    )
    assert formatter(reads_fields).caps.supports_object_arguments
    assert formatter(reads_fields).format([call]).text == "city=Paris"
    as_text = calls.replace("CALL", "{{ c.function.name }}({{ c.function.arguments }})")
    assert not formatter(as_text).caps.supports_object_arguments
    assert formatter(as_text).format([call]).text == 'get_weather({"city": "Paris"})'
    # An object from the client reaches such a template as llama.cpp writes JSON: compact.
    given_an_object = {**TOOL_CALL, "function": {"name": "f", "arguments": {"city": "Paris", "days": [1, 2]}}}
    assert formatter(as_text).format([{**call, "tool_calls": [given_an_object]}]).text == (
        'f({"city":"Paris","days":[1,2]})'
    )
    broken = {
        "role": "assistant",
        "tool_calls": [{**TOOL_CALL, "function": {"name": "f", "arguments": "{oops"}}],
    }
    with pytest.raises(ChatTemplateError, match="^Failed to parse tool call arguments as JSON"):
        formatter(reads_fields).format([broken])


def test_developer_becomes_system_and_tools_stay_undefined_without_any():
    template = (
        "{{ messages[0].role }}: {{ messages[0].content }}|{{ tools is defined }} "
        "{{ add_generation_prompt is defined }}"
    )
    developer = [{"role": "developer", "content": "Rules."}, user("Hi")]
    assert formatter(template).format(developer).text == "system: Rules.|False True"
    assert formatter(template).format(developer, tools=[], add_generation_prompt=False).text == (
        "system: Rules.|False False"
    )
    assert formatter(template).format(developer, tools=[WEATHER_TOOL]).text == "system: Rules.|True True"
    tools = json.loads(formatter("{{ tools | tojson }}").format([user("x")], tools=[TEST_TOOL]).text)
    assert tools == [TEST_TOOL]
    bare = {"type": "function", "function": {"name": "bare"}}
    tools = json.loads(formatter("{{ tools | tojson }}").format([user("x")], tools=[bare]).text)
    assert tools == [{"type": "function", "function": {"name": "bare", "description": "", "parameters": {}}}]


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        ("hi", "Expected 'messages' to be an array"),
        ([{"content": "no role"}], "^All non-assistant messages must contain 'content'|Missing 'role'"),
        ([{"role": "user"}], "^All non-assistant messages must contain 'content'$"),
        ([{"role": "assistant"}], "^Assistant message must contain either 'content' or 'tool_calls'!$"),
        ([{"role": "user", "content": 3}], "^Expected 'content' to be a string or an array$"),
        ([user([{"type": "image_url", "image_url": {"url": "x"}}])],
         '^Failed to parse messages: Unsupported content part type: "image_url"$'),
        ([user([{"text": "x"}])], "^Failed to parse messages: Missing content part type"),
        ([{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]}],
         "^Failed to parse messages: Missing tool call type"),
        ([{"role": "assistant", "tool_calls": [{"type": "function"}]}],
         "^Failed to parse messages: Missing tool call function"),
        ([{"role": "assistant", "tool_calls": [{"type": "function", "function": {"arguments": "{}"}}]}],
         "^Failed to parse messages: Missing tool call name"),
        (["not an object"], "^Failed to parse messages: Expected 'message' to be an object"),
        ([{"role": 7, "content": "x"}], "^Failed to parse messages: 'role' must be a string"),
    ],
)  # fmt: skip
def test_requests_llama_server_refuses_are_refused_in_one_line(messages, message):
    with pytest.raises(ChatTemplateError, match=message) as refused:
        formatter(CHATML_TEMPLATE).format(messages)
    assert "\n" not in str(refused.value)


def test_tools_llama_server_refuses_are_refused():
    chat = formatter(CHATML_TEMPLATE)
    with pytest.raises(ChatTemplateError, match="^Failed to parse tools: Unsupported tool type"):
        chat.format([user("x")], tools=[{"type": "retrieval"}])
    with pytest.raises(ChatTemplateError, match="^Failed to parse tools: Missing tool function"):
        chat.format([user("x")], tools=[{"type": "function"}])


def test_an_unknown_role_is_the_templates_call():
    # llama-server passes any role through; the template decides.
    assert formatter(CHATML_TEMPLATE).format([{"role": "narrator", "content": "Once"}]).text == (
        "<|im_start|>narrator\nOnce<|im_end|>\n<|im_start|>assistant\n"
    )


# ------------------------------------------------------------ the Jinja environment


def test_template_errors_are_one_line_chat_template_errors():
    with pytest.raises(ChatTemplateError, match="^Only user turns, please$"):
        formatter("{{ raise_exception('Only user turns,\n please') }}", bos_text="").format([user("x")])
    with pytest.raises(ChatTemplateError, match="^the chat template failed: TypeError"):
        formatter("{{ messages[0].content + 1 }}").format([user("x")])
    with pytest.raises(ChatTemplateError, match=r"^the chat template does not compile: .* \(line 1\)$"):
        formatter("{% for m in messages %}")


def test_strftime_now_and_the_date_variables():
    chat = formatter("{{ strftime_now('%Y-%m-%d') }}|{{ datetime }}|{{ date_string }}")
    today = datetime.date.today()
    assert chat.format([user("x")]).text == (
        f"{today:%Y-%m-%d}|{today.strftime('%b %d %Y')}|{today.strftime('%d %b %Y')}"
    )


def test_tojson_is_hugging_faces():
    chat = formatter(
        "{{ messages[0].content | tojson }}|{{ tools[0] | tojson(indent=1) }}|"
        "{{ tools[0].function.parameters | tojson(separators=(',', ':'), sort_keys=true) }}|"
        "{{ messages[0].content | tojson(ensure_ascii=true) }}"
    )
    text = chat.format([user("café")], tools=[TEST_TOOL]).text
    plain, indented, compact, ascii_text = text.split("|")
    assert plain == '"café"' and ascii_text == '"caf\\u00e9"'
    assert indented.startswith('{\n "type": "function",\n "function": {\n  "name": "test",')
    assert (
        compact
        == '{"properties":{"success":{"const":true,"type":"boolean"}},"required":["success"],"type":"object"}'
    )


def test_llama_cpp_leniencies_that_its_templates_rely_on():
    template = (
        "{% set seen = [] %}{% for m in messages %}{% if loop.index > 2 %}{% break %}{% endif %}"
        "{% do seen.append(m.role) if false %}{{ seen.append(m.role) or '' }}{% endfor %}"
        "{{ seen | join(',') }}|{{ 'a' + missing.deeper.still }}|{{ 'b' + none }}|"
        "{{ messages | map(attribute='role') | list | length }}{{ (messages | map(attribute='role'))[0] }}|"
        "{% generation %}kept{% endgeneration %}"
    )
    messages = [user("1"), {"role": "assistant", "content": "2"}, user("3")]
    assert formatter(template.replace("{% do seen.append(m.role) if false %}", "")).format(messages).text == (
        "user,assistant|a|b|3user|kept"
    )


def test_the_sandbox_still_refuses_what_it_should():
    # Python's internals read as undefined; calling a mutating method is refused.
    assert (
        formatter("{{ messages.__class__.__mro__ }}{{ messages[0].content }}").format([user("x")]).text == "x"
    )
    with pytest.raises(ChatTemplateError, match="unsafe"):
        formatter("{% set d = {} %}{{ d.update({'a': 1}) }}{{ messages[0].content }}").format([user("x")])


# ------------------------------------------------------------ capabilities


def test_capabilities_as_llama_cpp_finds_them():
    # tests/test-jinja.cpp's test_caps cases.
    string_only = detect_caps(
        "{% for message in messages %}{{ message['role'] + ': ' + message['content'] }}{% endfor %}"
    )
    assert string_only.supports_string_content and not string_only.supports_typed_content
    raises_on_string = detect_caps(
        "{% for message in messages %}{% for content in message"
        "['content'] | selectattr('type', 'equalto', 'text') %}"
        "{{ content['text'] }}{% endfor %}{% endfor %}"
    )
    assert not raises_on_string.supports_string_content and raises_on_string.supports_typed_content
    drops_string = detect_caps("{% for message in messages %}{{ message['content'][0]['text'] }}{% endfor %}")
    assert not drops_string.supports_string_content and drops_string.supports_typed_content
    assert detect_caps(vendored("Qwen-Qwen3-0.6B")) == TemplateCaps(supports_object_arguments=True)
    llama = detect_caps(vendored("meta-llama-Llama-3.3-70B-Instruct"))
    assert (
        not llama.supports_parallel_tool_calls
        and llama.supports_tools
        and not llama.supports_reasoning_effort
    )
    effort = detect_caps("{% if reasoning_effort == 'high' %}think hard{% endif %}{{ messages[0].content }}")
    assert effort.supports_reasoning_effort
    preserved = detect_caps(
        "{% for m in messages %}{% if m.reasoning_content and"
        " preserve_thinking %}<think>{{ m.reasoning_content }}"
        "</think>{% endif %}{{ m.content }}{% endfor %}"
    )
    assert preserved.supports_preserve_reasoning


def test_server_kwargs_set_llama_cpps_reasoning_variables():
    template = "{{ preserve_thinking }} {{ clear_thinking }} {{ reasoning_effort }} {{ reasoning_strength }}"
    assert formatter(template).format([user("x")]).text == "True False  "
    chat = formatter(template, template_kwargs={"preserve_reasoning": False, "reasoning_effort": "low"})
    assert chat.format([user("x")]).text == "False True low low"


# ------------------------------------------------------------ families llama.cpp adjusts for


def test_gpt_oss_reads_thinking_and_ends_a_finished_turn_with_end():
    template = (
        "{% for m in messages %}<|start|>{{ m.role }}{% if m.thinking %}<|channel|>analysis<|message|>"
        "{{ m.thinking }}<|end|>{% endif %}<|channel|>final<|message|>{{ m.content }}"
        "{% if loop.last and m.role == 'assistant' %}<|return|>{% else %}<|end|>{% endif %}{% endfor %}"
    )
    assert specialized_family(template) == "gpt-oss"
    messages = [user("Hi"), {"role": "assistant", "content": "Hello", "reasoning_content": "Greet."}]
    assert formatter(template).format(messages, add_generation_prompt=False).text == (
        "<|start|>user<|channel|>final<|message|>Hi<|end|><|start|>assistant<|channel|>analysis<|message|>"
        "Greet.<|end|><|channel|>final<|message|>Hello<|end|>"
    )


def test_older_gemma_4_templates_get_tool_results_inside_the_assistant_turn():
    template = "{# '<|tool_call>call:' #}{{ messages | tojson }}"
    messages = [*TOOL_CONVERSATION[1:4], {"role": "assistant", "content": "Sunny."}, user("Thanks!")]
    assert json.loads(formatter(template).format(messages).text) == [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "get_weather",
         "arguments": {"city": "Paris"}}, "id": "call12345"}],
         "tool_responses": [{"name": "get_weather", "response": "sunny"}], "content": "Sunny."},
        {"role": "user", "content": "Thanks!"},
    ]  # fmt: skip


def test_ministral_3_reads_content_and_reasoning_as_blocks():
    template = "{# [SYSTEM_PROMPT] [TOOL_CALLS] [ARGS] #}{{ messages | tojson }}"
    messages = [user("Hi"), {"role": "assistant", "content": "Hello", "reasoning_content": "Hm."}]
    assert json.loads(formatter(template).format(messages).text)[1] == {
        "role": "assistant",
        "content": [{"type": "thinking", "thinking": "Hm."}, {"type": "text", "text": "Hello"}],
    }


# ------------------------------------------------------------ where templates come from


def test_a_gguf_without_a_template_gets_chatml_as_llama_server_does():
    chat = ChatFormatter(FakeModel(None), GGUF)
    assert chat.source_text == CHATML_TEMPLATE and chat.uses_jinja and chat.label == "gguf"
    assert (
        chat.format([user("Hi")], tools=[TEST_TOOL]).text
        == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_a_jinja_choice_is_checked_when_loaded_and_a_gguf_one_when_used():
    refusing = "{{ raise_exception('needs a system message') if messages[0].role != 'system' }}"
    with pytest.raises(
        ChatTemplateError, match="^the chat template 'my.jinja' is not supported: needs a system"
    ):
        ChatFormatter(FakeModel(), ChatTemplateChoice("jinja", "my.jinja", text=refusing))
    chat = ChatFormatter(FakeModel(refusing), GGUF)  # llama-server starts with it, and requests fail
    with pytest.raises(ChatTemplateError, match="^needs a system message$"):
        chat.format([user("Hi")])
    literal = ChatFormatter(
        FakeModel(), ChatTemplateChoice("jinja", "--chat-template", text="This is not a chat template, it is")
    )
    assert literal.format([user("Hi")]).text == "This is not a chat template, it is"
    assert literal.source_text == "This is not a chat template, it is" and literal.label == "--chat-template"


# ------------------------------------------------------------ llama.cpp's built-in templates (--no-jinja)

needs_engine = pytest.mark.skipif(not _has_llama_cpp(), reason="llama-cpp-python is not installed")


def builtin(name: str, **options: Any) -> ChatFormatter:
    return ChatFormatter(FakeModel(), ChatTemplateChoice("builtin", name), **options)


@needs_engine
def test_builtin_templates_by_name_as_the_suite_expects():
    # test_chat_completion.py::test_chat_template (its prompt, less the BOS the tokenizer adds)
    book = [{"role": "system", "content": "Book"}, user("What is the best book")]
    assert builtin("llama3").format(book).text == (
        "<|start_header_id|>system<|end_header_id|>\n\nBook<|eot_id|><|start_header_id|>user<|end_header_id|>"
        "\n\nWhat is the best book<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    # test_chat_completion.py::test_apply_chat_template
    test = [{"role": "system", "content": "You are a test."}, user("Hi there")]
    assert builtin("command-r").format(test).text == (
        "<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>You are a test.<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|>"
        "<|USER_TOKEN|>Hi there<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>"
    )
    parts = [{"type": "text", "text": "What is"}, {"type": "text", "text": "the best book"}]
    assert builtin("chatml", jinja=False).format([user(parts)]).text == (
        "<|im_start|>user\nWhat is\nthe best book<|im_end|>\n<|im_start|>assistant\n"
    )
    assert builtin("gemma").format([user("Hi")], add_generation_prompt=False).text == (
        "<start_of_turn>user\nHi<end_of_turn>\n"
    )


@needs_engine
def test_builtin_templates_take_no_tools_but_chatml_under_jinja_does():
    with pytest.raises(
        ChatTemplateError, match="^tools need a Jinja chat template; 'gemma' is a llama.cpp built-in"
    ):
        builtin("gemma").format([user("Hi")], tools=[TEST_TOOL])
    assert builtin("chatml").uses_jinja and builtin("chatml").format([user("Hi")], tools=[TEST_TOOL]).text
    with pytest.raises(ChatTemplateError, match="^tools param requires --jinja flag$"):
        builtin("chatml", jinja=False).format([user("Hi")], tools=[TEST_TOOL])
    assert not builtin("llama3").uses_jinja and builtin("llama3").source_text is None


@needs_engine
def test_no_jinja_applies_a_gguf_template_through_llama_cpps_detection():
    chat = formatter(vendored("meta-llama-Llama-3.3-70B-Instruct"), jinja=False)
    assert not chat.uses_jinja
    assert chat.format([user("Hi")]).text == (
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_"
        "id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    with pytest.raises(ChatTemplateError, match="is not supported: this custom template is not supported"):
        ChatFormatter(FakeModel(), ChatTemplateChoice("jinja", "x", text="{{ 'no markers' }}"), jinja=False)


@needs_engine
def test_a_chat_template_flag_is_a_builtin_name_or_a_jinja_text():
    from llamapack.runtime.llama.chat_template import builtin_template_names, user_template_choice

    assert {"chatml", "llama3", "gemma"} <= set(builtin_template_names())
    assert user_template_choice("llama3", "flag") == ChatTemplateChoice("builtin", "llama3", "flag")
    assert user_template_choice("{{ 'x' }}") == ChatTemplateChoice(
        "jinja", "--chat-template", text="{{ 'x' }}"
    )


# ------------------------------------------------------------ continuing the last message


@pytest.mark.parametrize(
    ("prefill", "continued"),
    [("Whill", "Whill"), ([{"type": "text", "text": "Wh"}, {"type": "text", "text": "ill"}], "Wh\n\nill")],
)
def test_a_last_assistant_message_is_continued(prefill, continued):
    # test_chat_completion.py::test_chat_template_assistant_prefill
    messages = [
        {"role": "system", "content": "Book"},
        user("What is the best book"),
        {"role": "assistant", "content": prefill},
    ]
    assert continues_final_message(messages)
    chat = formatter(vendored("meta-llama-Llama-3.3-70B-Instruct"))
    text = chat.format(messages, add_generation_prompt=False, continue_final_message=True).text
    assert text.endswith(
        "<|start_header_id|>user<|end_header_id|>\n\nWhat is the best book<|eot_id|>"
        f"<|start_header_id|>assistant<|end_header_id|>\n\n{continued}"
    )


def test_continuing_is_refused_where_llama_server_refuses_it():
    chat = formatter(CHATML_TEMPLATE)
    answered = [user("Hi"), {"role": "assistant", "content": "Hello"}]
    with pytest.raises(ChatTemplateError, match="^Cannot set both add_generation_prompt and continue_final"):
        chat.format(answered, continue_final_message=True)
    calling = [user("Hi"), {"role": "assistant", "tool_calls": [TOOL_CALL]}]
    with pytest.raises(ChatTemplateError, match="^Cannot continue an assistant message that contains tool"):
        chat.format(calling, add_generation_prompt=False, continue_final_message=True)
    assert not continues_final_message([user("Hi")])
    with pytest.raises(ChatTemplateError, match="^Cannot have 2 or more assistant messages at the end"):
        continues_final_message([*answered, {"role": "assistant", "content": "again"}])


def test_reasoning_is_continued_inside_the_tags_the_analysis_found():
    chat = formatter(vendored("Qwen-Qwen3-0.6B"))
    assert chat.reasoning == ReasoningTags(True, "<think>\n", "\n</think>\n\n")
    thinking = [user("Q"), {"role": "assistant", "content": "", "reasoning_content": "Hmm"}]
    text = chat.format(thinking, add_generation_prompt=False, continue_final_message=True).text
    assert text == "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n<think>\nHmm"
    answered = [user("Q"), {"role": "assistant", "content": "Ans", "reasoning_content": "Hmm"}]
    text = chat.format(answered, add_generation_prompt=False, continue_final_message=True).text
    assert text == "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n<think>\nHmm\n</think>\n\nAns"


def test_thinking_is_on_by_default_only_where_the_template_reasons():
    # Reads enable_thinking, but shows no reasoning tags: llama-server leaves it off.
    no_tags = "{{ 'on' if enable_thinking else 'off' }}{% for m in messages %}{{ m.content }}{% endfor %}"
    assert formatter(no_tags).format([user("!")]).text == "off!"
    assert formatter(no_tags, template_kwargs={"enable_thinking": True}).format([user("!")]).text == "on!"
    assert formatter(vendored("Qwen-Qwen3-0.6B")).reasoning.supported
    assert not formatter(vendored("Qwen-Qwen2.5-7B-Instruct")).reasoning.supported


def test_gpt_oss_continues_in_its_analysis_channel():
    template = (
        "{# <|channel|> #}{% for m in messages %}<|start|>{{ m.role }}<|message|>{{ m.content }}<|end|>"
        "{% endfor %}"
    )
    messages = [user("Hi"), {"role": "assistant", "content": "Sure", "reasoning_content": "Easy."}]
    assert formatter(template).format(
        messages, add_generation_prompt=False, continue_final_message=True
    ).text == (
        "<|start|>user<|message|>Hi<|end|><|start|>assistant<|channel|>analysis<|message|>Easy.<|end|>"
        "<|start|>assistant<|channel|>final<|message|>Sure"
    )


# ------------------------------------------------------------ what llama.cpp's engine prints


def test_values_print_as_llama_cpps_engine_prints_them():
    template = "[{{ none }}|{{ {'a': 1} }}|{{ [1, [2, 'x']] }}|{{ 2.5 }}|{{ 3.0 }}|{{ true }}|{{ missing }}]"
    assert (
        formatter(template + "{{ messages[0].content }}").format([user("!")]).text == "[||12x|2.5|3.0|True|]!"
    )
    # |safe makes no markup: text added to it is not HTML-escaped.
    escaped = "{{ 'a '|safe + '\"quoted\" & <b>' }}{{ messages[0].content }}"
    assert formatter(escaped).format([user("!")]).text == 'a "quoted" & <b>!'


def test_the_render_comparison_is_llama_cpps():
    off = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    on = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    diff = calculate_diff_split(off, on)
    assert (diff.prefix, diff.left, diff.right) == (on, "<think>\n\n</think>\n\n", "")
    diff = calculate_diff_split("<a>one<b>", "<a>two<b>")
    assert (diff.prefix, diff.left, diff.right, diff.suffix) == ("<a>", "one", "two", "<b>")

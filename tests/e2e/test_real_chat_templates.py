"""Real chat templates, end to end through a built file.

The demo model is a base model with no template, so these tests give it one: a copy
of the Gemma GGUF with Gemma 3's own template written into its metadata by the
`gguf` package's `gguf_new_metadata` (what a model's publisher ships), and files built
with `--chat-template-file` from llama.cpp's collection of other families' templates.
Each file must render a multi-turn conversation with a system message to exactly the
text that family's template defines, and a chat completion must feed the model that
very prompt (llama-server's `__verbose` shows what the model saw).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.built_file import Server, build_file, get_json
from tests.support.llama_cpp_source import llama_cpp_templates

pytestmark = pytest.mark.e2e

# Gemma 3's template as google/gemma-3-270m-it ships it (tokenizer_config.json).
GEMMA3_TEMPLATE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"""

CONVERSATION = [
    {"role": "system", "content": "You answer in one word."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy?"},
]

# The prompt text, as llama-server shows it: a template's leading `{{ bos_token }}` is
# left out there because tokenizing the prompt adds BOS (the model sees it once).
EXPECTED = {
    "gemma3 (the GGUF's own)": (
        "<start_of_turn>user\nYou answer in one word.\n\nWhat is the capital of France?<end_of_turn>\n"
        "<start_of_turn>model\nParis.<end_of_turn>\n"
        "<start_of_turn>user\nAnd of Italy?<end_of_turn>\n"
        "<start_of_turn>model\n"
    ),
    "Qwen-Qwen2.5-7B-Instruct": (
        "<|im_start|>system\nYou answer in one word.<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
        "<|im_start|>assistant\nParis.<|im_end|>\n"
        "<|im_start|>user\nAnd of Italy?<|im_end|>\n"
        "<|im_start|>assistant\n"
    ),
    # The system message joins the last user turn; eos_token is the vocabulary's (Gemma's <eos>).
    "mistralai-Mistral-Nemo-Instruct-2407": (
        "[INST]What is the capital of France?[/INST]Paris.<eos>"
        "[INST]You answer in one word.\n\nAnd of Italy?[/INST]"
    ),
}


@pytest.fixture(scope="module")
def gemma_it_gguf(gemma_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Gemma GGUF as an instruct model's publisher ships it: its template inside."""
    out = tmp_path_factory.mktemp("models") / "gemma-3-270m-with-template.gguf"
    subprocess.run(
        [sys.executable, "-m", "gguf.scripts.gguf_new_metadata", str(gemma_gguf), str(out),
         "--chat-template", GEMMA3_TEMPLATE, "--force"],
        check=True, capture_output=True,
    )  # fmt: skip
    return out


@pytest.fixture(scope="module", params=list(EXPECTED))
def served(
    request: pytest.FixtureRequest,
    gemma_gguf: Path,
    gemma_it_gguf: Path,
    runtime_stub: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, Server]]:
    family: str = request.param
    folder = tmp_path_factory.mktemp("templated")
    options = ["--runtime", str(runtime_stub)]
    if family.startswith("gemma3"):
        source = gemma_it_gguf
    else:
        template = folder / f"{family}.jinja"
        template.write_text(llama_cpp_templates()[family], encoding="utf-8")
        source, options = gemma_gguf, [*options, "--chat-template-file", str(template)]
    server = Server(build_file(source, folder / "model", *options))
    try:
        server.wait_healthy(timeout=120)
        yield family, server
    finally:
        server.close()


def test_the_file_renders_the_conversation_as_the_family_template_does(served: tuple[str, Server]) -> None:
    family, server = served
    status, answer = get_json(f"{server.url}/apply-template", {"messages": CONVERSATION})
    assert status == 200, answer
    assert answer["prompt"] == EXPECTED[family]


def test_a_chat_completion_feeds_the_model_that_prompt(served: tuple[str, Server]) -> None:
    family, server = served
    status, answer = get_json(
        f"{server.url}/v1/chat/completions",
        {"messages": CONVERSATION, "max_tokens": 4, "temperature": 0, "verbose": True},
    )
    assert status == 200, answer
    assert answer["__verbose"]["prompt"] == EXPECTED[family]
    status, tokens = get_json(f"{server.url}/tokenize", {"content": EXPECTED[family], "add_special": True})
    assert status == 200, tokens
    assert answer["usage"]["prompt_tokens"] == len(tokens["tokens"])


def test_the_page_opens_in_chat_and_sends_what_the_template_renders(
    gemma_it_gguf: Path, runtime_stub: Path, tmp_path: Path
) -> None:
    """The page of a model with its own template opens in chat mode, and the
    conversation it sends is rendered by that template (what /apply-template shows)."""
    from playwright.sync_api import expect, sync_playwright

    from tests.support.browser import CHROMIUM, CHROMIUM_ARGS

    server = Server(build_file(gemma_it_gguf, tmp_path / "model", "--runtime", str(runtime_stub)))
    try:
        server.wait_healthy(timeout=120)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page()
                page.goto(server.url + "/")
                expect(page.locator("#mode-chat")).to_have_attribute("aria-pressed", "true")
                with page.expect_request("**/v1/chat/completions") as sent:
                    page.locator("#prompt").fill("What is the capital of France?")
                    page.locator("#prompt").press("Enter")
                body = sent.value.post_data_json
                assert body is not None
            finally:
                browser.close()
        status, answer = get_json(f"{server.url}/apply-template", {"messages": body["messages"]})
        assert status == 200, answer
        assert answer["prompt"] == (
            "<start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\n"
        )
    finally:
        server.close()

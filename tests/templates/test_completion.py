"""The page's completion mode in a real browser, against the real Gemma 3 270M: a base
model whose GGUF has no chat template, so the page opens with a text the model
continues in place rather than with a chat. Every run is bounded by max tokens, so
a test's time does not depend on what the model writes."""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.templates.test_page import Session, _serve, keep_writing

META = re.compile(r"^\d+ tokens · [\d.]+ tokens/s")
PROMPT = "Once upon a time, in a small village by the sea,"


@pytest.fixture(scope="module")
def base_server(gemma_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The model as it is: no chat template, so the page opens in completion."""
    yield from _serve(gemma_gguf, tmp_path_factory, template=None)


@pytest.fixture(scope="module")
def chat_flag_server(gemma_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from _serve(gemma_gguf, tmp_path_factory, "--ui-mode", "chat", template=None)


@pytest.fixture
def session(browser: Browser, base_server: str) -> Iterator[Session]:
    context = browser.new_context(viewport={"width": 1100, "height": 800})
    session = Session(context, base_server)
    try:
        yield session
    finally:
        context.close()
    assert {urlsplit(url).hostname for url in session.requests} <= {"127.0.0.1"}, session.requests
    assert session.errors == [], session.errors


def open_loaded(session: Session) -> Page:
    """The page once /props has answered (the model's name shows), its mode chosen."""
    page = session.open()
    expect(page.locator("#model-name")).to_have_text("gemma-3-270m-q4_k_m")
    return page


def set_max_tokens(page: Page, value: str) -> None:
    page.get_by_role("button", name="Settings").click()
    dialog = page.get_by_role("dialog", name="Settings")
    expect(dialog.get_by_label("System prompt")).to_be_hidden()  # a text has no system prompt
    dialog.get_by_label("Max tokens").fill(value)
    dialog.get_by_role("button", name="Done").click()
    expect(dialog).to_be_hidden()


def test_a_base_model_opens_in_completion_and_continues_the_text(session: Session) -> None:
    page = open_loaded(session)
    expect(page.locator("#app")).to_have_attribute("data-mode", "completion")
    completion = page.get_by_role("button", name="Completion", exact=True)
    expect(completion).to_have_attribute("aria-pressed", "true")
    expect(page.get_by_role("button", name="Chat", exact=True)).to_have_attribute("aria-pressed", "false")
    expect(page.locator("#composer")).to_be_hidden()
    expect(page.locator("#sidebar")).to_be_hidden()
    expect(page.locator("#chat-title")).to_have_text("Text completion")
    editor = page.get_by_label("Text", exact=True)
    expect(editor).to_be_focused()
    set_max_tokens(page, "16")
    keep_writing(page, "**/v1/completions")  # 16 tokens, streamed over several frames

    editor.fill(PROMPT)
    # Every length the text goes through while it streams, read once a frame.
    page.evaluate("""() => {
        window.lengths = [];
        const area = document.getElementById('notebook-text');
        const tick = () => { window.lengths.push(area.value.length); requestAnimationFrame(tick); };
        tick();
    }""")
    with page.expect_request("**/v1/completions") as request:
        page.get_by_role("button", name="Generate").click()
    body: Any = request.value.post_data_json
    assert body["prompt"] == PROMPT and body["max_tokens"] == 16
    assert body["stream"] is True and "messages" not in body
    expect(page.get_by_role("button", name="Generate")).to_be_visible(timeout=60_000)
    meta = page.locator("#notebook-meta")
    expect(meta).to_have_text(META)
    assert int(meta.inner_text().split()[0]) <= 16

    text = editor.input_value()
    assert text.startswith(PROMPT) and len(text) > len(PROMPT)
    grown = sorted({n for n in page.evaluate("window.lengths") if n > len(PROMPT)})
    assert len(grown) >= 2, grown  # streamed in pieces, not written once at the end

    # The result is the user's text again: editable, and kept across a reload.
    expect(editor).to_be_editable()
    editor.press("End")
    editor.press_sequentially(" THE END")
    assert editor.input_value() == text + " THE END"
    page.reload()
    expect(page.locator("#app")).to_have_attribute("data-mode", "completion")
    expect(editor).to_have_value(text + " THE END")


def test_stop_ends_a_long_run_and_the_page_stays_usable(session: Session) -> None:
    session.settings(maxTokens=400)
    page = open_loaded(session)
    keep_writing(page, "**/v1/completions")  # still writing when Stop is clicked
    editor = page.get_by_label("Text", exact=True)
    expect(editor).to_be_focused()
    editor.fill(PROMPT)
    editor.press("Control+Enter")  # the keyboard's Generate
    stop = page.get_by_role("button", name="Stop")
    expect(stop).to_be_visible()
    expect(editor).not_to_be_editable()  # while the model writes into it
    expect(page.get_by_role("button", name="Chat", exact=True)).to_be_disabled()  # not mid-run
    expect(editor).to_have_value(re.compile(re.escape(PROMPT) + r".{20}", re.S), timeout=30_000)
    stop.click()
    generate = page.get_by_role("button", name="Generate")
    expect(generate).to_be_visible(timeout=5_000)
    expect(page.locator("#notebook-meta")).to_contain_text("stopped")
    expect(page.locator("#error")).to_be_hidden()
    stopped_at = editor.input_value()
    # At least what was seen before Stop; Stop may land right after those 20 characters.
    assert stopped_at.startswith(PROMPT) and len(stopped_at) >= len(PROMPT) + 20
    tokens = int(page.locator("#notebook-meta").inner_text().split()[0])
    assert tokens < 400

    # Usable at once: edit the text, run again with a short limit.
    set_max_tokens(page, "8")
    expect(editor).to_have_value(stopped_at)  # nothing arrived after Stop
    expect(editor).to_be_editable()
    editor.fill(stopped_at + "\n\nChapter two.")
    generate.click()
    expect(page.locator("#notebook-meta")).not_to_contain_text("stopped", timeout=60_000)
    expect(page.locator("#notebook-meta")).to_have_text(META)
    expect(generate).to_be_visible()
    assert editor.input_value().startswith(stopped_at + "\n\nChapter two.")


def test_the_switch_goes_to_chat_and_back(session: Session) -> None:
    session.settings(maxTokens=8)
    page = open_loaded(session)
    editor = page.get_by_label("Text", exact=True)
    expect(editor).to_be_focused()
    editor.fill("Kept while chatting.")
    page.get_by_role("button", name="Chat", exact=True).click()
    expect(page.locator("#app")).to_have_attribute("data-mode", "chat")
    expect(page.locator("#notebook")).to_be_hidden()
    expect(page.locator("#sidebar")).to_be_visible()
    prompt = page.get_by_label("Message", exact=True)
    expect(prompt).to_be_focused()
    prompt.fill("Say hello.")
    prompt.press("Enter")
    expect(page.locator("#send")).to_be_visible(timeout=60_000)
    expect(page.locator("#log .message.assistant .meta")).to_contain_text("tokens")
    page.get_by_role("button", name="Completion", exact=True).click()
    expect(page.locator("#app")).to_have_attribute("data-mode", "completion")
    expect(editor).to_have_value("Kept while chatting.")
    expect(editor).to_be_focused()


def test_ui_mode_chat_opens_the_base_model_in_chat(browser: Browser, chat_flag_server: str) -> None:
    with urllib.request.urlopen(chat_flag_server + "props", timeout=10) as response:
        props = json.load(response)
    assert (props["ui_mode"], props["ui_mode_reason"]) == ("chat", "chosen with --ui-mode")
    context = browser.new_context(viewport={"width": 1100, "height": 800})
    try:
        page = open_loaded(Session(context, chat_flag_server))
        expect(page.locator("#app")).to_have_attribute("data-mode", "chat")
        expect(page.get_by_role("button", name="Chat", exact=True)).to_have_attribute("aria-pressed", "true")
        expect(page.get_by_label("Message", exact=True)).to_be_focused()
        expect(page.locator("#notebook")).to_be_hidden()
    finally:
        context.close()

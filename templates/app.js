// The chat page: conversations in localStorage, replies streamed from the
// OpenAI-compatible API served beside this file; and a completion mode, a text
// the model continues in place (for base models). No framework, no build step.
// User text is only ever inserted as text; model text goes through
// markdown.js, which builds DOM nodes and never parses HTML.
import { renderMarkdown } from "./markdown.js";

const $ = (id) => document.getElementById(id);
const ui = {
  app: $("app"), sidebar: $("sidebar"), backdrop: $("backdrop"), toggleSidebar: $("toggle-sidebar"),
  closeSidebar: $("close-sidebar"), newChat: $("new-chat"), chatList: $("chat-list"),
  chatListEmpty: $("chat-list-empty"), title: $("chat-title"), modelName: $("model-name"),
  status: $("status"), messages: $("messages"), welcome: $("welcome"),
  welcomeModel: $("welcome-model"), log: $("log"), error: $("error"), errorText: $("error-text"),
  errorDetail: $("error-detail"), retry: $("retry"), dismissError: $("dismiss-error"),
  announcer: $("announcer"),
  composer: $("composer"), prompt: $("prompt"), send: $("send"), stop: $("stop"),
  settings: $("settings"), settingsForm: $("settings-form"), openSettings: $("open-settings"),
  resetSettings: $("reset-settings"), modelInfo: $("model-info"), skipLink: $("skip-link"),
  modeChat: $("mode-chat"), modeCompletion: $("mode-completion"), notebook: $("notebook"),
  notebookText: $("notebook-text"), generate: $("generate"), notebookStop: $("notebook-stop"),
  notebookMeta: $("notebook-meta"), systemPromptField: $("system-prompt-field"),
};

const CHATS_KEY = "llamapack.chats.v1";
const CURRENT_KEY = "llamapack.current.v1";
const SETTINGS_KEY = "llamapack.settings.v1";
const NOTEBOOK_KEY = "llamapack.notebook.v1";
// The server's own sampling defaults; a reply length limit keeps a small model
// from rambling until the context is full.
// Top k left empty is the server's own (its --top-k).
const DEFAULT_SETTINGS = {
  systemPrompt: "", temperature: 0.8, topP: 0.95, topK: null, maxTokens: 1024, apiKey: "",
};
const NARROW = window.matchMedia("(max-width: 760px)");

const state = {
  chats: [],
  currentId: null,
  settings: { ...DEFAULT_SETTINGS },
  props: null,
  // The reply being streamed: { chat, message, controller, view }.
  streaming: null,
  // Completion mode's run: { controller, prompt, text }.
  completing: null,
  // "chat" or "completion": the server's choice (/props ui_mode) until the user picks.
  mode: "chat",
  modeChosen: false,
  retry: null,
};

// ------------------------------------------------------------------ storage

function readJSON(key, fallback) {
  try {
    return JSON.parse(localStorage.getItem(key)) ?? fallback;
  } catch {
    return fallback;
  }
}

function writeJSON(key, value) {
  try {
    localStorage.setItem(key, JSON.stringify(value));
  } catch {
    setStatus("could not save: the browser's storage is full or disabled");
  }
}

function loadState() {
  state.settings = { ...DEFAULT_SETTINGS, ...readJSON(SETTINGS_KEY, {}) };
  const chats = readJSON(CHATS_KEY, []);
  state.chats = Array.isArray(chats) ? chats.filter(isChat).map(cleanChat) : [];
  const current = localStorage.getItem(CURRENT_KEY);
  state.currentId = state.chats.some((chat) => chat.id === current) ? current : null;
  if (!state.completing) ui.notebookText.value = localStorage.getItem(NOTEBOOK_KEY) ?? "";
}

function isChat(chat) {
  return chat && typeof chat.id === "string" && Array.isArray(chat.messages);
}

// A reply cut short by closing the tab was saved mid-stream: keep what came.
function cleanChat(chat) {
  chat.messages = chat.messages.filter(
    (m) => m && typeof m.content === "string" && (m.role === "user" || m.content),
  );
  for (const message of chat.messages) delete message.pending;
  return chat;
}

function saveChats() {
  // A new chat is saved only once it has a message, so "New chat" leaves no clutter.
  writeJSON(CHATS_KEY, state.chats.filter((chat) => chat.messages.length));
  if (state.currentId) localStorage.setItem(CURRENT_KEY, state.currentId);
  else localStorage.removeItem(CURRENT_KEY);
}

// ------------------------------------------------------------------ chats

function currentChat() {
  return state.chats.find((chat) => chat.id === state.currentId) ?? null;
}

function createChat() {
  const id = crypto.randomUUID?.() ?? `${Date.now()}-${Math.random().toString(16).slice(2)}`;
  const chat = { id, title: "New chat", titled: false, updated: Date.now(), messages: [] };
  state.chats.push(chat);
  state.currentId = id;
  return chat;
}

function titleFrom(text) {
  const line = text.trim().split("\n")[0];
  return line.length > 48 ? `${line.slice(0, 47)}…` : line || "New chat";
}

function touch(chat) {
  chat.updated = Date.now();
  if (!chat.titled) {
    const first = chat.messages.find((m) => m.role === "user");
    chat.title = first ? titleFrom(first.content) : "New chat";
  }
}

function selectChat(id) {
  state.currentId = id;
  saveChats();
  hideError();
  renderAll();
  if (NARROW.matches) setSidebar(false);
  ui.prompt.focus();
}

function startNewChat() {
  state.currentId = null;
  saveChats();
  hideError();
  renderAll();
  if (NARROW.matches) setSidebar(false);
  ui.prompt.focus();
}

function deleteChat(id) {
  if (state.streaming?.chat.id === id) state.streaming.controller.abort();
  state.chats = state.chats.filter((chat) => chat.id !== id);
  if (state.currentId === id) {
    state.currentId = sortedChats()[0]?.id ?? null;
    hideError();
  }
  saveChats();
  renderAll();
}

function renameChat(chat, title) {
  const clean = title.trim();
  if (clean) {
    chat.title = clean.slice(0, 120);
    chat.titled = true;
    saveChats();
  }
  renderAll();
}

function sortedChats() {
  return state.chats.filter((c) => c.messages.length).sort((a, b) => b.updated - a.updated);
}

// ------------------------------------------------------------------ sidebar

function renderChatList() {
  const chats = sortedChats();
  ui.chatListEmpty.hidden = chats.length > 0;
  ui.chatList.replaceChildren(...chats.map(chatListItem));
}

function chatListItem(chat) {
  const item = document.createElement("li");
  item.className = "chat-item";
  const open = button(chat.title, "chat-open", () => selectChat(chat.id));
  open.title = chat.title;
  if (chat.id === state.currentId) {
    item.classList.add("current");
    open.setAttribute("aria-current", "true");
  }
  const rename = button("✎", "icon-button small-icon", () => startRename(item, chat));
  rename.setAttribute("aria-label", `Rename “${chat.title}”`);
  const remove = button("×", "icon-button small-icon", () => confirmDelete(remove, chat));
  remove.setAttribute("aria-label", `Delete “${chat.title}”`);
  // The first click on delete asks; moving away cancels.
  remove.addEventListener("blur", () => resetDelete(remove, chat));
  item.append(open, rename, remove);
  return item;
}

function button(text, className, onClick) {
  const node = document.createElement("button");
  node.type = "button";
  node.className = className;
  node.textContent = text;
  node.addEventListener("click", onClick);
  return node;
}

function confirmDelete(remove, chat) {
  if (remove.classList.contains("confirm")) {
    deleteChat(chat.id);
    return;
  }
  remove.classList.add("confirm");
  remove.textContent = "Delete?";
  remove.setAttribute("aria-label", `Press again to delete “${chat.title}”`);
}

function resetDelete(remove, chat) {
  remove.classList.remove("confirm");
  remove.textContent = "×";
  remove.setAttribute("aria-label", `Delete “${chat.title}”`);
}

function startRename(item, chat) {
  const input = document.createElement("input");
  input.type = "text";
  input.className = "rename-input";
  input.value = chat.title;
  input.setAttribute("aria-label", "New name for the conversation");
  let done = false;
  const finish = (save) => {
    if (done) return;
    done = true;
    if (save) renameChat(chat, input.value);
    else renderChatList();
  };
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter") finish(true);
    if (event.key === "Escape") {
      event.stopPropagation();
      finish(false);
    }
  });
  input.addEventListener("blur", () => finish(true));
  item.replaceChildren(input);
  input.focus();
  input.select();
}

function setSidebar(open) {
  ui.app.dataset.sidebar = open ? "open" : "closed";
  ui.toggleSidebar.setAttribute("aria-expanded", String(open));
  ui.backdrop.hidden = !(open && NARROW.matches);
}

// ------------------------------------------------------------------ messages

function renderAll() {
  renderTitle();
  renderChatList();
  renderMessages();
}

function renderTitle() {
  const title = state.mode === "completion" ? "Text completion" : currentChat()?.title ?? "New chat";
  ui.title.textContent = title;
  document.title = `${title} · ${modelAlias()}`;
}

function renderMessages() {
  const chat = currentChat();
  const messages = chat ? chat.messages : [];
  ui.welcome.hidden = messages.length > 0;
  ui.log.replaceChildren(...messages.map((message, index) => messageView(chat, message, index)));
  scrollToEnd(true);
}

function messageView(chat, message, index) {
  const view = document.createElement("article");
  view.className = `message ${message.role}`;
  const who = document.createElement("h2");
  who.className = "visually-hidden";
  who.textContent = message.role === "user" ? "You said:" : "The model said:";
  const content = document.createElement("div");
  content.className = "content";
  const meta = document.createElement("p");
  meta.className = "meta";
  const actions = document.createElement("div");
  actions.className = "actions";
  view.append(who, content, meta, actions);
  if (message.pending) {
    state.streaming.view = view;
    view.classList.add("streaming");
    view.setAttribute("aria-busy", "true");
  }
  fillContent(view, message);
  fillMeta(view, message);
  fillActions(view, chat, message, index);
  return view;
}

function fillContent(view, message) {
  const content = view.querySelector(".content");
  if (message.role === "user") content.textContent = message.content;
  else content.replaceChildren(renderMarkdown(message.content));
}

function fillMeta(view, message) {
  const meta = view.querySelector(".meta");
  meta.textContent = message.meta ? describeMeta(message.meta) : "";
  meta.hidden = !meta.textContent;
}

function describeMeta(meta) {
  const parts = [];
  if (meta.completionTokens != null) parts.push(`${meta.completionTokens} tokens`);
  if (meta.tokensPerSecond) parts.push(`${meta.tokensPerSecond.toFixed(1)} tokens/s`);
  if (meta.promptTokens != null) parts.push(`prompt ${meta.promptTokens} tokens`);
  if (meta.stopped) parts.push("stopped");
  else if (meta.finish === "length") parts.push("cut off at the length limit");
  return parts.join(" · ");
}

function fillActions(view, chat, message, index) {
  const actions = view.querySelector(".actions");
  const isLast = index === chat.messages.length - 1;
  const copy = button("Copy", "link-button", () => copyText(message.content, copy));
  copy.setAttribute("aria-label", "Copy this message");
  actions.replaceChildren(copy);
  if (message.role === "user") {
    const edit = button("Edit", "link-button needs-idle", () => startEdit(view, chat, index));
    edit.setAttribute("aria-label", "Edit this message and send it again");
    actions.append(edit);
  } else if (isLast) {
    const again = button("Regenerate", "link-button needs-idle", () => regenerate(chat));
    again.setAttribute("aria-label", "Write this reply again");
    actions.append(again);
  }
  actions.hidden = Boolean(message.pending);
}

/** Turns the streamed reply's view into a finished one, in place (keeps the scroll). */
function finishView(view, chat, message) {
  view.classList.remove("streaming");
  view.removeAttribute("aria-busy");
  fillContent(view, message);
  fillMeta(view, message);
  fillActions(view, chat, message, chat.messages.indexOf(message));
}

function startEdit(view, chat, index) {
  if (state.streaming) return;
  const editor = document.createElement("form");
  editor.className = "editor";
  const area = document.createElement("textarea");
  area.value = chat.messages[index].content;
  area.setAttribute("aria-label", "Edit your message");
  area.rows = Math.min(12, area.value.split("\n").length + 1);
  const save = button("Save and send", "primary", () => editor.requestSubmit());
  save.type = "submit";
  const cancel = button("Cancel", "", () => renderMessages());
  const buttons = document.createElement("div");
  buttons.className = "editor-actions";
  buttons.append(save, cancel);
  editor.append(area, buttons);
  editor.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = area.value.trim();
    if (!text || state.streaming) return;
    // Everything after the edited message answered the old text, so it goes.
    chat.messages.splice(index, chat.messages.length - index, { role: "user", content: text });
    touch(chat);
    saveChats();
    renderAll();
    generate(chat);
  });
  area.addEventListener("keydown", (event) => {
    if (isSendKey(event)) {
      event.preventDefault();
      editor.requestSubmit();
    } else if (event.key === "Escape") {
      renderMessages();
      ui.prompt.focus();
    }
  });
  view.querySelector(".content").replaceChildren(editor);
  view.querySelector(".actions").hidden = true;
  area.focus();
}

function regenerate(chat) {
  if (state.streaming) return;
  if (chat.messages.at(-1)?.role === "assistant") chat.messages.pop();
  saveChats();
  renderMessages();
  generate(chat);
}

async function copyText(text, source) {
  try {
    await navigator.clipboard.writeText(text);
    flash(source, "Copied");
  } catch {
    // navigator.clipboard exists only in secure contexts: reached over the
    // network by plain http (--host 0.0.0.0), the page falls back to the old way.
    flash(source, legacyCopy(text) ? "Copied" : "Copy failed");
  }
}

function legacyCopy(text) {
  const area = document.createElement("textarea");
  area.value = text;
  area.setAttribute("readonly", "");
  area.className = "visually-hidden";
  document.body.append(area);
  area.select();
  const copied = document.execCommand("copy");
  area.remove();
  return copied;
}

// Shows `text` on a button for a moment; a second click does not lose its label.
function flash(source, text) {
  source.dataset.label ??= source.textContent;
  source.textContent = text;
  clearTimeout(source.flashTimer);
  source.flashTimer = setTimeout(() => { source.textContent = source.dataset.label; }, 1500);
}

// Keep the newest text in view, unless the reader scrolled up to read.
function scrollToEnd(force = false) {
  const box = ui.messages;
  const nearEnd = box.scrollHeight - box.scrollTop - box.clientHeight < 120;
  if (force || nearEnd) box.scrollTop = box.scrollHeight;
}

// ------------------------------------------------------------------ generation

function isSendKey(event) {
  return event.key === "Enter" && !event.shiftKey && !event.isComposing && event.keyCode !== 229;
}

function submitPrompt() {
  const text = ui.prompt.value.trim();
  if (!text || state.streaming) return;
  const chat = currentChat() ?? createChat();
  chat.messages.push({ role: "user", content: text });
  touch(chat);
  ui.prompt.value = "";
  fitPrompt();
  saveChats();
  hideError();
  renderAll();
  generate(chat);
}

function requestBody(chat) {
  const { systemPrompt } = state.settings;
  const messages = chat.messages
    .filter((m) => !m.pending)
    .map(({ role, content }) => ({ role, content }));
  if (systemPrompt.trim()) messages.unshift({ role: "system", content: systemPrompt });
  return { messages, ...samplingFields() };
}

/** The settings' part of a request, the same in both modes. */
function samplingFields() {
  const { temperature, topP, topK, maxTokens } = state.settings;
  const body = { stream: true, stream_options: { include_usage: true }, temperature, top_p: topP };
  if (topK != null) body.top_k = topK;
  if (maxTokens) body.max_tokens = maxTokens;
  return body;
}

async function generate(chat) {
  hideError();
  const message = { role: "assistant", content: "", pending: true };
  const controller = new AbortController();
  const body = requestBody(chat);
  chat.messages.push(message);
  state.streaming = { chat, message, controller, view: null };
  setBusy(true);
  if (chat.id === state.currentId) renderMessages();

  const progress = { started: performance.now(), deltas: 0, timings: null, usage: null };
  let failure = null;
  try {
    await streamReply(body, controller.signal, message, progress);
    // A stream that ends without a finish reason was cut off (server stopped).
    if (!progress.finish) throw new ChatError("incomplete", "the reply ended early");
  } catch (error) {
    if (!controller.signal.aborted) failure = error;
  }
  message.meta = replyMeta(progress, controller.signal.aborted);
  finishGeneration(chat, message, failure);
}

/** Streams one reply into `message.content`, noting timings and usage in `progress`. */
function streamReply(body, signal, message, progress) {
  return streamGeneration("/v1/chat/completions", body, signal, progress, (choice) => {
    if (!choice?.delta?.content) return;
    message.content += choice.delta.content;
    scheduleRender();
  });
}

/**
 * POSTs `body` to one of the generating routes and reads its event stream: each
 * choice goes to `onChoice` (which returns nothing); the finish reason, timings,
 * usage and the count of pieces go into `progress`; an error event throws.
 */
async function streamGeneration(url, body, signal, progress, onChoice) {
  const response = await fetch(url, {
    method: "POST",
    headers: { "Content-Type": "application/json", ...authHeaders() },
    body: JSON.stringify(body),
    signal,
  });
  if (!response.ok) throw await httpError(response);
  await readEvents(response, (chunk) => {
    const choice = chunk.choices?.[0];
    if (choice?.delta?.content || choice?.text) progress.deltas++;
    onChoice(choice);
    if (choice?.finish_reason) progress.finish = choice.finish_reason;
    if (chunk.timings) progress.timings = chunk.timings;
    if (chunk.usage) progress.usage = chunk.usage;
    if (chunk.error) throw new ChatError("stream", chunk.error.message);
  });
}

// The server's own counts when the reply finished; when it was stopped, the
// client's estimate (one streamed piece is about one token).
function replyMeta(progress, stopped) {
  const { timings, usage, deltas } = progress;
  const seconds = (performance.now() - progress.started) / 1000;
  return {
    completionTokens: usage?.completion_tokens ?? timings?.predicted_n ?? deltas,
    promptTokens: usage?.prompt_tokens ?? timings?.prompt_n ?? null,
    tokensPerSecond: timings?.predicted_per_second ?? (seconds > 0 ? deltas / seconds : 0),
    finish: progress.finish,
    stopped,
  };
}

function finishGeneration(chat, message, failure) {
  delete message.pending;
  if (!message.content) chat.messages.splice(chat.messages.indexOf(message), 1);
  const { view } = state.streaming;
  state.streaming = null;
  touch(chat);
  saveChats();
  setBusy(false);
  renderChatList();
  if (chat.id !== state.currentId) return;
  renderTitle();
  if (message.content && view?.isConnected) finishView(view, chat, message);
  else renderMessages();
  if (failure) showError(failure, () => retry(chat));
  else if (message.meta.stopped) announce("Stopped.");
  else announce(`The model replied: ${view?.querySelector(".content").textContent ?? ""}`);
}

// The conversation is not a live region (re-rendering it would read it all out
// again), so a finished reply is announced here once, as plain text.
function announce(text) {
  ui.announcer.textContent = text;
}

// Retry drops a partial reply and asks again for the last user message.
function retry(chat) {
  hideError();
  if (state.streaming) return;
  if (chat.messages.at(-1)?.role === "assistant") chat.messages.pop();
  if (chat.messages.at(-1)?.role !== "user") return;
  renderMessages();
  generate(chat);
}

// Re-rendering markdown on every token would be wasted work: once a frame is enough.
let renderQueued = false;
function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    const streaming = state.streaming;
    if (!streaming?.view || !streaming.view.isConnected) return;
    fillContent(streaming.view, streaming.message);
    scrollToEnd();
  });
}

/** Calls onChunk with each JSON payload of a server-sent event stream. */
async function readEvents(response, onChunk) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    const events = buffer.split(/\r?\n\r?\n/);
    buffer = events.pop();
    for (const event of events) {
      const data = event
        .split(/\r?\n/)
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).trimStart())
        .join("\n");
      if (!data || data === "[DONE]") continue;
      onChunk(JSON.parse(data));
    }
  }
}

function setBusy(busy) {
  ui.send.hidden = ui.generate.hidden = busy;
  ui.stop.hidden = ui.notebookStop.hidden = !busy;
  ui.modeChat.disabled = ui.modeCompletion.disabled = busy;
  ui.app.classList.toggle("is-generating", busy);
  // Stop replaces Send (Generate) under the pointer, so keep keyboard focus on it.
  const focused = document.activeElement;
  if (busy && focused === ui.send) ui.stop.focus();
  if (busy && focused === ui.generate) ui.notebookStop.focus();
  if (!busy && focused === ui.stop) ui.prompt.focus();
  if (!busy && focused === ui.notebookStop) ui.notebookText.focus();
}

function stopGenerating() {
  state.streaming?.controller.abort();
  state.completing?.controller.abort();
}

// ------------------------------------------------------------------ completion mode

/** Continues the editor's text where it ends, streaming the new text into it. */
async function complete() {
  const prompt = ui.notebookText.value;
  if (state.completing || state.streaming) return;
  if (!prompt.trim()) {
    ui.notebookText.focus();
    return;
  }
  hideError();
  const controller = new AbortController();
  const run = { controller, prompt, text: "" };
  state.completing = run;
  ui.notebookText.readOnly = true; // editable again once the model is done
  ui.notebookText.setAttribute("aria-busy", "true");
  ui.notebookMeta.hidden = true;
  setBusy(true);

  const progress = { started: performance.now(), deltas: 0, timings: null, usage: null };
  let failure = null;
  try {
    await streamCompletion({ prompt, ...samplingFields() }, controller.signal, run, progress);
    if (!progress.finish) throw new ChatError("incomplete", "the text ended early");
  } catch (error) {
    if (!controller.signal.aborted) failure = error;
  }
  state.completing = null;
  showNotebook(run);
  ui.notebookText.readOnly = false;
  ui.notebookText.removeAttribute("aria-busy");
  saveNotebook();
  setBusy(false);
  const meta = replyMeta(progress, controller.signal.aborted);
  ui.notebookMeta.textContent = describeMeta(meta);
  ui.notebookMeta.hidden = Boolean(failure && !run.text);
  if (failure) showError(failure, complete);
  else announce(meta.stopped ? "Stopped." : `The model wrote: ${run.text}`);
}

function streamCompletion(body, signal, run, progress) {
  return streamGeneration("/v1/completions", body, signal, progress, (choice) => {
    if (!choice?.text) return;
    run.text += choice.text;
    scheduleNotebook();
  });
}

// Writes the run's text into the editor, keeping its end in view unless the
// reader scrolled up.
function showNotebook(run) {
  const area = ui.notebookText;
  const nearEnd = area.scrollHeight - area.scrollTop - area.clientHeight < 60;
  area.value = run.prompt + run.text;
  if (nearEnd) area.scrollTop = area.scrollHeight;
}

let notebookQueued = false;
function scheduleNotebook() {
  if (notebookQueued) return;
  notebookQueued = true;
  requestAnimationFrame(() => {
    notebookQueued = false;
    if (state.completing) showNotebook(state.completing);
  });
}

function saveNotebook() {
  try {
    localStorage.setItem(NOTEBOOK_KEY, ui.notebookText.value);
  } catch {
    setStatus("could not save: the browser's storage is full or disabled");
  }
}

/** Chat or completion; `byUser` keeps the server's choice from overriding it later. */
function setMode(mode, byUser = false) {
  if (byUser) state.modeChosen = true;
  const completion = mode === "completion";
  if (state.streaming || state.completing || completion === (state.mode === "completion")) return;
  state.mode = completion ? "completion" : "chat";
  ui.app.dataset.mode = state.mode;
  ui.modeChat.setAttribute("aria-pressed", String(!completion));
  ui.modeCompletion.setAttribute("aria-pressed", String(completion));
  ui.messages.hidden = ui.composer.hidden = completion;
  ui.notebook.hidden = !completion;
  ui.systemPromptField.hidden = completion; // a text to continue has no system prompt
  // One error box, shown where the work is.
  (completion ? ui.notebook : ui.messages).append(ui.error);
  hideError();
  ui.skipLink.href = completion ? "#notebook-text" : "#prompt";
  ui.skipLink.textContent = completion ? "Skip to the text" : "Skip to the message box";
  if (completion && NARROW.matches) setSidebar(false);
  renderTitle();
}

// ------------------------------------------------------------------ errors

class ChatError extends Error {
  constructor(kind, detail, extra = {}) {
    super(detail);
    this.kind = kind;
    this.detail = detail;
    Object.assign(this, extra);
  }
}

async function httpError(response) {
  const body = await response.json().catch(() => ({}));
  const detail = body?.error?.message || `the server answered ${response.status}`;
  if (response.status === 400 && /context/i.test(detail)) return new ChatError("context", detail);
  if (response.status === 401) return new ChatError("auth", detail);
  if (response.status === 503) {
    const kind = /load/i.test(detail) ? "loading" : "busy";
    return new ChatError(kind, detail, { retryAfter: response.headers.get("Retry-After") });
  }
  return new ChatError("server", detail, { status: response.status });
}

function explain(error) {
  switch (error.kind) {
    case "context": {
      const size = state.props?.n_ctx ? ` (${state.props.n_ctx} tokens)` : "";
      if (state.mode === "completion") {
        return `The text is too long for the model's memory${size}. Shorten it, or lower Max tokens in Settings.`;
      }
      return "This conversation is too long for the model's memory" + size +
        ". Start a new chat, or edit an earlier message to make it shorter.";
    }
    case "busy": {
      const wait = Number(error.retryAfter) > 0 ? ` about ${error.retryAfter} s` : " a moment";
      return `The model is busy answering other requests. Wait${wait}, then retry.`;
    }
    case "loading":
      return "The model is still loading. Retry in a moment.";
    case "auth":
      return "This server asks for an API key (it was started with --api-key). " +
        "Enter the key in Settings, then retry.";
    case "stream":
      return "The model stopped with an error before finishing its reply.";
    case "incomplete":
      return "The connection to the model server broke off before the reply was finished. " +
        "Retry, or start the server again if it was closed.";
    case "server":
      return "The server could not answer this request.";
    default:
      // fetch() rejects with a TypeError when the connection fails.
      return "Cannot reach the model server. It may have been closed: start it again, then retry.";
  }
}

function showError(error, onRetry) {
  state.retry = onRetry;
  ui.errorText.textContent = explain(error);
  ui.errorDetail.textContent = error.kind ? `Details: ${error.detail}` : "";
  ui.errorDetail.hidden = !error.kind;
  ui.error.hidden = false;
  scrollToEnd(true);
  if (!error.kind) watchServer();
}

function hideError() {
  ui.error.hidden = true;
  state.retry = null;
}

// ------------------------------------------------------------------ server status

function setStatus(text) {
  ui.status.textContent = text;
}

function modelAlias() {
  return state.props?.model_alias || "llamapack";
}

let watching = false;
/** Polls /health until the model answers, showing why it does not yet. */
async function watchServer() {
  if (watching) return;
  watching = true;
  for (;;) {
    try {
      const health = await fetch("/health", { cache: "no-store" });
      if (health.ok) break;
      const body = await health.json().catch(() => ({}));
      const failed = body.status === "error";
      setStatus(failed ? `cannot load the model: ${body.error}` : "loading the model…");
    } catch {
      setStatus("server unreachable, retrying…");
    }
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
  watching = false;
  setStatus("ready");
  await loadProps();
}

async function loadProps() {
  try {
    const response = await fetch("/props", { cache: "no-store", headers: authHeaders() });
    if (!response.ok) return;
    state.props = await response.json();
  } catch {
    return;
  }
  ui.modelName.textContent = modelAlias();
  ui.welcomeModel.textContent = state.props.manifest?.model?.name || modelAlias();
  // The mode that fits the model (a base model: completion), once, unless one was picked.
  if (!state.modeChosen && state.props.ui_mode) {
    state.modeChosen = true;
    const wasFocused = document.activeElement === ui.prompt;
    setMode(state.props.ui_mode);
    if (wasFocused && state.mode === "completion") ui.notebookText.focus();
  }
  renderModelInfo();
  renderAll();
}

function renderModelInfo() {
  const props = state.props ?? {};
  const model = props.manifest?.model ?? {};
  const rows = [
    ["Name", model.name || props.model_alias],
    ["Architecture", model.architecture],
    ["Parameters", model.parameters && formatCount(model.parameters)],
    ["Quantization", model.quantization],
    ["File size", model.size && formatBytes(model.size)],
    ["Trained context", model.context_length && `${model.context_length} tokens`],
    ["Context in use", props.n_ctx && `${props.n_ctx} tokens`],
    ["Parallel slots", props.total_slots],
    ["Chat template", props.chat_template_name ?? props.chat_template],
  ];
  const nodes = [];
  for (const [label, value] of rows) {
    if (value == null || value === "") continue;
    const term = document.createElement("dt");
    term.textContent = label;
    const detail = document.createElement("dd");
    detail.textContent = String(value);
    nodes.push(term, detail);
  }
  ui.modelInfo.replaceChildren(...nodes);
}

function formatCount(n) {
  if (typeof n !== "number") return String(n);
  if (n >= 1e9) return `${(n / 1e9).toFixed(1)} B`;
  if (n >= 1e6) return `${Math.round(n / 1e6)} M`;
  return n.toLocaleString();
}

function formatBytes(n) {
  if (typeof n !== "number") return String(n);
  if (n >= 2 ** 30) return `${(n / 2 ** 30).toFixed(2)} GiB`;
  return `${(n / 2 ** 20).toFixed(0)} MiB`;
}

// ------------------------------------------------------------------ settings

const FIELDS = [
  // [settings key, input id, parse]
  ["systemPrompt", "system-prompt", (v) => v],
  ["temperature", "temperature", (v) => clampNumber(v, 0, 2, DEFAULT_SETTINGS.temperature)],
  ["topP", "top-p", (v) => clampNumber(v, 0, 1, DEFAULT_SETTINGS.topP)],
  ["topK", "top-k", (v) => (v.trim() ? Math.round(clampNumber(v, 0, 1e6, 40)) : null)],
  ["maxTokens", "max-tokens", (v) => (v.trim() ? Math.round(clampNumber(v, 1, 1e9, 1)) : null)],
  ["apiKey", "api-key", (v) => v.trim()],
];

/** The key for a server started with --api-key, as its API expects it. */
function authHeaders() {
  const key = state.settings.apiKey;
  return key ? { Authorization: `Bearer ${key}` } : {};
}

function clampNumber(text, low, high, fallback) {
  const value = Number.parseFloat(text);
  return Number.isFinite(value) ? Math.min(high, Math.max(low, value)) : fallback;
}

function fillSettingsForm() {
  for (const [key, id] of FIELDS) $(id).value = state.settings[key] ?? "";
}

function readSettingsForm() {
  for (const [key, id, parse] of FIELDS) state.settings[key] = parse($(id).value);
  writeJSON(SETTINGS_KEY, state.settings);
}

function openSettings() {
  fillSettingsForm();
  ui.settings.showModal();
}

// ------------------------------------------------------------------ wiring

function fitPrompt() {
  // Grow with the text up to a third of the screen, then scroll.
  ui.prompt.style.height = "auto";
  ui.prompt.style.height = `${Math.min(ui.prompt.scrollHeight + 2, window.innerHeight / 3)}px`;
}

function wire() {
  ui.composer.addEventListener("submit", (event) => {
    event.preventDefault();
    submitPrompt();
  });
  ui.prompt.addEventListener("keydown", (event) => {
    if (isSendKey(event)) {
      event.preventDefault();
      submitPrompt();
    }
  });
  ui.prompt.addEventListener("input", fitPrompt);
  ui.stop.addEventListener("click", stopGenerating);
  ui.notebookStop.addEventListener("click", stopGenerating);
  ui.generate.addEventListener("click", complete);
  ui.notebookText.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && !event.isComposing) {
      event.preventDefault();
      complete();
    }
  });
  ui.notebookText.addEventListener("input", saveNotebook);
  ui.modeChat.addEventListener("click", () => {
    setMode("chat", true);
    ui.prompt.focus();
  });
  ui.modeCompletion.addEventListener("click", () => {
    setMode("completion", true);
    ui.notebookText.focus();
  });
  document.addEventListener("keydown", (event) => {
    if (event.key !== "Escape" || ui.settings.open) return;
    if (state.streaming || state.completing) stopGenerating();
    else if (NARROW.matches && ui.app.dataset.sidebar === "open") {
      setSidebar(false);
      ui.toggleSidebar.focus();
    }
  });
  ui.newChat.addEventListener("click", startNewChat);
  ui.toggleSidebar.addEventListener("click", () => setSidebar(ui.app.dataset.sidebar !== "open"));
  ui.closeSidebar.addEventListener("click", () => {
    setSidebar(false);
    ui.toggleSidebar.focus();
  });
  ui.backdrop.addEventListener("click", () => setSidebar(false));
  NARROW.addEventListener("change", () => setSidebar(!NARROW.matches));
  ui.retry.addEventListener("click", () => state.retry?.());
  ui.dismissError.addEventListener("click", () => {
    hideError();
    ui.prompt.focus();
  });
  // Copy buttons of code blocks are made by markdown.js; one listener serves them all.
  ui.log.addEventListener("click", (event) => {
    const copy = event.target.closest(".copy-code");
    if (copy) copyText(copy.closest(".code-block").querySelector("code").textContent, copy);
  });
  ui.openSettings.addEventListener("click", openSettings);
  ui.settingsForm.addEventListener("input", readSettingsForm);
  ui.settingsForm.addEventListener("submit", readSettingsForm);
  // The key may have changed: read the model's details with it.
  ui.settings.addEventListener("close", loadProps);
  ui.resetSettings.addEventListener("click", () => {
    // Sampling back to the defaults; the API key is a credential, not a preference.
    state.settings = { ...DEFAULT_SETTINGS, apiKey: state.settings.apiKey };
    writeJSON(SETTINGS_KEY, state.settings);
    fillSettingsForm();
  });
  // Another tab changed the saved conversations: show them, unless busy here.
  window.addEventListener("storage", (event) => {
    if (state.streaming || state.completing || ![CHATS_KEY, SETTINGS_KEY, NOTEBOOK_KEY].includes(event.key)) {
      return;
    }
    loadState();
    renderAll();
  });
}

loadState();
wire();
setSidebar(!NARROW.matches);
renderAll();
watchServer();
ui.prompt.focus();

// Markdown to DOM nodes, for model replies.
// Everything is built with createElement and text nodes: nothing a model writes
// is ever parsed as HTML, so a raw <img onerror=…> in a reply shows as text.
// It covers what chat models write (headings, paragraphs, nested lists, quotes,
// fenced code, tables, rules; inline code, emphasis, strikethrough, links), and
// copes with half-written input, since replies are re-rendered while they stream.
import { highlight } from "./syntax.js";

const FENCE = /^ {0,3}(`{3,}|~{3,})[ \t]*([^`\s]*)[^`]*$/;
const HEADING = /^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$/;
const RULE = /^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$/;
const QUOTE = /^ {0,3}> ?(.*)$/;
const LIST_ITEM = /^( *)([-*+]|\d{1,9}[.)])(?:[ \t]+(.*))?$/;
const TABLE_DIVIDER = /^ *\|? *:?-+:? *(?:\| *:?-+:? *)*\|? *$/;
const SAFE_SCHEME = /^(?:https?:|mailto:)/i;

// Inline syntax, tried left to right; at one position the first alternative wins,
// so ** is read as strong before * as emphasis.
const INLINE = new RegExp(
  [
    String.raw`\\(?<escaped>[!-/:-@[-\x60{-~])`,
    String.raw`(?<ticks>\x60+)(?<code>[\s\S]*?[^\x60])\k<ticks>(?!\x60)`,
    String.raw`(?<bang>!?)\[(?<label>(?:[^\[\]\\\n]|\\.)*)\]\(\s*<?(?<href>[^\s<>()]*)>?(?:\s+(?:"[^"\n]*"|'[^'\n]*'))?\s*\)`,
    String.raw`<(?<autolink>(?:https?://|mailto:)[^\s<>]+)>`,
    String.raw`(?<url>\bhttps?://[^\s<>"'\x60]*[^\s<>"'\x60.,:;!?)\]*_~])`,
    String.raw`\*\*(?<strong>[^\s*](?:[\s\S]*?[^\s])?)\*\*`,
    String.raw`(?<!\w)__(?<strong2>[^\s_](?:[\s\S]*?[^\s])?)__(?!\w)`,
    String.raw`~~(?<del>[^\s~](?:[\s\S]*?[^\s])?)~~`,
    String.raw`\*(?<em>[^\s*](?:[\s\S]*?[^\s*])?)\*`,
    String.raw`(?<!\w)_(?<em2>[^\s_](?:[\s\S]*?[^\s_])?)_(?!\w)`,
  ].join("|"),
  "g",
);

/** A DocumentFragment showing `text` as formatted markdown. */
export function renderMarkdown(text) {
  const lines = String(text).replace(/\r\n?/g, "\n").replace(/\t/g, "    ").split("\n");
  return renderBlocks(lines);
}

/** `href` when it is an absolute http(s) or mailto URL, else null (no javascript:, data:…). */
export function safeUrl(href) {
  if (!SAFE_SCHEME.test(href)) return null;
  try {
    const url = new URL(href);
    return ["http:", "https:", "mailto:"].includes(url.protocol) ? url.href : null;
  } catch {
    return null;
  }
}

// ------------------------------------------------------------------ blocks

const BLOCKS = [codeBlock, heading, rule, quote, table, list, paragraph];

function renderBlocks(lines) {
  const out = document.createDocumentFragment();
  let i = 0;
  while (i < lines.length) {
    if (isBlank(lines[i])) {
      i++;
      continue;
    }
    for (const parse of BLOCKS) {
      const block = parse(lines, i);
      if (block) {
        out.append(block.node);
        i = block.next;
        break;
      }
    }
  }
  return out;
}

function isBlank(line) {
  return line.trim() === "";
}

function indentOf(line) {
  return line.length - line.trimStart().length;
}

/** True when `line` starts a block that ends a paragraph. */
function interrupts(line) {
  return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line) ||
    LIST_ITEM.test(line);
}

function element(tag, className) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  return node;
}

function codeBlock(lines, start) {
  const open = FENCE.exec(lines[start]);
  if (!open) return null;
  const [, fence, language] = open;
  const body = [];
  let i = start + 1;
  // An unclosed fence runs to the end: the closing one may not have streamed in yet.
  while (i < lines.length && !isClosingFence(lines[i], fence)) body.push(lines[i++]);
  return { node: codeBox(body.join("\n"), language), next: i + 1 };
}

function isClosingFence(line, fence) {
  const trimmed = line.trim();
  return trimmed.length >= fence.length && trimmed === fence[0].repeat(trimmed.length);
}

function codeBox(code, language) {
  const box = element("div", "code-block");
  const head = element("div", "code-head");
  const label = element("span", "code-lang");
  label.textContent = language || "code";
  const copy = element("button", "copy-code");
  copy.type = "button";
  copy.textContent = "Copy";
  copy.setAttribute("aria-label", `Copy ${language || ""} code`.replace("  ", " "));
  head.append(label, copy);
  const pre = element("pre");
  const codeNode = element("code");
  if (language) codeNode.dataset.language = language;
  codeNode.append(highlight(code, language) ?? code);
  pre.append(codeNode);
  box.append(head, pre);
  return box;
}

function heading(lines, start) {
  const match = HEADING.exec(lines[start]);
  if (!match) return null;
  // The page's own h1 is the chat title, so a reply's "#" becomes an h2.
  const node = element(`h${Math.min(match[1].length + 1, 6)}`);
  node.append(renderInline(match[2] ?? ""));
  return { node, next: start + 1 };
}

function rule(lines, start) {
  return RULE.test(lines[start]) ? { node: element("hr"), next: start + 1 } : null;
}

function quote(lines, start) {
  if (!QUOTE.test(lines[start])) return null;
  const inner = [];
  let i = start;
  for (let match; i < lines.length && (match = QUOTE.exec(lines[i])); i++) inner.push(match[1]);
  const node = element("blockquote");
  node.append(renderBlocks(inner));
  return { node, next: i };
}

function table(lines, start) {
  const header = lines[start];
  const divider = lines[start + 1];
  if (!header.includes("|") || divider === undefined || !divider.includes("|") ||
      !TABLE_DIVIDER.test(divider)) {
    return null;
  }
  const aligns = splitRow(divider).map((cell) => {
    const left = cell.startsWith(":");
    const right = cell.endsWith(":");
    return left && right ? "center" : right ? "right" : left ? "left" : "";
  });
  const node = element("table");
  const head = node.createTHead().insertRow();
  splitRow(header).forEach((cell, column) => fillCell(head, "th", cell, aligns[column]));
  const body = node.createTBody();
  let i = start + 2;
  for (; i < lines.length && lines[i].includes("|") && !isBlank(lines[i]); i++) {
    const row = body.insertRow();
    const cells = splitRow(lines[i]);
    aligns.forEach((align, column) => fillCell(row, "td", cells[column] ?? "", align));
  }
  // Wide tables scroll sideways inside the reply instead of widening the page.
  const wrap = element("div", "table-wrap");
  wrap.tabIndex = 0;
  wrap.setAttribute("role", "region");
  wrap.setAttribute("aria-label", "Table");
  wrap.append(node);
  return { node: wrap, next: i };
}

function splitRow(line) {
  let row = line.trim();
  if (row.startsWith("|")) row = row.slice(1);
  if (row.endsWith("|") && !row.endsWith("\\|")) row = row.slice(0, -1);
  return row.split(/(?<!\\)\|/).map((cell) => cell.trim());
}

function fillCell(row, tag, text, align) {
  const cell = element(tag);
  if (tag === "th") cell.scope = "col";
  if (align) cell.className = `align-${align}`;
  cell.append(renderInline(text));
  row.append(cell);
}

function list(lines, start) {
  const first = LIST_ITEM.exec(lines[start]);
  if (!first || RULE.test(lines[start])) return null;
  const indent = first[1].length;
  const ordered = /\d/.test(first[2]);
  const node = element(ordered ? "ol" : "ul");
  if (ordered && parseInt(first[2], 10) !== 1) node.start = parseInt(first[2], 10);
  const sameList = (match) =>
    match && match[1].length === indent && /\d/.test(match[2]) === ordered;
  let i = start;
  while (i < lines.length) {
    const item = LIST_ITEM.exec(lines[i]);
    if (!sameList(item) || RULE.test(lines[i])) break;
    const { body, next } = listItemBody(lines, i, item);
    const li = element("li");
    li.append(renderBlocks(body));
    node.append(li);
    i = next;
    // Blank lines between items keep the list going.
    const after = nextFilled(lines, i);
    if (after > i && sameList(LIST_ITEM.exec(lines[after] ?? ""))) i = after;
  }
  return { node, next: i };
}

/** The lines of one list item (marker removed, indentation made relative). */
function listItemBody(lines, start, item) {
  const indent = item[1].length;
  const contentIndent = indent + item[2].length + 1;
  const body = [item[3] ?? ""];
  let i = start + 1;
  while (i < lines.length) {
    const line = lines[i];
    if (isBlank(line)) {
      const after = nextFilled(lines, i);
      if (after >= lines.length || indentOf(lines[after]) <= indent) break;
      body.push(...lines.slice(i, after).map(() => ""));
      i = after;
      continue;
    }
    const lead = indentOf(line);
    if (lead > indent) {
      body.push(line.slice(Math.min(lead, contentIndent)));
    } else if (!interrupts(line) && !isBlank(body[body.length - 1])) {
      body.push(line.trimStart()); // a wrapped line of the item's text
    } else {
      break;
    }
    i++;
  }
  return { body, next: i };
}

function nextFilled(lines, i) {
  while (i < lines.length && isBlank(lines[i])) i++;
  return i;
}

function paragraph(lines, start) {
  const text = [lines[start].trim()];
  let i = start + 1;
  while (i < lines.length && !isBlank(lines[i]) && !interrupts(lines[i]) &&
         !(lines[i].includes("|") && TABLE_DIVIDER.test(lines[i + 1] ?? ""))) {
    text.push(lines[i].trim());
    i++;
  }
  const node = element("p");
  node.append(renderInline(text.join("\n")));
  return { node, next: i };
}

// ------------------------------------------------------------------ inline

// `inLink`: inside a link's label, where a nested link must stay text (and
// a label that is itself a URL must not recurse forever).
function renderInline(text, inLink = false) {
  const out = document.createDocumentFragment();
  let last = 0;
  for (const match of text.matchAll(INLINE)) {
    appendText(out, text.slice(last, match.index));
    out.append(inlineNode(match, inLink));
    last = match.index + match[0].length;
  }
  appendText(out, text.slice(last));
  return out;
}

// Chat replies use single newlines as line breaks, so they become <br>.
function appendText(parent, text) {
  text.split("\n").forEach((part, index) => {
    if (index > 0) parent.append(element("br"));
    if (part) parent.append(part);
  });
}

function inlineNode(match, inLink) {
  const groups = match.groups;
  if (groups.escaped !== undefined) return groups.escaped;
  if (groups.code !== undefined) {
    const code = element("code");
    code.textContent = groups.code.replace(/^ (.+) $/, "$1");
    return code;
  }
  if (groups.label !== undefined) {
    if (inLink) return renderInline(groups.label, true);
    return link(groups.label || groups.href, groups.href, groups.bang === "!");
  }
  const address = groups.autolink ?? groups.url;
  if (address !== undefined) return inLink ? match[0] : link(address, address, false);
  const [tag, inner] =
    groups.strong !== undefined ? ["strong", groups.strong]
      : groups.strong2 !== undefined ? ["strong", groups.strong2]
        : groups.del !== undefined ? ["del", groups.del]
          : ["em", groups.em ?? groups.em2];
  const node = element(tag);
  node.append(renderInline(inner, inLink));
  return node;
}

// Links open in a new tab with no opener or referrer. An unsafe target leaves
// just the label. Images are not loaded (the page stays offline): they become
// a link to the picture.
function link(label, href, isImage) {
  const url = safeUrl(href.replace(/\\(.)/g, "$1"));
  const content = renderInline(label, true);
  if (!url) return content;
  const anchor = element("a");
  anchor.href = url;
  anchor.target = "_blank";
  anchor.rel = "noopener noreferrer";
  if (isImage) anchor.append("Image: ");
  anchor.append(content);
  return anchor;
}

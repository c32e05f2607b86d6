// A small syntax highlighter for code blocks in replies.
// One regular expression per language family; each match becomes a
// <span class="tok-KIND"> filled with textContent, so code is never parsed as HTML.
// It colours comments, strings, numbers and keywords: enough to read code at a
// glance without shipping a full grammar library.

const STRING = String.raw`"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'`;
const NUMBER = String.raw`\b(?:0[xXbBoO][\da-fA-F_]+|\d[\d_]*(?:\.\d+)?(?:[eE][+-]?\d+)?)\b`;
const C_COMMENT = String.raw`//[^\n]*|/\*[\s\S]*?(?:\*/|$)`;
const HASH_COMMENT = String.raw`#[^\n]*`;

function words(list) {
  return String.raw`\b(?:${list.trim().split(/\s+/).join("|")})\b`;
}

const LITERALS = words("true false null undefined nil None True False NaN Infinity");

// Languages with braces share one keyword list: a few extra words coloured in
// one language are a fair price for a table this small.
const C_KEYWORDS = words(`
  abstract as async await break case catch char class const continue default defer delete do
  double else enum export extends final finally float fn for func function go if impl implements
  import in instanceof int interface let long loop match mod mut namespace new override package
  private protected pub public return self Self short static struct super switch template this
  throw throws trait try type typedef typeof union unsigned use using var virtual void volatile
  where while with yield bool boolean string auto sizeof chan map range select val fun when object`);

const PY_KEYWORDS = words(`
  and as assert async await break class continue def del elif else except finally for from global
  if import in is lambda match case nonlocal not or pass raise return try while with yield self`);

const RUBY_KEYWORDS = words(`
  alias and begin break case class def defined do else elsif end ensure for if in module next not
  or redo rescue retry return self super then unless until when while yield require puts`);

const SHELL_KEYWORDS = words(`
  if then else elif fi for while until do done case esac in function return local export readonly
  declare unset shift exit break continue source alias echo printf cd set trap eval exec sudo`);

const SQL_KEYWORDS = words(`
  select from where and or not insert into values update set delete create table drop alter index
  view join inner left right outer full on as group by order having limit offset union all distinct
  primary key foreign references null is in exists between like case when then else end default
  begin commit rollback transaction with returning integer int text varchar boolean real date`);

const FAMILIES = {
  c: [["comment", C_COMMENT], ["string", STRING + "|`(?:[^`\\\\]|\\\\.)*`"],
    ["number", NUMBER], ["literal", LITERALS], ["keyword", C_KEYWORDS]],
  python: [["comment", HASH_COMMENT],
    ["string", String.raw`[rRbBfFuU]{0,2}(?:"""[\s\S]*?(?:"""|$)|'''[\s\S]*?(?:'''|$)|${STRING})`],
    ["number", NUMBER], ["literal", LITERALS], ["keyword", PY_KEYWORDS]],
  ruby: [["comment", HASH_COMMENT], ["string", STRING], ["variable", String.raw`:\w+|@{1,2}\w+`],
    ["number", NUMBER], ["literal", LITERALS], ["keyword", RUBY_KEYWORDS]],
  shell: [["comment", String.raw`(?<![\w$])#[^\n]*`], ["string", STRING],
    ["variable", String.raw`\$(?:\{[^}\n]*\}|\w+|[@#?$!*-])`], ["number", NUMBER],
    ["keyword", SHELL_KEYWORDS]],
  sql: [["comment", String.raw`--[^\n]*|/\*[\s\S]*?(?:\*/|$)`], ["string", STRING],
    ["number", NUMBER], ["literal", words("true false null")], ["keyword", SQL_KEYWORDS]],
  json: [["property", String.raw`"(?:[^"\\\n]|\\.)*"(?=\s*:)`], ["string", STRING],
    ["number", String.raw`-?${NUMBER}`], ["literal", words("true false null")]],
  css: [["comment", String.raw`/\*[\s\S]*?(?:\*/|$)`], ["string", STRING],
    ["property", String.raw`[\w-]+(?=\s*:[^;{}]*[;}])`],
    ["number", String.raw`#[\da-fA-F]{3,8}\b|-?\d*\.?\d+(?:%|[a-z]+)?`],
    ["keyword", String.raw`@[\w-]+|!important`]],
  markup: [["comment", String.raw`<!--[\s\S]*?(?:-->|$)`], ["tag", String.raw`</?[\w:.-]+|/?>`],
    ["property", String.raw`[\w:.-]+(?==)`], ["string", STRING]],
  config: [["comment", String.raw`(?<!\S)[#;][^\n]*`], ["keyword", String.raw`^\s*\[[^\]\n]+\]`],
    ["property", String.raw`^\s*-?\s*[\w.-]+(?=\s*[:=])`], ["string", STRING],
    ["number", NUMBER], ["literal", words("true false null yes no on off")]],
};

const ALIASES = {
  c: "c c++ cpp cc h hpp cs csharp java kotlin kt swift go golang rust rs php dart scala js javascript jsx mjs cjs node ts typescript tsx",
  python: "py python python3 py3 gdscript",
  ruby: "rb ruby",
  shell: "sh bash shell zsh console terminal shellscript fish powershell ps1",
  sql: "sql sqlite postgres postgresql mysql",
  json: "json jsonc json5",
  css: "css scss sass less",
  markup: "html xml svg xhtml vue",
  config: "yaml yml toml ini cfg conf dotenv env properties",
};

const LANGUAGE_FAMILY = new Map();
for (const [family, names] of Object.entries(ALIASES)) {
  for (const name of names.split(" ")) LANGUAGE_FAMILY.set(name, family);
}

const compiled = new Map();

function pattern(family) {
  if (!compiled.has(family)) {
    const rules = FAMILIES[family];
    const source = rules.map(([kind, rule]) => `(?<${kind}>${rule})`).join("|");
    compiled.set(family, new RegExp(source, family === "sql" ? "gim" : "gm"));
  }
  return compiled.get(family);
}

/** Highlighted nodes for `code` in `language`, or null when the language is unknown. */
export function highlight(code, language) {
  const family = LANGUAGE_FAMILY.get(String(language).toLowerCase());
  if (!family) return null;
  const out = document.createDocumentFragment();
  let last = 0;
  for (const match of code.matchAll(pattern(family))) {
    if (match[0] === "") continue;
    const kind = Object.keys(match.groups).find((name) => match.groups[name] !== undefined);
    if (match.index > last) out.append(code.slice(last, match.index));
    const span = document.createElement("span");
    span.className = `tok-${kind}`;
    span.textContent = match[0];
    out.append(span);
    last = match.index + match[0].length;
  }
  if (last < code.length) out.append(code.slice(last));
  return out;
}

// Link destinations in model text: parsed as CommonMark writes them, then kept only if they are
// absolute http(s) URLs. Anything else (javascript:, data:, vbscript:, relative paths) is
// neutralized by the caller: the link text stays, the link does not.

import { meter } from "./meter.js";

const ESCAPABLE = /[!-/:-@[-`{-~]/;

/** An absolute http(s) URL, normalized, or null: everything else is neutralized. */
export function safeHref(raw) {
  let url;
  try {
    url = new URL(raw.trim()); // no base: a relative reference is refused too
  } catch {
    return null;
  }
  return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
}

// `(destination "title")` after a closing bracket: {href, end} or null. Every character looked
// at is paid for from `budget.left` (shared by one paragraph's links); once it is spent, no more
// links are made: hostile text ("[a](" repeated, no closing parenthesis) cannot make each
// bracket scan to the end of the text, while real links never come near the budget.
export function linkTail(src, i, budget = { left: Infinity }) {
  if (src[i] !== "(" || budget.left <= 0) return null;
  const tail = scanTail(src, i + 1);
  budget.left -= tail.seen - i;
  meter.steps += tail.seen - i;
  return tail.href !== undefined && budget.left >= 0 ? { href: tail.href, end: tail.seen } : null;
}

// {href, seen: the index after ")"} or {seen: how far it looked} when this is no link.
function scanTail(src, i) {
  while (src[i] === " " || src[i] === "\t" || src[i] === "\n") i++;
  let href;
  if (src[i] === "<") {
    const close = src.indexOf(">", i);
    if (close === -1) return { seen: src.length };
    if (/[\n<]/.test(src.slice(i + 1, close))) return { seen: close };
    href = src.slice(i + 1, close);
    i = close + 1;
  } else {
    let depth = 0;
    const start = i;
    for (; i < src.length; i++) {
      const c = src[i];
      if (c === "\\" && i + 1 < src.length && ESCAPABLE.test(src[i + 1])) i++;
      else if (/\s/.test(c)) break;
      else if (c === "(") depth++;
      else if (c === ")") {
        if (depth === 0) break;
        depth--;
      }
    }
    href = unescape(src.slice(start, i));
  }
  while (src[i] === " " || src[i] === "\t" || src[i] === "\n") i++;
  const quote = { '"': '"', "'": "'", "(": ")" }[src[i]];
  if (quote) {
    const close = src.indexOf(quote, i + 1);
    if (close === -1) return { seen: src.length };
    i = close + 1; // the title is dropped: hovering shows the destination instead
    while (src[i] === " " || src[i] === "\t" || src[i] === "\n") i++;
  }
  return src[i] === ")" ? { href, seen: i + 1 } : { seen: Math.min(i + 1, src.length) };
}

function unescape(text) {
  if (!text.includes("\\")) return text;
  let out = "";
  for (let i = 0; i < text.length; i++) {
    if (text[i] === "\\" && i + 1 < text.length && ESCAPABLE.test(text[i + 1])) i++;
    out += text[i];
  }
  return out;
}

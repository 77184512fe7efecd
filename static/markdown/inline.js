// Inline Markdown (a CommonMark + GFM subset) parsed into a linked list of nodes, which
// nodes.js turns into DOM nodes. Every scan is linear in the text, whatever the model sends.
//
// Model output is untrusted: nodes are made with createElement/createTextNode only, never from
// markup, and no attribute comes from the text except an href that parsed as an absolute
// http(s) URL. Raw HTML stays visible text. Images become links (or text): an <img> would let
// injected instructions send data out just by being rendered.

import { delimiterRun, delimiterStack, processEmphasis, pushDelimiter } from "./emphasis.js";
import { linkTail } from "./links.js";
import { meter } from "./meter.js";
import { appendNodes } from "./nodes.js";

const ESCAPABLE = /[!-/:-@[-`{-~]/;
const SPECIAL = /[\\`*_~![\]<&\nh]/g;
const BARE_URL = /https?:\/\/[^\s<>]+/y;
const ENTITY = /&(#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[a-zA-Z][a-zA-Z0-9]{1,31});/y;
const AUTOLINK = /<([a-zA-Z][a-zA-Z0-9+.-]{1,31}:[^\s<>]*)>/y;
const BR_TAG = /<br\s*\/?>/iy;
const NAMED = { amp: "&", lt: "<", gt: ">", quot: '"', apos: "'", nbsp: "\u00a0", copy: "©",
  reg: "®", hellip: "…", mdash: "—", ndash: "–", rarr: "→", larr: "←", times: "×" };

/** Append the inline content of `text` to `parent`. */
export function renderInline(text, parent) {
  const head = parseInline(text);
  appendNodes(head.next, parent);
}

// A doubly linked list of inline nodes, so emphasis can wrap a run of them in place.
function parseInline(src) {
  meter.chars += src.length;
  const head = { k: "head", prev: null, next: null };
  let tail = head;
  const add = (node) => {
    node.prev = tail;
    node.next = null;
    tail.next = node;
    tail = node;
    return node;
  };
  let text = "";
  const flush = () => {
    if (text) add({ k: "text", text });
    text = "";
  };
  const delims = delimiterStack();
  const brackets = [];
  let links = 0; // links made so far: a "[" pushed before one cannot open another (no links in links)
  let backticks = null; // where each length of backtick run starts, once a code span is looked for
  // Destination and title scans after "](" are paid for from this: text like "[a](" repeated
  // cannot make each "]" scan to the end of the text.
  const budget = { left: 2 * src.length + 4096 };
  let i = 0;
  while (i < src.length) {
    SPECIAL.lastIndex = i;
    const found = SPECIAL.exec(src);
    const at = found ? found.index : src.length;
    text += src.slice(i, at);
    i = at;
    if (!found) break;
    const c = src[i];
    if (c === "\\") {
      const next = src[i + 1];
      if (next === "\n") {
        text = text.trimEnd();
        flush();
        add({ k: "br" });
        i += 2;
      } else if (next !== undefined && ESCAPABLE.test(next)) {
        text += next;
        i += 2;
      } else {
        text += c;
        i++;
      }
    } else if (c === "`") {
      let run = 1;
      while (src[i + run] === "`") run++;
      backticks = backticks || backtickRuns(src);
      const close = nextRun(backticks, i + run, run);
      if (close === -1) {
        text += "`".repeat(run);
        i += run;
      } else {
        let code = src.slice(i + run, close).replace(/\n/g, " ");
        if (code.length > 2 && code[0] === " " && code.endsWith(" ") && /[^ ]/.test(code)) code = code.slice(1, -1);
        flush();
        add({ k: "code", text: code });
        i = close + run;
      }
    } else if (c === "*" || c === "_" || c === "~") {
      let run = 1;
      while (src[i + run] === c) run++;
      if (c === "~" && run > 2) {
        text += src.slice(i, i + run);
        i += run;
        continue;
      }
      const before = i > 0 ? src[i - 1] : " "; // the ends of the text count as spaces
      const after = i + run < src.length ? src[i + run] : " ";
      flush();
      pushDelimiter(delims, add(delimiterRun(c, run, before, after)));
      i += run;
    } else if (c === "!" || c === "[") {
      const image = c === "!";
      if (image && src[i + 1] !== "[") {
        text += c;
        i++;
        continue;
      }
      flush();
      const node = add({ k: "text", text: image ? "![" : "[" });
      brackets.push({ node, image, links, bottom: delims.top });
      i += image ? 2 : 1;
    } else if (c === "]") {
      const opener = brackets.pop();
      const active = opener && (opener.image || opener.links === links);
      const link = active ? linkTail(src, i + 1, budget) : null;
      if (!link) {
        text += "]";
        i++;
        continue;
      }
      flush();
      processEmphasis(delims, opener.bottom);
      const node = { k: opener.image ? "image" : "link", href: link.href, first: opener.node.next };
      // the nodes after the opening bracket become the link's children
      opener.node.prev.next = null;
      tail = opener.node.prev;
      if (node.first) node.first.prev = null;
      add(node);
      if (!opener.image) links++; // every "[" still open is now inactive
      i = link.end;
    } else if (c === "<") {
      AUTOLINK.lastIndex = i;
      BR_TAG.lastIndex = i;
      let m;
      if ((m = AUTOLINK.exec(src))) {
        flush();
        add({ k: "link", href: m[1], first: { k: "text", text: m[1], prev: null, next: null } });
        i += m[0].length;
      } else if ((m = BR_TAG.exec(src))) {
        flush();
        add({ k: "br" }); // models put <br> in table cells; it is the only tag honoured
        i += m[0].length;
      } else {
        text += c;
        i++;
      }
    } else if (c === "&") {
      ENTITY.lastIndex = i;
      const m = ENTITY.exec(src);
      const decoded = m ? decodeEntity(m[1]) : null;
      text += decoded ?? c;
      i += decoded === null ? 1 : m[0].length;
    } else if (c === "\n") {
      const hard = text.endsWith("  ");
      text = text.trimEnd();
      flush();
      add(hard ? { k: "br" } : { k: "text", text: "\n" });
      i++;
      while (src[i] === " " || src[i] === "\t") i++;
    } else if (c === "h") {
      BARE_URL.lastIndex = i;
      const m = i === 0 || /[\s(*_~]/.test(src[i - 1]) ? BARE_URL.exec(src) : null;
      if (!m) {
        text += c;
        i++;
        continue;
      }
      let url = trimUrlEnd(m[0]);
      // a closing parenthesis ends the URL when it has no opening one in it (GFM)
      let extra = count(url, ")") - count(url, "(");
      let end = url.length;
      while (extra > 0 && url[end - 1] === ")") {
        end--;
        extra--;
      }
      url = url.slice(0, end);
      flush();
      add({ k: "link", href: url, first: { k: "text", text: url, prev: null, next: null } });
      i += url.length;
    }
  }
  flush();
  processEmphasis(delims, delims.sentinel);
  return head;
}

function count(s, ch) {
  return s.split(ch).length - 1;
}

// Every maximal backtick run, by length, in one pass (as cmark does): looking for a closing
// run of a given length is then a step along a list, not a scan to the end of the text, which
// runs of different lengths ("`a``a```a...") would repeat for each opener.
function backtickRuns(src) {
  const runs = new Map();
  for (let i = src.indexOf("`"); i !== -1; ) {
    let n = 1;
    while (src[i + n] === "`") n++;
    let list = runs.get(n);
    if (!list) runs.set(n, (list = { at: [], next: 0 }));
    list.at.push(i);
    meter.chars += n;
    i = src.indexOf("`", i + n);
  }
  return runs;
}

// The first run of exactly `len` backticks starting at or after `from` (which only grows).
function nextRun(runs, from, len) {
  const list = runs.get(len);
  if (!list) return -1;
  while (list.next < list.at.length && list.at[list.next] < from) {
    list.next++;
    meter.steps++;
  }
  return list.next < list.at.length ? list.at[list.next] : -1;
}

function decodeEntity(name) {
  if (name[0] !== "#") return Object.hasOwn(NAMED, name) ? NAMED[name] : null;
  const code = name[1] === "x" || name[1] === "X" ? parseInt(name.slice(2), 16) : parseInt(name.slice(1), 10);
  if (code === 0 || code > 0x10ffff || (code >= 0xd800 && code <= 0xdfff)) return "\ufffd";
  return String.fromCodePoint(code);
}

// Trailing punctuation is not part of a bare URL; scanned by hand (see stripClosingHashes).
function trimUrlEnd(url) {
  let end = url.length;
  while (end > 0 && "?!.,:*_~'\"".includes(url[end - 1])) end -= 1;
  return url.slice(0, end);
}

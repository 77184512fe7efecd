// Inline Markdown (a CommonMark + GFM subset) turned straight into DOM nodes.
//
// Model output is untrusted: nodes are made with createElement/createTextNode only, never from
// markup, and no attribute comes from the text except an href that parsed as an absolute
// http(s) URL. Raw HTML stays visible text. Images become links (or text): an <img> would let
// injected instructions send data out just by being rendered.

import { delimiterRun, processEmphasis } from "./emphasis.js";
import { linkTail, safeHref } from "./links.js";

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
  const delims = [];
  const brackets = [];
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
      const close = findBackticks(src, i + run, run);
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
      delims.push(add(delimiterRun(c, run, before, after)));
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
      brackets.push({ node, image, active: true, bottom: delims.length });
      i += image ? 2 : 1;
    } else if (c === "]") {
      const opener = brackets.pop();
      const link = opener && opener.active ? linkTail(src, i + 1) : null;
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
      if (!opener.image) for (const b of brackets) if (!b.image) b.active = false; // no links in links
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
      while (url.endsWith(")") && count(url, "(") < count(url, ")")) url = url.slice(0, -1);
      flush();
      add({ k: "link", href: url, first: { k: "text", text: url, prev: null, next: null } });
      i += url.length;
    }
  }
  flush();
  processEmphasis(delims, 0);
  return head;
}

function count(s, ch) {
  return s.split(ch).length - 1;
}

function findBackticks(src, from, run) {
  for (let i = src.indexOf("`", from); i !== -1; i = src.indexOf("`", i)) {
    let n = 1;
    while (src[i + n] === "`") n++;
    if (n === run) return i;
    i += n;
  }
  return -1;
}

function decodeEntity(name) {
  if (name[0] !== "#") return Object.hasOwn(NAMED, name) ? NAMED[name] : null;
  const code = name[1] === "x" || name[1] === "X" ? parseInt(name.slice(2), 16) : parseInt(name.slice(1), 10);
  if (code === 0 || code > 0x10ffff || (code >= 0xd800 && code <= 0xdfff)) return "\ufffd";
  return String.fromCodePoint(code);
}

function appendNodes(node, parent, inLink = false) {
  const doc = parent.ownerDocument;
  for (; node; node = node.next) {
    switch (node.k) {
      case "text":
        parent.appendChild(doc.createTextNode(node.text));
        break;
      case "delim":
        if (node.len > 0) parent.appendChild(doc.createTextNode(node.ch.repeat(node.len)));
        break;
      case "code": {
        const code = doc.createElement("code");
        code.textContent = node.text;
        parent.appendChild(code);
        break;
      }
      case "br":
        parent.appendChild(doc.createElement("br"));
        break;
      case "el": {
        const el = doc.createElement(node.tag);
        appendNodes(node.first, el, inLink);
        parent.appendChild(el);
        break;
      }
      case "link":
      case "image":
        parent.appendChild(linkElement(node, doc, inLink));
        break;
      default:
        break;
    }
  }
}

function linkElement(node, doc, inLink) {
  // a link inside a link (an image in one, a bare URL in its text) stays text
  const href = inLink ? null : safeHref(node.href);
  const el = doc.createElement(href ? "a" : "span");
  if (node.k === "image") {
    el.className = "image-link";
    const alt = doc.createElement("span");
    appendNodes(node.first, alt, true);
    el.append(`[image${alt.textContent ? ": " : ""}`, ...alt.childNodes, "]");
  } else {
    appendNodes(node.first, el, true);
  }
  if (inLink) return el;
  if (href) {
    el.href = href;
    el.title = href;
    el.target = "_blank";
    el.rel = "noopener noreferrer nofollow";
    el.referrerPolicy = "no-referrer";
  } else {
    el.classList.add("link-removed");
    el.title = "link removed: only http(s) links are followed";
  }
  return el;
}

// Trailing punctuation is not part of a bare URL; scanned by hand (see stripClosingHashes).
function trimUrlEnd(url) {
  let end = url.length;
  while (end > 0 && "?!.,:*_~'\"".includes(url[end - 1])) end -= 1;
  return url.slice(0, end);
}

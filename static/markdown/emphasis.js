// CommonMark's delimiter-run algorithm ("process emphasis") over the inline parser's doubly
// linked list of nodes: a matched pair of * _ or ~ runs wraps the nodes between them in place.
//
// The delimiter stack is a doubly linked list too (dprev/dnext, below a sentinel), and the
// per-kind "openers bottom" is a creation position: removing delimiters never shifts others,
// so each delimiter is visited a bounded number of times (an array with splice made runs like
// "*a* *a* *a* ..." quadratic).

import { meter } from "./meter.js";

const PUNCT = /[\p{P}\p{S}]/u;
const SPACE = /\s/u;

/** An empty delimiter stack: `top` is its sentinel until delimiters are pushed. */
export function delimiterStack() {
  const sentinel = { pos: -1, dprev: null, dnext: null };
  return { sentinel, top: sentinel, count: 0 };
}

/** Push a delimiter node (from delimiterRun) on the stack. */
export function pushDelimiter(stack, node) {
  node.pos = stack.count++;
  node.dprev = stack.top;
  node.dnext = null;
  stack.top.dnext = node;
  stack.top = node;
  return node;
}

/** Flanking rules (CommonMark 6.2) for a run of `ch` between the characters `before`/`after`. */
export function delimiterRun(ch, len, before, after) {
  const left = !SPACE.test(after) && (!PUNCT.test(after) || SPACE.test(before) || PUNCT.test(before));
  const right = !SPACE.test(before) && (!PUNCT.test(before) || SPACE.test(after) || PUNCT.test(after));
  let canOpen = left;
  let canClose = right;
  if (ch === "_") {
    // intraword underscores (snake_case) neither open nor close
    canOpen = left && (!right || PUNCT.test(before));
    canClose = right && (!left || PUNCT.test(after));
  }
  return { k: "delim", ch, len, orig: len, canOpen, canClose };
}

/**
 * CommonMark "process emphasis" for the delimiters above `bottom` (a delimiter, or the
 * stack's sentinel): match closers with the nearest compatible opener; what is left above
 * `bottom` is plain text and leaves the stack.
 */
export function processEmphasis(stack, bottom) {
  const floor = {}; // per kind of closer: openers created before this position cannot match
  let closer = bottom.dnext;
  while (closer) {
    meter.steps++;
    if (!closer.canClose) {
      closer = closer.dnext;
      continue;
    }
    const kind = `${closer.ch}${closer.canOpen ? 1 : 0}${closer.orig % 3}`;
    const stop = Math.max(bottom.pos + 1, floor[kind] ?? -1);
    let opener = closer.dprev;
    for (; opener.pos >= stop; opener = opener.dprev) {
      meter.steps++;
      if (opener.ch === closer.ch && opener.canOpen && matches(opener, closer)) break;
    }
    if (opener.pos < stop) {
      floor[kind] = closer.pos;
      const next = closer.dnext;
      if (!closer.canOpen) drop(stack, closer);
      closer = next;
      continue;
    }
    const use = closer.ch === "~" ? closer.len : closer.len >= 2 && opener.len >= 2 ? 2 : 1;
    const el = { k: "el", tag: closer.ch === "~" ? "del" : use === 2 ? "strong" : "em", first: null };
    if (opener.next !== closer) {
      el.first = opener.next;
      el.first.prev = null;
      closer.prev.next = null;
    }
    opener.next = el;
    el.prev = opener;
    el.next = closer;
    closer.prev = el;
    opener.len -= use;
    closer.len -= use;
    // the delimiters between them stay in the text as characters
    opener.dnext = closer;
    closer.dprev = opener;
    if (opener.len === 0) {
      unlink(opener);
      drop(stack, opener);
    }
    if (closer.len === 0) {
      unlink(closer);
      const next = closer.dnext;
      drop(stack, closer);
      closer = next;
    }
  }
  bottom.dnext = null;
  stack.top = bottom;
}

function matches(opener, closer) {
  if (closer.ch === "~") return opener.len === closer.len;
  // CommonMark's "rule of 3"
  if ((opener.canClose || closer.canOpen) && (opener.orig + closer.orig) % 3 === 0) {
    return opener.orig % 3 === 0 && closer.orig % 3 === 0;
  }
  return true;
}

function drop(stack, d) {
  d.dprev.dnext = d.dnext;
  if (d.dnext) d.dnext.dprev = d.dprev;
  else stack.top = d.dprev;
}

function unlink(node) {
  if (node.prev) node.prev.next = node.next;
  if (node.next) node.next.prev = node.prev;
}

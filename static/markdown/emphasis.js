// CommonMark's delimiter-run algorithm ("process emphasis") over the inline parser's doubly
// linked list of nodes: a matched pair of * _ or ~ runs wraps the nodes between them in place.

const PUNCT = /[\p{P}\p{S}]/u;
const SPACE = /\s/u;

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

// CommonMark "process emphasis": match closers with the nearest compatible opener.
export function processEmphasis(delims, bottom) {
  const floor = {}; // per kind of closer: below here no opener can match (keeps this linear)
  let ci = bottom;
  while (ci < delims.length) {
    const closer = delims[ci];
    if (!closer.canClose) {
      ci++;
      continue;
    }
    const kind = `${closer.ch}${closer.canOpen ? 1 : 0}${closer.orig % 3}`;
    let oi = ci - 1;
    const stop = Math.max(bottom, floor[kind] ?? bottom);
    for (; oi >= stop; oi--) {
      const o = delims[oi];
      if (o.ch === closer.ch && o.canOpen && matches(o, closer)) break;
    }
    if (oi < stop) {
      floor[kind] = ci;
      if (closer.canOpen) ci++;
      else delims.splice(ci, 1);
      continue;
    }
    const opener = delims[oi];
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
    delims.splice(oi + 1, ci - oi - 1);
    for (const key of Object.keys(floor)) floor[key] = Math.min(floor[key], oi);
    ci = oi + 1;
    if (opener.len === 0) {
      unlink(opener);
      delims.splice(oi, 1);
      ci--;
    }
    if (closer.len === 0) {
      unlink(closer);
      delims.splice(ci, 1);
    }
  }
  delims.length = bottom; // what is left is plain text
}

function matches(opener, closer) {
  if (closer.ch === "~") return opener.len === closer.len;
  // CommonMark's "rule of 3"
  if ((opener.canClose || closer.canOpen) && (opener.orig + closer.orig) % 3 === 0) {
    return opener.orig % 3 === 0 && closer.orig % 3 === 0;
  }
  return true;
}

function unlink(node) {
  if (node.prev) node.prev.next = node.next;
  if (node.next) node.next.prev = node.prev;
}

// A fenced code block or a table open at the end of the streamed text, growing in place: its
// new complete lines are appended (code text, table rows) and nothing is redrawn. Each grow()
// looks only at characters it has not seen: `scanned` of the pending text is known to hold no
// line end, so a hostile line of a hundred thousand characters costs its length once, not once
// per frame.

import { dedent, indentOf, interrupts, isBlank, isFenceClose, rowCells } from "./blocks.js";
import { meter } from "./meter.js";
import { tableRow } from "./render.js";

// One character class, no nested quantifiers: model text must never make a regex backtrack.
export const HOLD = /^[-=*_+#`~>|:.)0-9 \t]*$/;
const QUOTE = /^ {0,3}> ?/;
const PARTIAL_ROW_LIMIT = 2048;

/**
 * The fence still open at the end of `block` inside list items and block quotes, or null:
 * {grow(node)} makes the GrowingFence that goes on filling it, given the DOM node made for
 * `block`. Its lines then go through the containers' rules: an item takes blank lines and lines
 * indented to its content, a quote lines starting with ">"; any other line ends them, and the
 * fence with them.
 */
export function nestedFence(block) {
  const path = [];
  for (let b = block; b; b = b.blocks[b.blocks.length - 1]) {
    if (b.type === "fence") {
      if (b.closed || !path.length) return null;
      return {
        grow(node) {
          let pre = node;
          while (pre && pre.tagName !== "PRE") pre = pre.lastElementChild;
          const code = pre.firstElementChild;
          const text = code.lastChild || code.appendChild(code.ownerDocument.createTextNode(""));
          return new GrowingFence(b.fence, text, b.code.length, path);
        },
      };
    }
    if (b.type === "item") path.push(b.contentIndent);
    else if (b.type === "quote") path.push(QUOTE);
    else return null;
  }
  return null;
}

export class GrowingFence {
  constructor(fence, text, lines, path = null) {
    this.fence = fence; // fenceOpen() of its opening line
    this.text = text; // the code's text node
    this.lines = lines; // lines in it so far
    this.path = path; // inside containers (see nestedFence): their content indents and quotes
    this.blanks = 0; // blank lines inside them not yet known to be code
    this.lineOpen = false; // its last line is unfinished but shown (it cannot close the fence)
    this.scanned = 0;
    this.hold = null; // how far the unfinished line is known to look like a closing fence
  }

  /** Take the pending text: {rest, closed}; closed once the fence is (or the text is over). */
  grow(src, finished) {
    if (this.path) return this._growNested(src, finished);
    meter.chars += src.length - this.scanned;
    let start = 0;
    let closed = false;
    let added = "";
    if (this.lineOpen) {
      const nl = src.indexOf("\n");
      added = nl === -1 ? src : src.slice(0, nl);
      start = nl === -1 ? src.length : nl + 1;
      this.lineOpen = nl === -1;
    }
    for (let nl = src.indexOf("\n", Math.max(start, this.scanned)); nl !== -1; nl = src.indexOf("\n", start)) {
      const line = src.slice(start, nl);
      start = nl + 1;
      this.hold = null;
      if (isFenceClose(line, this.fence)) {
        closed = true;
        break;
      }
      added += this._line(line);
    }
    let rest = src.slice(start);
    this.scanned = 0;
    if (finished && !closed) {
      // the end of the text closes the fence; its unfinished last line is a line too
      if (rest && !isFenceClose(rest, this.fence)) added += this._line(rest);
      rest = "";
      closed = true;
    }
    if (!closed && rest && !this._mayClose(rest)) {
      // It cannot be the closing fence any more: it is code, shown as it grows.
      added += this._line(rest);
      this.lineOpen = true;
      this.hold = null;
      rest = "";
    } else if (!closed && rest) {
      this.scanned = rest.length; // held back while it may yet close the fence
    }
    if (added) this.text.appendData(added);
    return { rest, closed };
  }

  // Inside containers only complete lines are taken (an unfinished one waits for its end).
  // Blank lines wait too: at the end of a list item they are not the item's (nor its code's).
  _growNested(src, finished) {
    meter.chars += src.length - this.scanned;
    let start = 0;
    let closed = false;
    let added = "";
    for (let nl = src.indexOf("\n", this.scanned); nl !== -1 && !closed; nl = src.indexOf("\n", start)) {
      const raw = src.slice(start, nl);
      const inner = this._inner(raw);
      if (inner === null) {
        closed = true; // the line ends the containers: it is for what follows
        break;
      }
      start = nl + 1;
      closed = isFenceClose(inner, this.fence);
      if (closed) added += this._blanks();
      else if (isBlank(raw)) this.blanks++;
      else added += this._blanks() + this._line(inner);
    }
    let rest = src.slice(start);
    this.scanned = 0;
    if (!closed && finished) {
      const inner = rest ? this._inner(rest) : null;
      if (inner !== null) {
        if (!isBlank(rest) && !isFenceClose(inner, this.fence)) added += this._blanks() + this._line(inner);
        rest = "";
      }
      closed = true;
    } else if (!closed) {
      this.scanned = rest.length;
    }
    if (added) this.text.appendData(added);
    return { rest, closed };
  }

  _blanks() {
    let out = "";
    for (; this.blanks > 0; this.blanks--) out += this._line("");
    return out;
  }

  // The line as the fence sees it inside its containers, or null if it ends them.
  _inner(line) {
    for (const level of this.path) {
      if (level === QUOTE) {
        if (!QUOTE.test(line)) return null;
        line = line.replace(QUOTE, "");
      } else if (isBlank(line)) {
        line = "";
      } else if (indentOf(line) >= level) {
        line = dedent(line, level);
      } else {
        return null;
      }
    }
    return line;
  }

  _line(line) {
    return (this.lines++ ? "\n" : "") + dedent(line, this.fence.indent);
  }

  // Could the unfinished line still become the closing fence (up to three spaces, a run of the
  // fence's character, then only spaces or tabs)? Only characters not seen before are looked at.
  _mayClose(rest) {
    const h = this.hold || (this.hold = { seen: 0, phase: "indent", spaces: 0 });
    for (; h.seen < rest.length && h.phase !== "no"; h.seen++) {
      const c = rest[h.seen];
      const blank = c === " " || c === "\t";
      if (h.phase === "indent") {
        if (c === " " && h.spaces < 3) h.spaces++;
        else if (c === this.fence.ch) h.phase = "run";
        else h.phase = blank ? "blank" : "no";
      } else if (h.phase === "run") {
        if (c !== this.fence.ch) h.phase = blank ? "trailing" : "no";
      } else if (!blank) {
        h.phase = "no"; // after the run, or after four columns of indent: only blanks may follow
      }
    }
    return h.phase !== "no";
  }
}

export class GrowingTable {
  constructor(body, align) {
    this.body = body; // its <tbody>
    this.align = align; // one entry per column
    this.partial = null; // the row showing the unfinished line
    this.scanned = 0;
  }

  /** Take the pending text: {rest, closed}; closed once a line ends the table (or the text). */
  grow(src, finished) {
    meter.chars += src.length - this.scanned;
    const doc = this.body.ownerDocument;
    const count = this.align.length;
    const row = (line) => tableRow(rowCells(line, count), this.align, "td", doc);
    let start = 0;
    let closed = false;
    for (let nl = src.indexOf("\n", this.scanned); nl !== -1; nl = src.indexOf("\n", start)) {
      const line = src.slice(start, nl);
      if (isBlank(line) || interrupts(line)) {
        closed = true; // the line belongs to what comes next
        break;
      }
      this.body.appendChild(row(line));
      start = nl + 1;
    }
    const rest = src.slice(start);
    this.scanned = 0;
    if (this.partial) this.partial.remove();
    this.partial = null;
    if (closed) return { rest, closed };
    if (finished) {
      if (isBlank(rest) || interrupts(rest)) return { rest, closed: true };
      this.body.appendChild(row(rest));
      return { rest: "", closed: true };
    }
    this.scanned = rest.length;
    // A long unfinished row waits for its line end: redrawing it each frame would not be bounded.
    if (rest.length <= PARTIAL_ROW_LIMIT && !HOLD.test(rest)) this.partial = this.body.appendChild(row(rest));
    return { rest, closed: false };
  }
}

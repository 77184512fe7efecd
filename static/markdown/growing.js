// A fenced code block or a table open at the end of the streamed text, growing in place: its
// new complete lines are appended (code text, table rows) and nothing is redrawn. Each grow()
// looks only at characters it has not seen: `scanned` of the pending text is known to hold no
// line end, so a hostile line of a hundred thousand characters costs its length once, not once
// per frame.

import { dedent, interrupts, isBlank, isFenceClose, rowCells } from "./blocks.js";
import { meter } from "./meter.js";
import { tableRow } from "./render.js";

// One character class, no nested quantifiers: model text must never make a regex backtrack.
export const HOLD = /^[-=*_+#`~>|:.)0-9 \t]*$/;
const PARTIAL_ROW_LIMIT = 2048;

export class GrowingFence {
  constructor(fence, text, lines) {
    this.fence = fence; // fenceOpen() of its opening line
    this.text = text; // the code's text node
    this.lines = lines; // lines in it so far
    this.lineOpen = false; // its last line is unfinished but shown (it cannot close the fence)
    this.scanned = 0;
    this.hold = null; // how far the unfinished line is known to look like a closing fence
  }

  /** Take the pending text: {rest, closed}; closed once the fence is (or the text is over). */
  grow(src, finished) {
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

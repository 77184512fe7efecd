// Markdown rendered while it streams, for linear total work on a long answer.
//
// Only the source after the last finished top-level block is kept and re-rendered: a block is
// finished once a later block has started on a complete line (a partial line can still turn
// "#" into "#hashtag" or "1" into "1.5"). Finished blocks become frozen DOM; list items are
// blocks of their own, so a long list freezes item by item into a shared <ul>/<ol>. A fenced
// code block or a table still open at the top level is not re-rendered at all: complete lines
// are appended to it (code text, table rows) and only its unfinished line is redrawn. Renders
// are batched to one per animation frame.
//
// While streaming, a partial last line made only of marker characters ("`", "##", "1.", "---",
// "|:--") is held back until it is more, so a fence or heading does not flash as text first;
// a last line starting with "|" waits one line to see whether it heads a table.

import { dedent, fenceOpen, interrupts, isBlank, isFenceClose, parseBlocks, rowCells } from "./blocks.js";
import { codeBlock, listFor, listKey, renderBlock, renderItem, tableRow } from "./render.js";

// One character class, no nested quantifiers: model text must never make a regex backtrack.
const HOLD = /^[-=*_+#`~>|:.)0-9 \t]*$/;
const FENCE_PREFIX = /^ {0,3}(`*|~*)[ \t]*$/;

export class MarkdownStream {
  constructor(container) {
    this.container = container;
    this.doc = container.ownerDocument;
    this._pending = ""; // source after the last frozen block, line ends normalized to LF
    this._afterCR = false;
    this._tail = []; // nodes of the live tail, replaced on each render
    this._list = null; // {el, key}: the last frozen top-level list, which new items may join
    this._open = null; // a top-level fence or table that grows in place: see _grow*
    this._frame = 0;
    this._finished = false;
    this.onRender = null; // called after each render, e.g. to keep the end in view
  }

  append(text) {
    if (!text || this._finished) return;
    // One kind of line end from here on; a CRLF split across two tokens still counts once.
    if (this._afterCR && text[0] === "\n") text = text.slice(1);
    this._afterCR = text.endsWith("\r");
    this._pending += text.replace(/\r\n?/g, "\n");
    if (!this._frame) this._frame = requestAnimationFrame(() => this.render());
  }

  /** The text is complete: render everything now, holding nothing back. */
  finish() {
    this._finished = true;
    this.render();
  }

  render() {
    if (this._frame) cancelAnimationFrame(this._frame);
    this._frame = 0;
    for (;;) {
      if (this._open) {
        const grow = this._open.fence ? this._growFence : this._growTable;
        if (!grow.call(this, this._open)) break; // still open: nothing after it yet
        this._open = null;
      } else if (!this._freeze()) {
        this._renderTail();
        break;
      }
    }
    if (this.onRender) this.onRender();
  }

  // Freeze finished blocks; true if the last block is an open fence or a table, which from now
  // on grows in place.
  _freeze() {
    const cut = this._pending.lastIndexOf("\n") + 1;
    if (cut === 0) return false;
    const lines = this._pending.slice(0, cut - 1).split("\n");
    const blocks = parseBlocks(lines);
    const last = blocks[blocks.length - 1];
    const keep = last ? last.start : lines.length;
    const grows = last && ((last.type === "fence" && !last.closed) || last.type === "table");
    if (keep === 0 && !grows) return false;
    this._clearTail();
    for (const block of blocks.slice(0, -1)) this._emit(block, this, false);
    let offset = 0;
    for (let i = 0; i < keep; i++) offset += lines[i].length + 1;
    if (!grows) {
      this._pending = this._pending.slice(offset);
      return false;
    }
    for (let i = keep; i < last.end; i++) offset += lines[i].length + 1;
    this._pending = this._pending.slice(offset);
    this._list = null;
    if (last.type === "fence") {
      const fence = fenceOpen(lines[keep]);
      const { pre, code } = codeBlock(fence.info, this.doc);
      const text = this.doc.createTextNode(last.code.join("\n"));
      const partial = this.doc.createTextNode("");
      code.append(text, partial);
      this.container.appendChild(pre);
      this._open = { fence, text, partial, lines: last.code.length };
    } else {
      const wrap = this.container.appendChild(renderBlock(last, this.doc));
      this._open = { body: wrap.querySelector("tbody"), align: last.align, partial: null };
    }
    return true;
  }

  // Append an open fence's new complete lines; true once it is closed (or the text is over).
  _growFence(f) {
    let start = 0;
    let closed = false;
    let added = "";
    for (let nl = this._pending.indexOf("\n"); nl !== -1; nl = this._pending.indexOf("\n", start)) {
      const line = this._pending.slice(start, nl);
      start = nl + 1;
      if (isFenceClose(line, f.fence)) {
        closed = true;
        break;
      }
      added += (f.lines++ ? "\n" : "") + dedent(line, f.fence.indent);
    }
    let rest = this._pending.slice(start);
    if (this._finished && !closed) {
      // the end of the text closes the fence; its unfinished last line is a line too
      if (rest && !isFenceClose(rest, f.fence)) added += (f.lines++ ? "\n" : "") + dedent(rest, f.fence.indent);
      rest = "";
      closed = true;
    }
    if (added) f.text.appendData(added);
    this._pending = rest;
    if (closed) {
      f.partial.remove();
      return true;
    }
    // The unfinished line shows as it grows, unless it may yet be the closing fence.
    const held = FENCE_PREFIX.test(rest) && (rest.trim() === "" || rest.trim()[0] === f.fence.ch);
    const shown = held ? "" : dedent(rest, f.fence.indent);
    f.partial.data = shown && f.lines ? `\n${shown}` : shown;
    return false;
  }

  // Append a table's new complete rows; true once a line ends it (or the text is over).
  _growTable(t) {
    let start = 0;
    let closed = false;
    const count = t.align.length;
    for (let nl = this._pending.indexOf("\n"); nl !== -1; nl = this._pending.indexOf("\n", start)) {
      const line = this._pending.slice(start, nl);
      if (isBlank(line) || interrupts(line)) {
        closed = true; // the line belongs to what comes next
        break;
      }
      t.body.appendChild(tableRow(rowCells(line, count), t.align, "td", this.doc));
      start = nl + 1;
    }
    this._pending = this._pending.slice(start);
    if (t.partial) t.partial.remove();
    t.partial = null;
    const rest = this._pending;
    if (closed) return true;
    if (this._finished) {
      if (isBlank(rest) || interrupts(rest)) return true;
      t.body.appendChild(tableRow(rowCells(rest, count), t.align, "td", this.doc));
      this._pending = "";
      return true;
    }
    if (!HOLD.test(rest)) t.partial = t.body.appendChild(tableRow(rowCells(rest, count), t.align, "td", this.doc));
    return false;
  }

  _renderTail() {
    this._clearTail();
    let src = this._pending;
    if (!this._finished) {
      const nl = src.lastIndexOf("\n");
      if (HOLD.test(src.slice(nl + 1))) src = src.slice(0, nl + 1);
    }
    if (!src) return;
    const lines = src.split("\n");
    if (lines[lines.length - 1] === "") lines.pop();
    const blocks = parseBlocks(lines);
    const last = blocks[blocks.length - 1];
    if (!this._finished && last && last.type === "paragraph") {
      const para = last.text.split("\n");
      if (para[para.length - 1].startsWith("|")) {
        para.pop();
        if (para.length) last.text = para.join("\n");
        else blocks.pop();
      }
    }
    const state = { _list: this._list };
    for (const block of blocks) this._emit(block, state, true);
  }

  // Render a top-level block at the end; items join the open list when they match it.
  _emit(block, state, live) {
    let node;
    if (block.type === "item") {
      const key = listKey(block);
      if (state._list && state._list.key === key) {
        node = state._list.el.appendChild(renderItem(block, this.doc));
      } else {
        node = this.container.appendChild(listFor(block, this.doc));
        node.appendChild(renderItem(block, this.doc));
        state._list = { el: node, key };
      }
    } else {
      node = this.container.appendChild(renderBlock(block, this.doc));
      state._list = null;
    }
    if (live) this._tail.push(node);
  }

  _clearTail() {
    for (const node of this._tail) node.remove();
    this._tail = [];
  }
}

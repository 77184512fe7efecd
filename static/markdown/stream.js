// Markdown rendered while it streams, for linear total work on a long answer.
//
// Only the source after the last finished top-level block is kept and re-rendered: a block is
// finished once a later block has started on a complete line (a partial line can still turn
// "#" into "#hashtag" or "1" into "1.5"). Finished blocks become frozen DOM; list items are
// blocks of their own, so a long list freezes item by item into a shared <ul>/<ol>. A fenced
// code block or a table still open at the top level is not re-rendered at all: complete lines
// are appended to it (code text, table rows); a code line is appended as it grows once it
// cannot be the closing fence, and a table's unfinished row is redrawn. Renders are batched to
// one per animation frame.
//
// While streaming, a partial last line made only of marker characters ("`", "##", "1.", "---",
// "|:--") is held back until it is more, so a fence or heading does not flash as text first;
// a last line starting with "|" waits one line to see whether it heads a table.
//
// Each frame's work is bounded, however long the reply or its blocks: a frame takes at most
// FRAME_BUDGET new characters (the rest waits for the next frame; finish() takes everything);
// an open block redrawn whole is at most TAIL_LIMIT characters, beyond which what it has so far
// is frozen as it renders now and the rest goes on as new text (Markdown spanning that cut is
// not seen as one: only blocks that long are cut); open fences and tables look only at their
// new text (growing.js).
//
// A rendering error never leaves the reply stuck: the text so far is shown as plain text from
// then on, and onError is told.

import { fenceOpen, parseBlocks } from "./blocks.js";
import { GrowingFence, GrowingTable, HOLD, nestedFence } from "./growing.js";
import { meter } from "./meter.js";
import { codeBlock, listFor, listKey, renderBlock, renderItem } from "./render.js";

const FRAME_BUDGET = 32768;
const TAIL_LIMIT = 8192;
const LINE_KEEP = 1024; // of a line longer than TAIL_LIMIT / 2, the part left live when it is cut


export class MarkdownStream {
  constructor(container) {
    this.container = container;
    this.doc = container.ownerDocument;
    this._inbox = ""; // appended, not yet taken by a frame
    this._pending = ""; // source after the last frozen block, line ends normalized to LF
    this._source = ""; // all of it, for the plain-text fallback
    this._afterCR = false;
    this._tail = []; // nodes of the live tail, replaced on each render
    this._list = null; // {el, key}: the last frozen top-level list, which new items may join
    this._open = null; // a fence or table that grows in place (growing.js)
    this._lastNode = null; // the last top-level node made
    this._frame = 0;
    this._finished = false;
    this._plain = null; // after a rendering error: the text node showing the source
    this.onRender = null; // called after each render, e.g. to keep the end in view
    this.onError = null; // called once if rendering failed (the text is then shown plain)
  }

  /** The error that made this stream fall back to plain text, or null. */
  get failed() {
    return this._failed ?? null;
  }

  append(text) {
    if (!text || this._finished) return;
    // One kind of line end from here on; a CRLF split across two tokens still counts once.
    if (this._afterCR && text[0] === "\n") text = text.slice(1);
    this._afterCR = text.endsWith("\r");
    text = text.replace(/\r\n?/g, "\n");
    this._source += text;
    if (this._plain) {
      this._plain.appendData(text);
      if (this.onRender) this.onRender();
      return;
    }
    this._inbox += text;
    this._schedule();
  }

  /** The text is complete: render everything now, holding nothing back. */
  finish() {
    this._finished = true;
    this.render();
  }

  render() {
    if (this._frame) cancelAnimationFrame(this._frame);
    this._frame = 0;
    if (!this._plain) {
      try {
        this._render();
      } catch (error) {
        this.fail(error);
      }
    }
    if (this.onRender) this.onRender();
  }

  _schedule() {
    if (!this._frame) this._frame = requestAnimationFrame(() => this.render());
  }

  _render() {
    let take = this._inbox;
    this._inbox = "";
    if (!this._finished && take.length > FRAME_BUDGET) {
      this._inbox = take.slice(FRAME_BUDGET);
      take = take.slice(0, FRAME_BUDGET);
      this._schedule();
    }
    this._pending += take;
    for (;;) {
      if (this._open) {
        const { rest, closed } = this._open.grow(this._pending, this._finished);
        this._pending = rest;
        if (!closed) break; // still open: nothing after it yet
        this._open = null;
      } else if (!this._freeze()) {
        if (this._pending.length > TAIL_LIMIT) this._cut();
        this._renderTail();
        break;
      }
    }
  }

  /** Show everything so far as plain text, and the rest as it comes: the reply stays readable
   *  whatever went wrong in the renderer (or around it). */
  fail(error) {
    if (this._plain) return;
    this._failed = error;
    this._open = null;
    this._tail = [];
    this._inbox = "";
    this._pending = "";
    this._plain = this.doc.createTextNode(this._source);
    this.container.classList.add("plain");
    this.container.replaceChildren(this._plain);
    console.error("could not render the reply as Markdown: showing it as plain text", error);
    if (this.onError) this.onError(error);
    if (this.onRender) this.onRender();
  }

  // The open block is over TAIL_LIMIT: freeze it as it renders now and go on with the rest as
  // new text, cut at the last line end, or near the end of a very long line. A fence open
  // inside it (code in a list item or a quote, as models write) goes on growing in place.
  _cut() {
    const src = this._pending;
    meter.chars += src.length;
    let cut = src.lastIndexOf("\n") + 1;
    if (cut > 0) {
      const blocks = parseBlocks(src.slice(0, cut - 1).split("\n"));
      const nested = nestedFence(blocks[blocks.length - 1]);
      if (nested || src.length - cut <= TAIL_LIMIT / 2) {
        this._pending = src.slice(cut);
        this._freezeAll(blocks);
        if (nested) this._open = nested.grow(this._lastNode);
        return;
      }
    }
    cut = src.length - LINE_KEEP;
    const space = src.lastIndexOf(" ", cut);
    if (space > cut - 64) cut = space + 1;
    const c = src.charCodeAt(cut);
    if (c >= 0xdc00 && c <= 0xdfff) cut--; // not between the halves of a surrogate pair
    this._pending = src.slice(cut);
    this._freezeAll(parseBlocks(src.slice(0, cut).split("\n")));
  }

  _freezeAll(blocks) {
    this._clearTail();
    for (const block of blocks) this._emit(block, this, false);
  }

  // Freeze finished blocks; true if the last block is an open fence or a table, which from now
  // on grows in place.
  _freeze() {
    meter.chars += this._pending.length;
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
      const text = code.appendChild(this.doc.createTextNode(last.code.join("\n")));
      this.container.appendChild(pre);
      this._open = new GrowingFence(fence, text, last.code.length);
    } else {
      const wrap = this.container.appendChild(renderBlock(last, this.doc));
      this._open = new GrowingTable(wrap.querySelector("tbody"), last.align);
    }
    return true;
  }

  _renderTail() {
    this._clearTail();
    let src = this._pending;
    meter.chars += src.length;
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
    this._lastNode = node;
  }

  _clearTail() {
    for (const node of this._tail) node.remove();
    this._tail = [];
  }
}

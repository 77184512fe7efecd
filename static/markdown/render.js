// Blocks (from blocks.js) to DOM nodes. Text goes in through renderInline/textContent only.

import { renderInline } from "./inline.js";
import { meter } from "./meter.js";

/** One block as a node; list items are grouped by the caller (see appendBlocks). */
export function renderBlock(block, doc) {
  switch (block.type) {
    case "heading": {
      // No id from model text: an id or name attribute could clobber page globals.
      const h = doc.createElement(`h${block.level}`);
      renderInline(block.text, h);
      return h;
    }
    case "hr":
      return doc.createElement("hr");
    case "fence": {
      const { pre, code } = codeBlock(block.info, doc);
      code.textContent = block.code.join("\n");
      return pre;
    }
    case "quote": {
      const quote = doc.createElement("blockquote");
      appendBlocks(block.blocks, quote);
      return quote;
    }
    case "table":
      return table(block, doc);
    case "item": {
      const list = listFor(block, doc);
      list.appendChild(renderItem(block, doc));
      return list;
    }
    default: {
      const p = doc.createElement("p");
      renderInline(block.text, p);
      return p;
    }
  }
}

/** Render blocks into `parent`, neighbouring compatible list items in one list. */
export function appendBlocks(blocks, parent) {
  const doc = parent.ownerDocument;
  let list = null;
  let key = null;
  for (const block of blocks) {
    if (block.type === "item" && list !== null && key === listKey(block)) {
      list.appendChild(renderItem(block, doc));
      continue;
    }
    const node = renderBlock(block, doc);
    parent.appendChild(node);
    list = block.type === "item" ? node : null;
    key = block.type === "item" ? listKey(block) : null;
  }
}

export function listKey(block) {
  return `${block.ordered ? "ol" : "ul"}${block.key}`;
}

export function listFor(block, doc) {
  const list = doc.createElement(block.ordered ? "ol" : "ul");
  if (block.ordered && block.number !== 1) list.start = block.number;
  return list;
}

export function renderItem(block, doc) {
  const li = doc.createElement("li");
  const inner = block.blocks;
  if (inner.length === 1 && inner[0].type === "paragraph") {
    // a tight item: its text sits in the <li> itself
    let text = inner[0].text;
    const task = /^\[([ xX])\][ \t]/.exec(text);
    if (task) {
      li.className = "task";
      li.append(task[1] === " " ? "☐ " : "☑ ");
      text = text.slice(task[0].length);
    }
    renderInline(text, li);
  } else {
    appendBlocks(inner, li);
  }
  return li;
}

export function codeBlock(info, doc) {
  const pre = doc.createElement("pre");
  const code = doc.createElement("code");
  // The language only ever becomes a label and a class of safe characters.
  const lang = (info.split(/\s/)[0] || "").replace(/[^\w+#.-]/g, "").slice(0, 24);
  if (lang) {
    pre.dataset.lang = lang;
    code.className = `language-${lang}`;
  }
  pre.appendChild(code);
  return { pre, code };
}

/** A row of `align.length` columns; a short row ends in one empty cell spanning the rest (a
 *  cell per missing column would let rows of "|" make dozens of nodes per character). */
export function tableRow(cells, align, tag, doc) {
  meter.nodes += cells.length + 2;
  const tr = doc.createElement("tr");
  cells.forEach((cell, i) => {
    const td = doc.createElement(tag);
    if (align[i]) td.className = `align-${align[i]}`;
    renderInline(cell, td);
    tr.appendChild(td);
  });
  if (cells.length < align.length) tr.appendChild(doc.createElement(tag)).colSpan = align.length - cells.length;
  return tr;
}

function table(block, doc) {
  const wrap = doc.createElement("div");
  wrap.className = "table-wrap"; // scrolls sideways on a narrow screen instead of the page
  const t = doc.createElement("table");
  const thead = doc.createElement("thead");
  thead.appendChild(tableRow(block.head, block.align, "th", doc));
  const tbody = doc.createElement("tbody"); // even when empty: a streaming table grows into it
  for (const cells of block.rows) tbody.appendChild(tableRow(cells, block.align, "td", doc));
  t.append(thead, tbody);
  wrap.appendChild(t);
  return wrap;
}

// Block structure of the Markdown models write (a CommonMark + GFM subset): ATX and setext
// headings, paragraphs, fenced code, block quotes, bullet and ordered list items, rules and
// tables. Pure: lines in, plain objects out, no DOM. Raw HTML is not a block here: it stays
// text. Indented code blocks are not supported (models fence their code; indentation in their
// output nearly always means list nesting).
//
// parseBlocks(lines) -> [{type, start, end, ...}] with line ranges [start, end). List items are
// separate blocks (type "item"); renderers group neighbouring compatible items into one list,
// which lets the streaming renderer freeze a long list item by item.

import { meter } from "./meter.js";

const MAX_DEPTH = 16; // hostile nesting (">>>>>>..." or deep lists) ends as plain text
// Tables wider than this stay text: a header of thousands of columns is no table a model means.
const MAX_COLUMNS = 64;

const FENCE_OPEN = /^( {0,3})(`{3,}|~{3,})(.*)$/;
const ATX = /^ {0,3}(#{1,6})(?=[ \t]|$)(.*)$/;
const HR = /^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$/;
const QUOTE = /^ {0,3}> ?/;
const MARKER = /^( {0,3})([-+*]|\d{1,9}[.)])(?=[ \t]|$)/;
const SETEXT = /^ {0,3}(=+|-+)[ \t]*$/;
// Tested on trimEnd()ed lines: a trailing [ \t]* after the other optional parts backtracks
// quadratically on long runs of spaces.
const TABLE_DELIM = /^ {0,3}\|?[ \t]*:?-+:?[ \t]*(?:\|[ \t]*:?-+:?[ \t]*)*\|?$/;

export function isBlank(line) {
  return /^[ \t]*$/.test(line);
}

/** Columns of leading whitespace (tabs stop every 4 columns). */
export function indentOf(line) {
  let col = 0;
  for (const ch of line) {
    if (ch === " ") col += 1;
    else if (ch === "\t") col += 4 - (col % 4);
    else break;
  }
  return col;
}

/** The line without up to `cols` columns of leading whitespace. */
export function dedent(line, cols) {
  let col = 0;
  let i = 0;
  while (i < line.length && col < cols) {
    const ch = line[i];
    if (ch === " ") col += 1;
    else if (ch === "\t") {
      const next = col + 4 - (col % 4);
      if (next > cols) return " ".repeat(next - cols) + line.slice(i + 1); // part of a tab
      col = next;
    } else break;
    i++;
  }
  return line.slice(i);
}

export function fenceOpen(line) {
  const m = FENCE_OPEN.exec(line);
  if (!m) return null;
  const info = m[3].trim();
  if (m[2][0] === "`" && info.includes("`")) return null; // CommonMark: that is inline code
  return { indent: m[1].length, ch: m[2][0], len: m[2].length, info };
}

export function isFenceClose(line, fence) {
  const m = /^ {0,3}(`{3,}|~{3,})[ \t]*$/.exec(line);
  return m !== null && m[1][0] === fence.ch && m[1].length >= fence.len;
}

export function listMarker(line) {
  if (HR.test(line)) return null; // "* * *" is a rule, not an item
  const m = MARKER.exec(line);
  if (!m) return null;
  const indent = m[1].length;
  const marker = m[2];
  const rest = line.slice(m[0].length);
  let col = indent + marker.length;
  let used = 0;
  while (used < rest.length && (rest[used] === " " || rest[used] === "\t")) {
    col += rest[used] === "\t" ? 4 - (col % 4) : 1;
    used++;
  }
  const spaces = col - indent - marker.length;
  let content = rest.slice(used);
  let contentIndent = col;
  if (content === "" || spaces > 4) {
    contentIndent = indent + marker.length + 1;
    if (content !== "") content = dedent(rest, 1);
  }
  const ordered = marker.length > 1 || /\d/.test(marker);
  return {
    ordered,
    // items join one list only with the same bullet, or the same delimiter after the number
    key: ordered ? marker[marker.length - 1] : marker,
    number: ordered ? parseInt(marker, 10) : 1,
    contentIndent,
    content,
  };
}

/** Table cells of a row: split at unescaped pipes, outer pipes optional. */
export function splitCells(line) {
  let s = line.trim();
  if (s.startsWith("|")) s = s.slice(1);
  if (s.endsWith("|") && !s.endsWith("\\|")) s = s.slice(0, -1);
  const cells = [];
  let cell = "";
  for (let i = 0; i < s.length; i++) {
    if (s[i] === "\\" && s[i + 1] === "|") {
      cell += "|";
      i++;
    } else if (s[i] === "|") {
      cells.push(cell.trim());
      cell = "";
    } else cell += s[i];
  }
  cells.push(cell.trim());
  return cells;
}

/** The cells of a body row, at most as many as the header has (GFM: extra ones are dropped;
 *  the renderer spans one empty cell over the missing ones). */
export function rowCells(line, count) {
  return splitCells(line).slice(0, count);
}

function isTableStart(lines, i) {
  if (i + 1 >= lines.length || !lines[i].includes("|")) return false;
  const delim = lines[i + 1];
  if (!delim.includes("|") || !TABLE_DELIM.test(delim.trimEnd())) return false;
  const count = splitCells(lines[i]).length;
  return count <= MAX_COLUMNS && count === splitCells(delim).length;
}

/** Does this line start a block that ends a paragraph (CommonMark "interrupt")? */
export function interrupts(line) {
  if (ATX.test(line) || HR.test(line) || QUOTE.test(line) || fenceOpen(line)) return true;
  const item = listMarker(line);
  // An empty item, or a numbered one not starting at 1, cannot interrupt a paragraph.
  return item !== null && item.content.trim() !== "" && (!item.ordered || item.number === 1);
}

export function parseBlocks(lines, depth = 0) {
  const blocks = [];
  let i = 0;
  for (const line of lines) meter.chars += line.length + 1;
  while (i < lines.length) {
    const line = lines[i];
    if (isBlank(line)) {
      i++;
      continue;
    }
    const start = i;
    let m;
    const fence = fenceOpen(line);
    if (fence) {
      const code = [];
      let closed = false;
      for (i++; i < lines.length; i++) {
        if (isFenceClose(lines[i], fence)) {
          closed = true;
          i++;
          break;
        }
        code.push(dedent(lines[i], fence.indent));
      }
      blocks.push({ type: "fence", start, end: i, info: fence.info, code, closed, fence });
    } else if ((m = ATX.exec(line))) {
      const text = stripClosingHashes(m[2]);
      blocks.push({ type: "heading", start, end: ++i, level: m[1].length, text });
    } else if (HR.test(line)) {
      blocks.push({ type: "hr", start, end: ++i });
    } else if (depth < MAX_DEPTH && QUOTE.test(line)) {
      const inner = [];
      while (i < lines.length) {
        const l = lines[i];
        if (QUOTE.test(l)) inner.push(l.replace(QUOTE, ""));
        // lazy continuation: a plain line right after quoted text continues its paragraph
        else if (!isBlank(l) && !isBlank(inner[inner.length - 1]) && !interrupts(l)) inner.push(l);
        else break;
        i++;
      }
      blocks.push({ type: "quote", start, end: i, blocks: parseBlocks(inner, depth + 1) });
    } else if (depth < MAX_DEPTH && (m = listMarker(line))) {
      i = parseItem(lines, i, m, depth, blocks);
    } else if (isTableStart(lines, i)) {
      const head = splitCells(line);
      const align = splitCells(lines[i + 1]).map((c) =>
        c.endsWith(":") ? (c.startsWith(":") ? "center" : "right") : c.startsWith(":") ? "left" : "");
      const rows = [];
      for (i += 2; i < lines.length && !isBlank(lines[i]) && !interrupts(lines[i]); i++) {
        rows.push(rowCells(lines[i], head.length));
      }
      blocks.push({ type: "table", start, end: i, head, align, rows });
    } else {
      const para = [line.trimStart()];
      let level = 0;
      for (i++; i < lines.length; i++) {
        const l = lines[i];
        if (isBlank(l)) break;
        if ((m = SETEXT.exec(l))) {
          level = m[1][0] === "=" ? 1 : 2;
          i++;
          break;
        }
        if (isTableStart(lines, i) || interrupts(l)) break;
        para.push(l.trimStart());
      }
      if (level) blocks.push({ type: "heading", start, end: i, level, text: para.join("\n").trim() });
      else blocks.push({ type: "paragraph", start, end: i, text: para.join("\n").trimEnd() });
    }
  }
  return blocks;
}

function parseItem(lines, i, marker, depth, blocks) {
  const start = i;
  const inner = [marker.content];
  let innerFence = fenceOpen(marker.content);
  let end = i + 1;
  for (i++; i < lines.length; i++) {
    const l = lines[i];
    if (isBlank(l)) {
      inner.push("");
      continue;
    }
    let text;
    if (indentOf(l) >= marker.contentIndent) text = dedent(l, marker.contentIndent);
    else if (!innerFence && !isBlank(lines[i - 1]) && !interrupts(l) && !listMarker(l) && !isFenceLine(inner))
      text = l; // lazy continuation of the item's paragraph
    else break;
    inner.push(text);
    end = i + 1;
    if (innerFence) {
      if (isFenceClose(text, innerFence)) innerFence = null;
    } else innerFence = fenceOpen(text);
  }
  inner.length = end - start; // trailing blank lines belong to whatever comes next
  blocks.push({
    type: "item", start, end, contentIndent: marker.contentIndent,
    ordered: marker.ordered, key: marker.key, number: marker.number,
    blocks: parseBlocks(inner, depth + 1),
  });
  return end;
}

function isFenceLine(inner) {
  // a closing fence as the item's last line ends its code: the next plain line is not lazy text
  const last = inner[inner.length - 1];
  return last !== undefined && /^ {0,3}(`{3,}|~{3,})[ \t]*$/.test(last);
}

// A heading's optional closing run of #, by hand: the regex form backtracks quadratically on
// long runs of spaces, and model text chooses what it sends.
function stripClosingHashes(text) {
  let end = text.length;
  while (end > 0 && (text[end - 1] === " " || text[end - 1] === "\t")) end -= 1;
  let hashes = end;
  while (hashes > 0 && text[hashes - 1] === "#") hashes -= 1;
  if (hashes < end && (hashes === 0 || text[hashes - 1] === " " || text[hashes - 1] === "\t")) end = hashes;
  return text.slice(0, end).trim();
}

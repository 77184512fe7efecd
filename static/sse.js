// Server-Sent Events stream parser (WHATWG HTML, "Interpreting an event stream"). No I/O:
// feed it the bytes of a response body as they arrive and it returns what they completed.
//
//   const parser = new SSEParser();
//   for (const item of parser.feed(bytes)) { ... }   // item.kind: "event" | "comment" | "retry"
//
// An event is {kind: "event", type, data, lastEventId}; a comment {kind: "comment", text};
// a valid retry field {kind: "retry", ms}. At the end of the body call end(): WHATWG discards
// an event that was not closed by a blank line, so it returns nothing and only resets.

const LF = 10;
const CR = 13;

export class SSEParser {
  constructor() {
    // stream: true keeps a UTF-8 sequence split across chunks for the next one; the decoder
    // also drops one leading BOM, as the standard asks.
    this._decoder = new TextDecoder("utf-8");
    this._line = ""; // the unfinished line: never holds a line end
    this._afterCR = false; // a chunk ended in CR: an LF starting the next one is its pair
    this._data = [];
    this._type = "";
    this._lastEventId = "";
  }

  /** Parse a chunk (Uint8Array/ArrayBuffer of UTF-8, or an already decoded string). */
  feed(chunk) {
    const text = typeof chunk === "string" ? chunk : this._decoder.decode(chunk, { stream: true });
    const out = [];
    let start = 0;
    if (this._afterCR && text.length > 0) {
      this._afterCR = false;
      if (text.charCodeAt(0) === LF) start = 1;
    }
    // Only the new text is scanned: a long line arriving in many chunks costs linear time.
    for (let i = start; i < text.length; i++) {
      const c = text.charCodeAt(i);
      if (c !== LF && c !== CR) continue;
      const line = this._line + text.slice(start, i);
      this._line = "";
      // WHATWG: CRLF, a lone LF or a lone CR ends a line.
      if (c === CR) {
        if (i + 1 === text.length) this._afterCR = true;
        else if (text.charCodeAt(i + 1) === LF) i++;
      }
      start = i + 1;
      this._processLine(line, out);
    }
    if (start < text.length) this._line += text.slice(start);
    return out;
  }

  /** The body ended: flush the decoder and drop any event not closed by a blank line. */
  end() {
    this._decoder.decode();
    this._decoder = new TextDecoder("utf-8");
    this._line = "";
    this._afterCR = false;
    this._data = [];
    this._type = "";
    return [];
  }

  /** The last event id seen (it persists across events, as for EventSource). */
  get lastEventId() {
    return this._lastEventId;
  }

  _processLine(line, out) {
    if (line === "") {
      this._dispatch(out);
      return;
    }
    if (line.charCodeAt(0) === 58 /* ":" */) {
      out.push({ kind: "comment", text: line.slice(1).replace(/^ /, "") });
      return;
    }
    const colon = line.indexOf(":");
    let field = line;
    let value = "";
    if (colon !== -1) {
      field = line.slice(0, colon);
      value = line.slice(colon + 1);
      if (value.charCodeAt(0) === 32) value = value.slice(1); // one leading space, no more
    }
    switch (field) {
      case "data":
        this._data.push(value);
        break;
      case "event":
        this._type = value;
        break;
      case "id":
        // WHATWG: an id containing NUL is ignored (it could not be sent back in a header).
        if (!value.includes("\0")) this._lastEventId = value;
        break;
      case "retry":
        if (/^[0-9]+$/.test(value)) out.push({ kind: "retry", ms: parseInt(value, 10) });
        break;
      default:
        break; // unknown fields are ignored
    }
  }

  _dispatch(out) {
    const type = this._type;
    this._type = "";
    if (this._data.length === 0) return; // no data field: nothing is dispatched
    const data = this._data.join("\n");
    this._data = [];
    out.push({ kind: "event", type: type || "message", data, lastEventId: this._lastEventId });
  }
}

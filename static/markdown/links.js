// Link destinations in model text: parsed as CommonMark writes them, then kept only if they are
// absolute http(s) URLs. Anything else (javascript:, data:, vbscript:, relative paths) is
// neutralized by the caller: the link text stays, the link does not.

const ESCAPABLE = /[!-/:-@[-`{-~]/;

/** An absolute http(s) URL, normalized, or null: everything else is neutralized. */
export function safeHref(raw) {
  let url;
  try {
    url = new URL(raw.trim()); // no base: a relative reference is refused too
  } catch {
    return null;
  }
  return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
}

// `(destination "title")` after a closing bracket: {href, end} or null.
export function linkTail(src, i) {
  if (src[i] !== "(") return null;
  i++;
  while (src[i] === " " || src[i] === "\t" || src[i] === "\n") i++;
  let href = "";
  if (src[i] === "<") {
    const close = src.indexOf(">", i);
    if (close === -1 || /[\n<]/.test(src.slice(i + 1, close))) return null;
    href = src.slice(i + 1, close);
    i = close + 1;
  } else {
    let depth = 0;
    for (; i < src.length; i++) {
      const c = src[i];
      if (c === "\\" && i + 1 < src.length && ESCAPABLE.test(src[i + 1])) href += src[++i];
      else if (/\s/.test(c)) break;
      else if (c === "(") {
        depth++;
        href += c;
      } else if (c === ")") {
        if (depth === 0) break;
        depth--;
        href += c;
      } else href += c;
    }
  }
  while (src[i] === " " || src[i] === "\t" || src[i] === "\n") i++;
  const quote = { '"': '"', "'": "'", "(": ")" }[src[i]];
  if (quote) {
    const close = src.indexOf(quote, i + 1);
    if (close === -1) return null;
    i = close + 1; // the title is dropped: hovering shows the destination instead
    while (src[i] === " " || src[i] === "\t" || src[i] === "\n") i++;
  }
  return src[i] === ")" ? { href, end: i + 1 } : null;
}

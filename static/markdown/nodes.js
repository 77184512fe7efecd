// The inline parser's linked list of nodes (inline.js) turned into DOM nodes.
//
// Model output is untrusted: nodes are made with createElement/createTextNode only, and the
// only attribute from the text is an href that parsed as an absolute http(s) URL.

import { safeHref } from "./links.js";
import { meter } from "./meter.js";

// Emphasis and links nest no deeper than this in the DOM; deeper levels are their text alone
// (model text like "*_*_*_..." or "![![![..." must not build a tree that deep).
const MAX_NESTING = 32;

/**
 * Append the nodes from `first` on to `parent`. Depth first with a stack of its own: how deep
 * the nodes nest is up to the model's text, and past MAX_NESTING a node's children go straight
 * into the deepest element made. Neighbouring text becomes one text node ("[[[[" is one node,
 * not thousands).
 */
export function appendNodes(first, parent) {
  const doc = parent.ownerDocument;
  let text = "";
  let textParent = null;
  const flush = () => {
    if (text) {
      textParent.appendChild(doc.createTextNode(text));
      meter.nodes++;
    }
    text = "";
  };
  const addText = (into, data) => {
    if (textParent !== into) flush();
    textParent = into;
    text += data;
  };
  const add = (into, node) => {
    flush();
    meter.nodes++;
    return into.appendChild(node);
  };
  const stack = [{ node: first, parent, inLink: false, depth: 0, done: null }];
  while (stack.length) {
    const frame = stack[stack.length - 1];
    const node = frame.node;
    if (!node) {
      stack.pop();
      flush();
      if (frame.done) frame.done();
      continue;
    }
    frame.node = node.next;
    const { inLink, depth } = frame;
    const into = frame.parent;
    const children = (el, childInLink, done = null) => {
      const deeper = el !== into;
      stack.push({ node: node.first, parent: el, inLink: childInLink, depth: deeper ? depth + 1 : depth, done });
    };
    switch (node.k) {
      case "text":
        addText(into, node.text);
        break;
      case "delim":
        if (node.len > 0) addText(into, node.ch.repeat(node.len));
        break;
      case "code":
        add(into, doc.createElement("code")).textContent = node.text;
        break;
      case "br":
        add(into, doc.createElement("br"));
        break;
      case "el":
        if (depth >= MAX_NESTING) children(into, inLink);
        else children(add(into, doc.createElement(node.tag)), inLink);
        break;
      case "link":
      case "image":
        if (depth >= MAX_NESTING) children(into, true);
        else {
          // a link inside a link (an image in one, a bare URL in its text) stays text
          const href = inLink ? null : safeHref(node.href);
          linkElement(node, href, add(into, doc.createElement(href ? "a" : "span")), inLink, children);
        }
        break;
      default:
        break;
    }
  }
  flush();
}

function linkElement(node, href, el, inLink, children) {
  if (node.k === "image") {
    el.className = "image-link";
    const alt = el.ownerDocument.createElement("span");
    children(alt, true, () => el.append(`[image${alt.textContent ? ": " : ""}`, ...alt.childNodes, "]"));
  } else {
    children(el, true);
  }
  if (inLink) return;
  if (href) {
    el.href = href;
    el.title = href;
    el.target = "_blank";
    el.rel = "noopener noreferrer nofollow";
    el.referrerPolicy = "no-referrer";
  } else {
    el.classList.add("link-removed");
    el.title = "link removed: only http(s) links are followed";
  }
}

// The demo page: a multi-turn chat over the streaming API. Server values arrive as data-*
// attributes on <body> (the CSP allows no inline script). The DOM hooks browser tests rely on
// are listed in PROTOCOL.md, "The demo page".

import { ChatStream } from "./chat-client.js";
import { Reply } from "./reply.js";

const KEY_STORAGE = "flask-llm-stream.api-key"; // sessionStorage only: gone with the tab
const FOLLOW_SLACK_PX = 48;

class ChatPage {
  constructor(doc) {
    this.doc = doc;
    const $ = (id) => doc.getElementById(id);
    this.form = $("composer");
    this.prompt = $("prompt");
    this.send = $("send");
    this.stop = $("stop");
    this.model = $("model");
    this.apiKey = $("api-key"); // present only when the service requires a key
    this.messages = $("messages");
    this.clear = $("clear");
    this.requiresKey = doc.body.dataset.requiresKey === "true";
    // Three heartbeats without a byte: the connection is half-open, not quiet.
    const heartbeat = Number(doc.body.dataset.heartbeat);
    this.idleMs = heartbeat > 0 ? 3000 * heartbeat : undefined;
    this.history = []; // the conversation as sent in `messages`
    this.current = null; // {stream, reply} while a reply is in progress
    this.follow = true; // keep the newest text in view until the reader scrolls up

    if (this.apiKey) {
      this.apiKey.value = sessionStorage.getItem(KEY_STORAGE) || "";
      this.apiKey.addEventListener("input", () => {
        if (this.apiKey.value) sessionStorage.setItem(KEY_STORAGE, this.apiKey.value);
        else sessionStorage.removeItem(KEY_STORAGE);
      });
    }
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.submit();
    });
    this.prompt.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        this.submit();
      }
    });
    this.stop.addEventListener("click", () => this.requestStop());
    this.clear.addEventListener("click", () => this.reset());
    this.messages.addEventListener("scroll", () => {
      const m = this.messages;
      this.follow = m.scrollHeight - m.scrollTop - m.clientHeight <= FOLLOW_SLACK_PX;
    }, { passive: true });
    this.updateButtons();
  }

  async submit() {
    const text = this.prompt.value.trim();
    if (this.current || !text) return;
    if (this.requiresKey && !this.apiKey.value.trim()) {
      this.apiKey.reportValidity(); // the field is required: the browser says so by it
      this.apiKey.focus();
      return;
    }
    const userTurn = { role: "user", content: text };
    this.history.push(userTurn);
    const bubble = this.appendUser(text);
    const reply = new Reply(this.doc, () => this.scrollToEnd());
    this.messages.appendChild(reply.el); // the newest reply is always the last child
    this.prompt.value = "";
    this.follow = true;
    this.scrollToEnd();

    const request = { messages: this.history.slice() };
    const model = this.model.value.trim();
    if (model) request.model = model;
    const stream = new ChatStream(request, {
      apiKey: this.apiKey ? this.apiKey.value.trim() : "",
      idleMs: this.idleMs,
      onEvent: (event) => reply.onEvent(event),
      onStatus: (status, detail) => reply.onStatus(status, detail),
    });
    this.current = { stream, reply };
    this.updateButtons();
    let result;
    try {
      result = await stream.run();
    } catch (err) {
      result = { kind: "failed", type: "internal", message: String(err) };
    }
    try {
      reply.end(result, stream.terminal);
    } catch (err) {
      console.error("could not finish the reply", err);
      reply.el.dataset.state = "error"; // a bug here must not keep the page busy
    } finally {
      this.current = null;
      this.updateButtons();
    }
    if (reply.text) {
      this.history.push({ role: "assistant", content: reply.text });
    } else if (result.kind === "failed" && result.status !== undefined) {
      // Refused before anything was generated: take the turn back so it can be sent again.
      this.history.splice(this.history.indexOf(userTurn), 1);
      bubble.classList.add("unsent");
      if (!this.prompt.value) this.prompt.value = text;
      if (result.status === 401 && this.apiKey) this.apiKey.focus();
    }
  }

  requestStop() {
    if (!this.current) return;
    this.current.stream.stop();
    this.current.reply.onStopping();
    this.stop.disabled = true;
  }

  reset() {
    if (this.current) return;
    this.history = [];
    this.messages.replaceChildren();
    this.prompt.focus();
  }

  appendUser(text) {
    const el = this.doc.createElement("article");
    el.className = "message user";
    const content = this.doc.createElement("div");
    content.className = "content";
    content.textContent = text; // the user's words are shown as typed, never as markup
    el.appendChild(content);
    this.messages.appendChild(el);
    return el;
  }

  scrollToEnd() {
    if (this.follow) this.messages.scrollTop = this.messages.scrollHeight;
  }

  updateButtons() {
    const busy = this.current !== null;
    this.send.disabled = busy;
    this.stop.disabled = !busy;
    this.clear.disabled = busy;
  }
}

new ChatPage(document);

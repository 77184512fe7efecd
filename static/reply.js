// One assistant reply on the page: its rendered text, reasoning, tool calls, state and timing.
// data-state is one of streaming, reconnecting, done, stopped, error (PROTOCOL.md, "The demo page").

import { MarkdownStream } from "./markdown/stream.js";

const STATS_EVERY_MS = 250;

export class Reply {
  constructor(doc, onRender) {
    this.doc = doc;
    this.text = ""; // the completion text exactly as streamed (joined token events)
    this.reasoningText = "";
    this.tools = new Map(); // tool-call index -> {name, args}: the text nodes showing them
    this.startedAt = performance.now();
    this.firstAt = 0;
    this.statsAt = 0;
    this.drops = 0;

    const el = (tag, className, parent) => {
      const node = doc.createElement(tag);
      if (className) node.className = className;
      if (parent) parent.appendChild(node);
      return node;
    };
    this.el = el("article", "message assistant");
    this.el.setAttribute("aria-busy", "true");
    this.reasoning = el("details", "reasoning", this.el);
    this.reasoning.hidden = true;
    this.reasoningSummary = el("summary", "", this.reasoning);
    this.reasoningSummary.textContent = "Reasoning";
    this.reasoningBody = el("div", "reasoning-text", this.reasoning).appendChild(doc.createTextNode(""));
    this.content = el("div", "content", this.el);
    this.toolList = el("ul", "tools", this.el);
    this.toolList.hidden = true;
    this.error = el("p", "error", this.el);
    this.error.hidden = true;
    this.error.setAttribute("role", "alert");
    const meta = el("div", "meta", this.el);
    this.status = el("span", "status", meta);
    this.stats = el("span", "stats", meta);
    this.markdown = new MarkdownStream(this.content);
    this.markdown.onRender = onRender;
    this.markdown.onError = (error) => this.broke(error);
    this.renderError = null; // a rendering failure: the reply then ends in error, its text shown plain
    this.onChange = onRender; // after changes outside the Markdown, too
    this.setState("streaming", "waiting for the first token…");
  }

  setState(state, label) {
    this.el.dataset.state = state;
    this.status.textContent = label;
  }

  onStatus(status, detail) {
    if (status === "reconnecting") {
      if (detail.attempt === 1) this.el.dataset.reconnects = String(++this.drops);
      this.el.dataset.attempt = String(detail.attempt);
      const seconds = (detail.delay / 1000).toFixed(1);
      this.setState("reconnecting", `connection lost: reconnecting in ${seconds} s (attempt ${detail.attempt})…`);
    } else if (status === "streaming" && this.el.dataset.state === "reconnecting") {
      this.setState("streaming", "reconnected");
    }
  }

  onStopping() {
    if (this.el.dataset.state === "streaming") this.status.textContent = "stopping…";
  }

  onEvent(event) {
    try {
      this.applyEvent(event);
    } catch (error) {
      this.markdown.fail(error); // whatever broke, the text stays readable, as plain text
      this.broke(error);
    }
  }

  broke(error) {
    if (!this.renderError) this.renderError = error;
  }

  applyEvent(event) {
    switch (event.type) {
      case "start":
        if (event.model) this.el.dataset.model = String(event.model);
        break;
      case "token":
        this.firstToken();
        this.text += event.token;
        this.markdown.append(String(event.token));
        this.updateStats(false);
        break;
      case "reasoning":
        this.firstToken();
        this.reasoning.hidden = false;
        this.reasoningBody.appendData(String(event.token));
        this.reasoningText += event.token;
        this.onChange();
        break;
      case "tool_call":
        this.toolCall(event);
        break;
      default:
        break; // done and error are read by end(); unknown types are ignored
    }
  }

  firstToken() {
    if (this.firstAt) return;
    this.firstAt = performance.now();
    if (this.el.dataset.state === "streaming") this.status.textContent = "streaming…";
  }

  toolCall(event) {
    let call = this.tools.get(event.index);
    if (!call) {
      // Arguments grow by appending: rewriting the whole text per fragment would be quadratic.
      call = { name: this.doc.createTextNode("tool"), args: this.doc.createTextNode("") };
      const li = this.doc.createElement("li");
      li.append("🔧 ", call.name, "(", call.args, ")");
      this.tools.set(event.index, call);
      this.toolList.appendChild(li);
      this.toolList.hidden = false;
    }
    if (event.name) call.name.data = String(event.name);
    if (event.arguments) call.args.appendData(String(event.arguments));
    this.firstToken();
    this.onChange();
  }

  /** The stream is over: settle the state from its result and terminal event. */
  end(result, terminal) {
    this.markdown.finish();
    this.el.removeAttribute("aria-busy");
    this.settle(result, terminal);
    if (this.renderError) {
      const failed = this.el.dataset.state === "error" ? `${this.error.textContent}; ` : "";
      this.fail(`${failed}the reply could not be formatted, so it is shown as plain text (${this.renderError})`);
    }
  }

  settle(result, terminal) {
    if (result.kind === "finished" && !terminal && result.complete) {
      // The service said the stream had ended and nothing was missing (204 on resume), but its
      // terminal event never came through: what was received is the whole reply.
      this.setState("done", "done");
      this.updateStats(true);
    } else if (result.kind === "finished" && terminal && terminal.type === "done") {
      const reason = terminal.finish_reason;
      this.el.dataset.finishReason = String(reason);
      if (reason === "cancelled") this.setState("stopped", "stopped");
      else this.setState("done", FINISH_LABELS[reason] || "done");
      this.updateStats(true, terminal.usage);
    } else if (result.kind === "finished" && terminal && terminal.type === "error") {
      this.fail(`${terminal.message || "the generation failed"} (${terminal.code || "error"})`);
    } else if (result.kind === "finished") {
      this.fail("the stream ended without saying how");
    } else if (result.kind === "stopped") {
      this.setState("stopped", "stopped");
      this.updateStats(true);
    } else {
      const where = result.status ? `HTTP ${result.status} ${result.type}` : result.type;
      this.fail(`${result.message} (${where})`);
    }
  }

  fail(message) {
    this.setState("error", "error");
    this.error.hidden = false;
    this.error.textContent = message;
    this.updateStats(true);
    this.onChange();
  }

  updateStats(final, usage) {
    const now = performance.now();
    if (!final && now - this.statsAt < STATS_EVERY_MS) return;
    this.statsAt = now;
    const parts = [];
    if (this.firstAt) parts.push(`first token ${formatMs(this.firstAt - this.startedAt)}`);
    const seconds = (now - this.firstAt) / 1000;
    if (this.firstAt && seconds > 0.05) {
      if (usage && usage.completion_tokens) {
        parts.push(`${(usage.completion_tokens / seconds).toFixed(1)} tok/s`);
      } else if (this.text) {
        // about four characters a token, until the usage at the end gives the real count
        parts.push(`≈${(this.text.length / 4 / seconds).toFixed(1)} tok/s`);
      }
    }
    if (usage && usage.completion_tokens) parts.push(`${usage.completion_tokens} tokens`);
    if (this.drops) parts.push(`resumed ×${this.drops}`);
    this.stats.textContent = parts.join(" · ");
  }
}

const FINISH_LABELS = {
  stop: "done",
  length: "done: cut at the token limit",
  content_filter: "done: cut by the content filter",
  tool_calls: "done: the model asked for tools",
};

function formatMs(ms) {
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(2)} s`;
}

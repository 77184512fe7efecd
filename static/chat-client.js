// One chat stream over the service's wire contract (PROTOCOL.md): the POST that starts it, the
// GETs that resume it after a dropped connection, the POST that cancels it. No DOM.
//
// fetch rather than EventSource, so that an Authorization header can go with every request.
// Every JSON event is handed to onEvent exactly once, in order: events resent after a resume
// (seq <= the last one applied) are skipped. The starting POST is never sent twice.

import { SSEParser } from "./sse.js";

const BACKOFF_CAP_MS = 10000;
const STOP_GRACE_MS = 5000; // after Stop, how long to wait for the stream's own end
const RETRY_AFTER_CAP_MS = 60000;
// Heartbeats come every HEARTBEAT_INTERVAL (15 s by default): this long with no byte at all
// means a half-open connection (a laptop waking, a network change), not a quiet stream.
const IDLE_MS = 45000;

export class ChatStream {
  /**
   * @param {object} request the POST body ({messages, model?})
   * @param {object} options apiKey; maxAttempts (resumes in a row without progress);
   *   onEvent(event) for each JSON event; onStatus("streaming" | "reconnecting", detail)
   */
  constructor(request, { apiKey = "", maxAttempts = 6, idleMs = IDLE_MS, onEvent = () => {}, onStatus = () => {} } = {}) {
    this.request = request;
    this.idleMs = idleMs;
    this.apiKey = apiKey;
    this.maxAttempts = maxAttempts;
    this.onEvent = onEvent;
    this.onStatus = onStatus;
    this.streamId = null;
    this.lastSeq = -1;
    this.retryMs = 1000; // until the stream's own "retry:" field says otherwise
    this.terminal = null;
    this._controller = null;
    this._stopRequested = false;
    this._wake = null;
    this._stopTimer = 0;
  }

  /**
   * Run to the end. Resolves to {kind: "finished"} (the stream ended: see `terminal`; with
   * `complete: true` when a resume was answered 204, the terminal event may not have been seen),
   * {kind: "stopped"} (Stop, and the stream did not end by itself in time) or
   * {kind: "failed", status?, type, message} (refused, or the connection could not be resumed).
   */
  async run() {
    try {
      return await this._run();
    } finally {
      clearTimeout(this._stopTimer);
    }
  }

  /** Ask the service to stop the generation; the stream then ends with finish_reason "cancelled". */
  stop() {
    if (this._stopRequested) return;
    this._stopRequested = true;
    // Without a stream id yet, the cancel goes out as soon as the response names the stream.
    if (this.streamId) this._cancel();
    if (this._wake) this._wake();
    this._stopTimer = setTimeout(() => this._abort(), STOP_GRACE_MS);
  }

  async _run() {
    let response;
    try {
      response = await this._fetch("/api/chat/stream", {
        method: "POST",
        headers: this._headers({ "Content-Type": "application/json" }),
        body: JSON.stringify(this.request),
      });
    } catch {
      // The request may or may not have started a generation; with no stream id there is
      // nothing to resume, and sending the POST again could start a second one.
      return this._stopRequested ? { kind: "stopped" } : failed("network", "could not reach the service");
    }
    if (!response.ok) return { kind: "failed", ...(await errorOf(response)) };
    this.streamId = response.headers.get("X-Stream-Id");
    if (this._stopRequested && this.streamId) this._cancel();
    this.onStatus("streaming");
    let attempts = 0;
    for (;;) {
      const before = this.lastSeq;
      const outcome = await this._read(response);
      if (outcome !== "dropped") return { kind: outcome };
      if (this.lastSeq > before) attempts = 0;
      if (!this.streamId) return failed("network", "the connection was lost before the stream started");
      let wait = 0;
      for (;;) {
        attempts += 1;
        if (attempts > this.maxAttempts) {
          return failed("network", `the connection was lost; gave up after ${this.maxAttempts} attempts to resume`);
        }
        const delay = Math.max(wait, backoff(attempts, this.retryMs));
        if (this._stopRequested) return { kind: "stopped" };
        this.onStatus("reconnecting", { attempt: attempts, delay });
        await this._sleep(delay);
        if (this._stopRequested) return { kind: "stopped" };
        const headers = this.lastSeq >= 0 ? { "Last-Event-ID": String(this.lastSeq) } : {};
        try {
          response = await this._fetch(`/api/chat/stream/${encodeURIComponent(this.streamId)}`, {
            headers: this._headers(headers),
          });
        } catch {
          if (this._stopRequested) return { kind: "stopped" };
          continue;
        }
        // 204: the stream has ended and this client has every event (PROTOCOL.md, "Resuming").
        if (response.status === 204) return { kind: "finished", complete: true };
        if (response.ok) break;
        const error = await errorOf(response);
        if (response.status === 404) {
          return { ...failed("expired", `the stream can no longer be resumed (${error.message})`), status: 404 };
        }
        if (response.status !== 429 && response.status < 500) return { kind: "failed", ...error };
        wait = Math.min(error.retryAfter * 1000, RETRY_AFTER_CAP_MS);
      }
      this.onStatus("streaming");
    }
  }

  // Read one response to its end: "finished", "stopped", or "dropped" (ended or broke too soon).
  async _read(response) {
    if (!response.body) return this.terminal ? "finished" : "dropped";
    const reader = response.body.getReader();
    const parser = new SSEParser();
    const controller = this._controller;
    let idle = 0;
    const arm = () => {
      clearTimeout(idle);
      idle = setTimeout(() => controller.abort(), this.idleMs); // taken as a dropped connection
    };
    try {
      for (;;) {
        arm();
        let chunk;
        try {
          chunk = await reader.read();
        } catch {
          reader.cancel().catch(() => {});
          if (this._stopRequested) return this.terminal ? "finished" : "stopped";
          return this.terminal ? "finished" : "dropped";
        }
        const { value, done } = chunk;
        if (done) break;
        for (const item of parser.feed(value)) {
          if (item.kind === "retry") this.retryMs = item.ms;
          else if (item.kind === "event" && this._apply(item)) {
            reader.cancel().catch(() => {});
            return "finished";
          }
          // comments are heartbeats: signs of life, never text
        }
      }
    } finally {
      clearTimeout(idle);
    }
    parser.end();
    return this.terminal ? "finished" : "dropped";
  }

  // Apply one SSE event; true when the stream is over (its terminal event, or [DONE]): nothing
  // else is read, so a connection lost between the terminal event and [DONE] costs nothing.
  _apply(item) {
    if (item.data === "[DONE]") return true;
    let event;
    try {
      event = JSON.parse(item.data);
    } catch {
      return false; // not ours to show
    }
    const seq = Number(item.lastEventId);
    if (item.lastEventId !== "" && Number.isInteger(seq)) {
      if (seq <= this.lastSeq) return false; // already applied before a resume
      this.lastSeq = seq;
    }
    if (event.type === "start" && !this.streamId) {
      this.streamId = event.stream_id;
      if (this._stopRequested) this._cancel();
    }
    if (event.type === "done" || event.type === "error") this.terminal = event;
    try {
      this.onEvent(event);
    } catch (error) {
      // A rendering bug must not pass for a dropped connection: the event stays applied.
      console.error("could not show an event", error);
    }
    return this.terminal !== null;
  }

  // The service answers with its first bytes at once: a response whose headers take longer
  // than idleMs came over a dead (half-open, pooled) connection.
  async _fetch(url, init) {
    const controller = new AbortController();
    this._controller = controller;
    const timer = setTimeout(() => controller.abort(), this.idleMs);
    try {
      return await fetch(url, { ...init, cache: "no-store", signal: controller.signal });
    } finally {
      clearTimeout(timer);
    }
  }

  _abort() {
    if (this._controller) this._controller.abort();
  }

  _cancel() {
    const url = `/api/chat/stream/${encodeURIComponent(this.streamId)}/cancel`;
    fetch(url, { method: "POST", headers: this._headers({}) })
      .then((r) => {
        if (!r.ok) this._abort(); // unknown or expired: no "cancelled" end will come
      })
      .catch(() => this._abort());
  }

  _headers(extra) {
    const headers = { Accept: "text/event-stream", ...extra };
    if (this.apiKey) headers.Authorization = `Bearer ${this.apiKey}`;
    return headers;
  }

  _sleep(ms) {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      function done() {
        clearTimeout(timer);
        resolve();
      }
      this._wake = done;
    }).finally(() => {
      this._wake = null;
    });
  }
}

/** Exponential backoff with jitter: half the step, plus up to half at random. */
export function backoff(attempt, baseMs) {
  const step = Math.min(BACKOFF_CAP_MS, baseMs * 2 ** (attempt - 1));
  return step / 2 + Math.random() * (step / 2);
}

function failed(type, message) {
  return { kind: "failed", type, message };
}

// The contract's error body, {"error": {"type", "message"}}, or what can be said without it.
async function errorOf(response) {
  const retryAfter = Number(response.headers.get("Retry-After")) || 0;
  let type = "http_error";
  let message = `HTTP ${response.status}`;
  try {
    const body = await response.json();
    if (body && body.error) {
      type = String(body.error.type || type);
      message = String(body.error.message || message);
    }
  } catch {
    // not JSON: the status says enough
  }
  return { status: response.status, type, message, retryAfter };
}

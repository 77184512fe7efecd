// The npm SSE clients people use, each in its README's basic usage, against the service.
//
//   node sse_clients.mjs '<json config>'
//
// config: { lib: "eventsource" | "eventsource-parser" | "fetch-event-source",
//           url,                       the URL to read (POST when `body` is given, else GET)
//           body?, headers?,           the request's JSON body and headers
//           start?: {url, body},       eventsource only: POST this first (an EventSource cannot),
//                                      then follow `${url}/${X-Stream-Id}` with the EventSource
//           closeOnEnd?: true,         close on the terminal event (done or error), as an app should;
//                                      false: leave the library to its own devices
//           resume?: false,            eventsource-parser: after a broken read, GET the
//                                      stream again with Last-Event-ID, as an app must do itself
//           maxErrors?: 20 }           fetch-event-source: stop it after this many onerror calls
//
// Prints one JSON object per line, as things happen, so that a test can act mid-stream:
//   {"event": "request", method, url, lastEventId}   every HTTP request the library makes
//   {"event": "response", status}                    the answer's status
//   {"event": "message", id, data, retry?}           every event handed to the application
//   {"event": "error", message, code?, readyState?}
//   {"event": "end"}
import { EventSource } from "eventsource";
import { createParser } from "eventsource-parser";
import { fetchEventSource } from "@microsoft/fetch-event-source";

const config = JSON.parse(process.argv[2]);
const closeOnEnd = config.closeOnEnd ?? true;

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

// The application's own rule: every event but [DONE] is JSON; done and error are terminal.
function isTerminal(data) {
  if (data === "[DONE]") return false;
  const type = JSON.parse(data).type;
  return type === "done" || type === "error";
}

// Records each request, then is the global fetch: the libraries take a `fetch` option.
function recordingFetch(input, init = {}) {
  const headers = new Headers(init.headers);
  emit({ event: "request", method: init.method ?? "GET", url: String(input),
         lastEventId: headers.get("last-event-id") });
  return fetch(input, init).then((response) => {
    emit({ event: "response", status: response.status });
    return response;
  });
}

function jsonInit(body, headers) {
  if (body === undefined) return { method: "GET", headers: { ...headers } };
  return { method: "POST", headers: { "Content-Type": "application/json", ...headers },
           body: JSON.stringify(body) };
}

// npm `eventsource` (v5): the WHATWG EventSource for Node. GET only, so the app starts the
// stream with a POST, takes its id and lets the EventSource follow it from seq 0.
async function eventsource() {
  let url = config.url;
  if (config.start) {
    const started = await fetch(config.start.url, jsonInit(config.start.body, config.headers));
    url = `${url}/${started.headers.get("X-Stream-Id")}`;
    await started.body.cancel(); // the stream runs on (RESUME_GRACE); the EventSource follows it
  }
  await new Promise((resolve) => {
    const es = new EventSource(url, { fetch: recordingFetch });
    es.addEventListener("message", (event) => {
      emit({ event: "message", id: event.lastEventId, data: event.data });
      if (closeOnEnd && isTerminal(event.data)) {
        es.close();
        resolve();
      }
    });
    es.addEventListener("error", (error) => {
      emit({ event: "error", message: error.message ?? null, code: error.code ?? null,
             readyState: es.readyState });
      if (es.readyState === EventSource.CLOSED) resolve(); // it will not reconnect
    });
  });
}

// `eventsource-parser` (v4) over fetch: the parser is fed text, the app does the HTTP, and the
// resume, itself.
async function eventsourceParser() {
  let url = config.url;
  let init = jsonInit(config.body, config.headers);
  let lastEventId = null;
  let ended = false;
  while (!ended) {
    const response = await recordingFetch(url, init);
    if (response.status !== 200) return;
    const streamId = response.headers.get("X-Stream-Id");
    const parser = createParser({
      onEvent(event) {
        if (event.id !== undefined) lastEventId = event.id;
        emit({ event: "message", id: event.id ?? null, data: event.data });
        if (isTerminal(event.data)) ended = true;
      },
    });
    const decoder = new TextDecoder();
    try {
      for await (const chunk of response.body) {
        parser.feed(decoder.decode(chunk, { stream: true }));
        if (ended && closeOnEnd) break; // leaves the loop: the body is cancelled
      }
      ended = true;
    } catch (error) {
      emit({ event: "error", message: String(error?.message ?? error) });
      if (!config.resume || lastEventId === null) return;
      url = `${new URL(url).origin}/api/chat/stream/${streamId}`;
      init = jsonInit(undefined, { ...config.headers, "Last-Event-ID": lastEventId });
    }
  }
}

// `@microsoft/fetch-event-source` (v2) is written for browsers: it calls window.fetch,
// window.setTimeout and document.{add,remove}EventListener. Under Node it needs its `fetch`
// option, `openWhenHidden` (no page to hide) and these two names.
async function microsoftFetchEventSource() {
  globalThis.window ??= globalThis;
  globalThis.document ??= { hidden: false, addEventListener() {}, removeEventListener() {} };
  const controller = new AbortController();
  let errors = 0;
  await fetchEventSource(config.url, {
    ...jsonInit(config.body, config.headers),
    fetch: recordingFetch,
    openWhenHidden: true,
    signal: controller.signal,
    onmessage(message) {
      emit({ event: "message", id: message.id, data: message.data, retry: message.retry ?? null });
      if (closeOnEnd && message.data && isTerminal(message.data)) controller.abort();
    },
    onerror(error) {
      emit({ event: "error", message: String(error?.message ?? error) });
      errors += 1;
      if (errors >= (config.maxErrors ?? 20)) throw error; // else: retried, as by default
    },
  }).catch((error) => emit({ event: "error", message: `gave up: ${error?.message ?? error}` }));
}

const run = {
  "eventsource": eventsource,
  "eventsource-parser": eventsourceParser,
  "fetch-event-source": microsoftFetchEventSource,
}[config.lib];
// npm eventsource unrefs its reconnect timer, so Node would exit while it waits to reconnect:
// hold the process open until the run is over.
const alive = setInterval(() => {}, 1000);
try {
  await run();
} catch (error) {
  emit({ event: "error", message: `failed: ${error?.stack ?? error}` });
} finally {
  clearInterval(alive);
}
emit({ event: "end" });

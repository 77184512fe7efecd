// Drives the `ai` package's own DefaultChatTransport against the service, as useChat does.
//
//   node chat_client.mjs '<json config>'
//
// config: { api, chatId, mode: "send" | "reconnect", messages?, headers?, body?,
//           reconnect?: true (after the send's stream breaks, reconnect once) }
// Prints one JSON object per line: {"event": "chunk", ...} as parts arrive (so a test can act
// mid-stream), {"event": "result", phase, ...} per stream read, then {"event": "end"}.
import { asSchema, DefaultChatTransport, readUIMessageStream, uiMessageChunkSchema } from "ai";

const config = JSON.parse(process.argv[2]);
const schema = asSchema(uiMessageChunkSchema);
const transport = new DefaultChatTransport({ api: config.api, headers: config.headers, body: config.body });

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

// Read one UI message stream the way useChat does; record every part and check each against
// the package's schema once more (the transport already refuses a part that fails it).
async function read(phase, stream) {
  const chunks = [];
  const invalid = [];
  const errors = [];
  let textDeltas = 0;
  const recorded = stream.pipeThrough(new TransformStream({
    async transform(chunk, controller) {
      chunks.push(chunk);
      if (!(await schema.validate(chunk)).success) invalid.push(chunk);
      if (chunk.type === "text-delta") textDeltas += 1;
      emit({ event: "chunk", phase, type: chunk.type, textDeltas });
      controller.enqueue(chunk);
    },
  }));
  let message = null;
  for await (const snapshot of readUIMessageStream({
    stream: recorded,
    onError: (error) => errors.push(String(error?.message ?? error)),
  })) {
    message = snapshot;
  }
  const text = message ? message.parts.filter((p) => p.type === "text").map((p) => p.text).join("") : null;
  const result = { event: "result", phase, status: "stream", chunks, invalid, errors, message, text };
  emit(result);
  return result;
}

async function reconnect(phase) {
  const stream = await transport.reconnectToStream({ chatId: config.chatId });
  if (stream === null) {
    emit({ event: "result", phase, status: "no-content" });
    return;
  }
  await read(phase, stream);
}

try {
  if (config.mode === "send") {
    const stream = await transport.sendMessages({
      chatId: config.chatId,
      messages: config.messages,
      trigger: "submit-message",
      messageId: undefined,
      abortSignal: undefined,
    });
    const result = await read("send", stream);
    if (config.reconnect && result.errors.length) await reconnect("reconnect");
  } else {
    await reconnect("reconnect");
  }
} catch (error) {
  emit({ event: "result", phase: "failed", status: "error", error: String(error?.message ?? error),
         statusCode: error?.statusCode ?? null });
}
emit({ event: "end" });

// The `openai` npm package against the service's /v1, as a Node program would use it.
// Usage: node openai_client.mjs <baseURL> <apiKey> <json: {"text": messages, "failing": messages}>
// Prints one JSON object with what the package parsed: the test compares it with the simulator.
import OpenAI from "openai";

const [baseURL, apiKey, spec] = process.argv.slice(2);
const { text, failing } = JSON.parse(spec);
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0 });
const out = {};

// Streamed, with usage asked for.
{
  const { data: stream, response } = await client.chat.completions
    .create({ model: "sim-model", messages: text, stream: true,
              stream_options: { include_usage: true } })
    .withResponse();
  out.streamId = response.headers.get("x-stream-id");
  const chunks = [];
  for await (const chunk of stream) chunks.push(chunk);
  out.streamed = {
    text: chunks.map((c) => c.choices[0]?.delta?.content ?? "").join(""),
    firstDelta: chunks[0].choices[0].delta,
    ids: [...new Set(chunks.map((c) => c.id))],
    objects: [...new Set(chunks.map((c) => c.object))],
    finishReasons: chunks.map((c) => c.choices[0]?.finish_reason).filter((r) => r),
    usage: chunks.at(-1).usage,
    lastChoices: chunks.at(-1).choices.length,
  };
}

// Not streamed.
{
  const completion = await client.chat.completions.create({ model: "sim-model", messages: text });
  out.whole = {
    object: completion.object,
    text: completion.choices[0].message.content,
    finishReason: completion.choices[0].finish_reason,
    usage: completion.usage,
  };
}

// An answer that fails mid-stream: the package throws its APIError from the error event.
{
  const stream = await client.chat.completions.create({
    model: "sim-model", messages: failing, stream: true });
  let seen = "";
  try {
    for await (const chunk of stream) seen += chunk.choices[0]?.delta?.content ?? "";
    out.failed = { thrown: false, seen };
  } catch (err) {
    out.failed = { thrown: true, seen, name: err.constructor.name, code: err.code,
                   isAPIError: err instanceof OpenAI.APIError };
  }
}

// A wrong key: the package's own exception for 401.
try {
  await new OpenAI({ baseURL, apiKey: "wrong-key", maxRetries: 0 }).models.list();
  out.wrongKey = { thrown: false };
} catch (err) {
  out.wrongKey = { thrown: true, name: err.constructor.name, status: err.status,
                   isAuth: err instanceof OpenAI.AuthenticationError };
}

process.stdout.write(JSON.stringify(out) + "\n");

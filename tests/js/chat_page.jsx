// A small React chat on `useChat({ resume: true })`, as a team would write it against the
// service: the default transport at /api/chat, messages kept in sessionStorage (the service
// keeps no history), and a Stop button that posts to the stop endpoint (useChat's own stop()
// only drops the connection, which the service takes for a client going away).
// Bundled by the test with esbuild; never committed as a bundle.
import { useChat } from "@ai-sdk/react";
import { DefaultChatTransport } from "ai";
import { useEffect, useState } from "react";
import { createRoot } from "react-dom/client";

const chatId = new URLSearchParams(location.search).get("chat");
const storageKey = `chat:${chatId}`;
const saved = JSON.parse(sessionStorage.getItem(storageKey) ?? "[]");
const transport = new DefaultChatTransport({ api: "/api/chat" });

function textOf(message) {
  return message.parts.filter((part) => part.type === "text").map((part) => part.text).join("");
}

function Chat() {
  const [input, setInput] = useState("");
  const { messages, sendMessage, status, stop, error } = useChat({
    id: chatId,
    messages: saved,
    resume: true,
    transport,
  });
  useEffect(() => {
    sessionStorage.setItem(storageKey, JSON.stringify(messages));
  }, [messages]);
  const stopAnswer = () => {
    void fetch(`/api/chat/${encodeURIComponent(chatId)}/stop`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: "{}",
    });
    void stop();
  };
  return (
    <main>
      <output id="status">{status}</output>
      <output id="error">{error ? String(error.message) : ""}</output>
      <ol id="messages">
        {messages.map((message) => (
          <li key={message.id} className={`message ${message.role}`} data-id={message.id}>
            {textOf(message)}
          </li>
        ))}
      </ol>
      <textarea id="prompt" value={input} onChange={(event) => setInput(event.target.value)} />
      <button id="send" onClick={() => { void sendMessage({ text: input }); setInput(""); }}>
        Send
      </button>
      <button id="stop" onClick={stopAnswer}>Stop</button>
    </main>
  );
}

createRoot(document.getElementById("root")).render(<Chat />);

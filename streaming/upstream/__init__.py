"""The upstream side: the provider interface, the OpenAI-compatible client (the one module that
imports `openai`), the raw chunk parser, and the built-in simulated provider."""

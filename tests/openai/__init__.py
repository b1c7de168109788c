"""OpenAI's API under /v1, driven by the official `openai` package and the OpenAI Agents SDK."""

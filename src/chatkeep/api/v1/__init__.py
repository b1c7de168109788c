"""OpenAI's stateful API under /v1: the Conversations and Responses APIs, and the model list."""

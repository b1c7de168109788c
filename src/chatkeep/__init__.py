"""chatkeep: a self-hostable chat session service in front of any OpenAI-compatible LLM."""

__version__ = "0.1.0"

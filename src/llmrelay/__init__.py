"""llmrelay: a self-hosted, OpenAI-compatible LLM API relay."""

__version__ = "0.1.0"

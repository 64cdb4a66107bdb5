"""The embedded llama.cpp engine: local GGUF models served behind the provider interface."""

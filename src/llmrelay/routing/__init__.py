"""Model name to backend."""

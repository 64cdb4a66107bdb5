"""Wire formats: parse and normalise requests, render responses and SSE."""

"""HTTP routes only: each handler authenticates, parses with a dialect, calls the gateway."""

"""Tokens, prices, reservations and the ledger."""

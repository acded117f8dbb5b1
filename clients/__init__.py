"""Clients of the tracker (browser overlay, Python client)."""

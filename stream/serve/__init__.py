"""merc-serve: many conversations in one process (media frames, shared models batched across sessions,
the session server, its metrics)."""

"""Recordings: writing and reading session directories, replaying them through a session,
synthesising test conversations, and scoring replays against gold."""

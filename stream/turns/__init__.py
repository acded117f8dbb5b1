"""Turns: cutting speech into turns, transcribing them, and attributing them to speakers."""

"""Capture: microphone and WAV audio sources, camera frames and face tracking, voice activity.
Only this layer owns devices and capture threads; they fill bounded buffers and never call models."""

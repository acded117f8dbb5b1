"""The overlay's files are served on the event server's own port, next to the WebSocket stream."""
from __future__ import annotations

import asyncio
import urllib.error
import urllib.request

import pytest

from merc.clients.client import follow
from merc.stream.wire.events import EventBus
from merc.stream.wire.overlay_http import overlay_response, process_request
from merc.stream.wire.server import EventServer

HELLO = {"labels": ["neu", "hap", "sad", "ang", "exc", "fru"], "model": {}, "modalities": ["text"]}


@pytest.mark.parametrize("path, name, content_type", [
    ("/", "index.html", "text/html"),
    ("/index.html?compact=1&transparent=1", "index.html", "text/html"),
    ("/overlay.js", "overlay.js", "text/javascript"),
    ("/overlay.css", "overlay.css", "text/css"),
    ("/capture.js", "capture.js", "text/javascript"),  # join mode (merc-serve)
    ("/capture-worklet.js", "capture-worklet.js", "text/javascript"),
])
def test_overlay_files_by_path(path, name, content_type):
    status, kind, body = overlay_response(path)
    assert status == 200 and kind.startswith(content_type) and body
    if name == "index.html":
        assert b'src="overlay.js"' in body and b'href="overlay.css"' in body and b'src="capture.js"' in body
    if name == "capture-worklet.js":
        assert b'registerProcessor("merc-capture"' in body


@pytest.mark.parametrize("path", ["/client.py", "/overlay/", "/../client.py", "/overlay/overlay.js", "/favicon.ico"])
def test_other_paths_are_not_overlay_files(path):
    assert overlay_response(path) is None


def test_the_server_serves_the_page_and_the_stream_on_one_port():
    bus = EventBus("http")
    server = EventServer(bus, HELLO, port=0, process_request=process_request)
    server.start()
    try:
        assert server.http_url == server.url.replace("ws://", "http://")
        with urllib.request.urlopen(server.http_url + "overlay.js", timeout=5) as reply:
            assert reply.status == 200 and reply.headers["Content-Type"].startswith("text/javascript")
            assert reply.headers["Cache-Control"] == "no-cache"
            assert b"mercOverlay" in reply.read()
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(server.http_url + "secrets.txt", timeout=5)
        assert missing.value.code == 404
        bus.publish({"type": "status", "devices": {"microphone": True}, "message": "started"})

        async def first_two() -> list[dict]:
            events = []
            async for event in follow(server.url, reconnect=False):
                events.append(event)
                if len(events) == 2:
                    return events

        hello, status = asyncio.run(asyncio.wait_for(first_two(), 10))
        assert hello["type"] == "hello" and hello["labels"] == HELLO["labels"]
        assert status["type"] == "status" and status["seq"] == 1
    finally:
        server.stop()

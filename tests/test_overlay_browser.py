"""The browser overlay (clients/overlay/) in Debian's Chromium, driven headless by Playwright, against
the event server replaying a fixture recording: turns with their labels, the timeline, the device
panel, a dropped connection and a restarted server resumed without duplicates or gaps, and the
transparent and compact modes. Screenshots go to tests/artifacts/overlay*.png.
"""
from __future__ import annotations

import os
import threading
import time
import warnings
from pathlib import Path

import pytest

from merc.stream.recordings.recording import open_recording
from merc.stream.recordings.replay import replay_recording
from merc.stream.recordings.scoring import apply_updates
from merc.stream.wire.events import EventBus, turn_event, turn_partial_event, turn_update_event
from merc.stream.wire.overlay_http import process_request
from merc.stream.wire.server import EventServer

KITCHEN = Path(__file__).parent / "fixtures" / "recordings" / "kitchen-2spk"
ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM = Path(os.environ.get("MERC_CHROMIUM", "/usr/bin/chromium"))  # Debian's package (README: install)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync"]
WAIT_MS = 15_000
TIMINGS = ("segmentation", "asr", "features", "speaker", "graph", "total")
HELLO = {"labels": ["neutral", "joy", "surprise", "anger", "sadness", "disgust", "fear"],
         "model": {"label_set": "meld-7"}, "modalities": ["text"]}


def skip_loudly(reason: str) -> None:
    message = f"OVERLAY BROWSER TESTS SKIPPED: {reason}"
    warnings.warn(message, stacklevel=2)
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError as err:
        skip_loudly(f"the playwright package is not installed ({err}); pip install -e '.[test]'")
    if not CHROMIUM.is_file():
        skip_loudly(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set MERC_CHROMIUM)")
    with sync_playwright() as playwright:
        try:
            chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        except Error as err:
            skip_loudly(f"Chromium at {CHROMIUM} does not start: {err}")
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def processor():
    """The live per-turn components (ASR, speakers, the default model's bundle), as merc-replay loads them."""
    from merc.cli.common import open_session
    from merc.stream.session.options import AsrOptions, SessionOptions, SpeakerOptions, TrackerOptions

    options = SessionOptions(tracker=TrackerOptions(device="cpu"), asr=AsrOptions(device="cpu"),
                             speakers=SpeakerOptions(device="cpu"))
    return open_session(options, EventBus("overlay")).processor


class Served:
    """An event server with the overlay on its port, and the bus it serves."""

    def __init__(self, session: str, port: int = 0, bus: EventBus | None = None) -> None:
        self.bus = bus or EventBus(session)
        self.server = EventServer(self.bus, HELLO, port=port, process_request=process_request)
        self.server.start()

    def turns(self) -> list[dict]:
        """The published turns as finally corrected (each turn.update folded into its turn)."""
        return [e for e in apply_updates(self.bus.events()) if e["type"] == "turn"]

    def publish_turn(self, text: str, label: str = "anger", speaker: str = "S3") -> dict:
        t = 30.0 + self.bus.last_seq
        return self.bus.publish(turn_event(turn=self.bus.last_seq, speaker=speaker, t_start=t, t_end=t + 1.5, text=text,
                                           label=label, confidence=0.8, probs={label: 0.8}, modalities=["text"],
                                           available=["text", "audio"], timings_ms=dict.fromkeys(TIMINGS, 1.0),
                                           speech_end=time.time()))


def wait_for(page, expression: str, timeout: float) -> None:
    """Poll `expression` in the page until it is true. Not page.wait_for_function: that compiles its
    predicate with eval, which the overlay's Content-Security-Policy (script-src 'self') forbids."""
    deadline = time.monotonic() + timeout / 1000
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise AssertionError(f"still false after {timeout / 1000:.0f} s: {expression}")
        time.sleep(0.05)


def open_overlay(browser, served: Served, query: str = ""):
    page = browser.new_page(viewport={"width": 900, "height": 600})
    page.goto(served.server.http_url + query)
    wait_for(page, "window.mercOverlay && mercOverlay.state === 'live'", timeout=WAIT_MS)
    return page


def wait_caught_up(page, served: Served) -> None:
    wait_for(page, f"mercOverlay.lastSeq >= {served.bus.last_seq}", timeout=WAIT_MS)


def screenshot(page, name: str, transparent: bool = False) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), omit_background=transparent)
    assert (ARTIFACTS / name).stat().st_size > 1000


@pytest.fixture(scope="module")
def replayed(browser, processor):
    """A page open while the kitchen recording replays into the server's bus: (served, page)."""
    served = Served("overlay-replay")
    page = open_overlay(browser, served)
    worker = threading.Thread(target=replay_recording, args=(open_recording(KITCHEN), processor, served.bus, None))
    worker.start()
    worker.join(120)
    assert not worker.is_alive() and len(served.turns()) >= 4
    wait_caught_up(page, served)
    yield served, page
    page.close()
    served.server.stop()


def test_turns_appear_with_their_labels_coloured_by_emotion(replayed):
    served, page = replayed
    published = served.turns()
    shown = page.evaluate("mercOverlay.turns")
    assert [(t["seq"], t["speaker"], t["label"], t["text"]) for t in shown] == \
        [(e["seq"], e["speaker"], e["label"], e["text"]) for e in published]
    rows = page.locator("#turns .turn")
    assert rows.count() == len(published)
    for i, event in enumerate(published):
        row = rows.nth(i)
        assert row.locator(".speaker").inner_text() == event["speaker"]
        assert row.locator(".label").inner_text() == f"{event['label']} {round(event['confidence'] * 100)}%"
        assert row.locator(".text").inner_text() == event["text"]
    colours = {e["label"]: rows.nth(i).evaluate("r => getComputedStyle(r).borderLeftColor")
               for i, e in enumerate(published)}
    assert colours.get("neutral", "rgb(154, 165, 177)") == "rgb(154, 165, 177)"
    assert colours.get("joy", "rgb(245, 197, 24)") == "rgb(245, 197, 24)"
    assert page.evaluate("mercOverlay.missed") == 0
    assert page.locator("#connection").get_attribute("data-state") == "live"
    screenshot(page, "overlay.png")


def test_the_timeline_has_a_lane_per_speaker_and_a_mark_per_turn(replayed):
    served, page = replayed
    published = served.turns()
    marks = page.locator("#timeline rect.mark")
    assert marks.count() == len(published)
    assert [marks.nth(i).get_attribute("data-label") for i in range(marks.count())] == [e["label"] for e in published]
    speakers = list(dict.fromkeys(e["speaker"] for e in published))
    assert page.locator("#timeline .lane-name").all_text_contents() == speakers
    boxes = [marks.nth(i).bounding_box() for i in range(marks.count())]
    assert all(b is not None and b["width"] > 0 and b["height"] > 0 for b in boxes)
    assert [b["x"] for b in boxes] == sorted(b["x"] for b in boxes)  # later turns further right
    lane_y = {}  # the lane each mark is drawn in (a corrected mark's outline makes its box a little larger)
    for i, event in enumerate(published):
        y = float(marks.nth(i).get_attribute("y"))
        lane_y.setdefault(event["speaker"], y)
        assert y == lane_y[event["speaker"]]  # one lane per speaker
    assert len(set(lane_y.values())) == len(speakers)
    assert page.locator("#legend .legend-item").all_inner_texts() == HELLO["labels"]


def test_the_device_panel_follows_status_events(replayed):
    served, page = replayed
    served.bus.publish({"type": "status", "devices": {"microphone": True, "camera": False, "face": False},
                        "message": "camera 0: unplugged"})
    camera = page.locator('#devices [data-device="camera"]')
    wait_for(page, "mercOverlay.devices.camera === false", timeout=WAIT_MS)
    assert camera.get_attribute("data-on") == "false"
    assert page.locator('#devices [data-device="microphone"]').get_attribute("data-on") == "true"
    assert "line-through" in camera.evaluate("e => getComputedStyle(e).textDecorationLine")
    served.bus.publish({"type": "status", "devices": {"microphone": True, "camera": True, "face": True},
                        "message": "face in view"})
    wait_for(page, "mercOverlay.devices.face === true", timeout=WAIT_MS)
    assert camera.get_attribute("data-on") == "true"


def test_a_dropped_connection_resumes_without_duplicates_or_gaps(browser):
    """Down while events are published, then back while more are published every few ms: the
    page ends with every turn exactly once and none missing."""
    served = Served("overlay-drop")
    try:
        served.publish_turn("before the drop")
        page = open_overlay(browser, served)
        wait_caught_up(page, served)
        page.evaluate("mercOverlay.dropConnection(true)")
        wait_for(page, "mercOverlay.state === 'reconnecting'", timeout=WAIT_MS)
        seen = page.evaluate("mercOverlay.lastSeq")
        for i in range(3):
            served.publish_turn(f"while down {i}")
        time.sleep(0.3)
        assert page.evaluate("mercOverlay.lastSeq") == seen  # truly disconnected: nothing arrived

        stop = threading.Event()

        def publish_meanwhile():
            for i in range(200):
                if stop.is_set():
                    return
                served.publish_turn(f"during the reconnect {i}", label="joy")
                time.sleep(0.005)

        publisher = threading.Thread(target=publish_meanwhile)
        publisher.start()
        page.evaluate("mercOverlay.reconnect()")
        wait_for(page, "mercOverlay.state === 'live' && mercOverlay.connections === 2", timeout=WAIT_MS)
        time.sleep(0.2)
        stop.set()
        publisher.join()
        wait_caught_up(page, served)
        shown = [t["seq"] for t in page.evaluate("mercOverlay.turns")]
        assert shown == [e["seq"] for e in served.turns()]  # each once, in order, none missing
        assert page.locator("#turns .turn").count() == min(len(shown), 50)
        assert page.evaluate("mercOverlay.missed") == 0
        page.close()
    finally:
        served.server.stop()


def test_a_restarted_server_is_rejoined_automatically(browser):
    """The server goes away (every socket closed) and comes back on the same port: the page
    reconnects by itself with backoff and resumes; a new session starts the page over."""
    served = Served("overlay-restart")
    try:
        served.publish_turn("first")
        page = open_overlay(browser, served)
        wait_caught_up(page, served)
        port = served.server.port
        served.server.stop()
        wait_for(page, "mercOverlay.state === 'reconnecting'", timeout=WAIT_MS)
        served.publish_turn("published while the server was down")
        served = Served("overlay-restart", port=port, bus=served.bus)
        wait_for(page, "mercOverlay.connections === 2 && mercOverlay.state === 'live'", timeout=WAIT_MS)
        wait_caught_up(page, served)
        assert [t["text"] for t in page.evaluate("mercOverlay.turns")] == [
            "first", "published while the server was down"]

        served.server.stop()
        served = Served("overlay-restart-2", port=port)  # a new session numbers from 1 again
        served.publish_turn("new session", label="sadness")
        wait_for(page, "mercOverlay.turns.length === 1 && mercOverlay.turns[0].text === 'new session'",
                               timeout=WAIT_MS)
        assert page.locator("#turns .turn").all_inner_texts()[0].endswith("new session")
        page.close()
    finally:
        served.server.stop()


def test_a_turn_update_corrects_the_row_and_the_timeline_in_place(browser):
    """A turn.update changes the speaker, emotion and confidence of the turn it names, where it is,
    marked as corrected for a while; the timeline moves its mark to the new speaker's lane; an update
    naming a turn the page never had changes nothing."""
    served = Served("overlay-update")
    try:
        first = served.publish_turn("you again", label="neutral", speaker="S1")
        second = served.publish_turn("I said I was sorry", label="anger", speaker="S1")
        served.publish_turn("fine", label="neutral", speaker="S2")
        page = open_overlay(browser, served)
        wait_caught_up(page, served)
        rows = page.locator("#turns .turn")
        before = rows.all_inner_texts()
        assert rows.nth(1).locator(".speaker").inner_text() == "S1"
        assert page.locator("#timeline .lane-name").all_text_contents() == ["S1", "S2"]
        assert not page.locator("#turns .turn.corrected").count()

        served.bus.publish(turn_update_event(turn=second["turn"], speaker="S2", label="sadness", confidence=0.64,
                                             probs={"sadness": 0.64, "anger": 0.36}))
        served.bus.publish(turn_update_event(turn=99, speaker="S9", label="joy", confidence=1.0, probs={"joy": 1.0}))
        wait_caught_up(page, served)
        row = rows.nth(1)
        assert rows.count() == 3 and row.get_attribute("data-seq") == str(second["seq"])
        assert row.locator(".speaker").inner_text() == "S2"
        assert row.locator(".label").inner_text() == "sadness 64%"
        assert row.locator(".text").inner_text() == "I said I was sorry"
        assert row.get_attribute("data-label") == "sadness" and "corrected" in row.get_attribute("class")
        assert row.evaluate("r => getComputedStyle(r).borderLeftColor") == "rgb(59, 130, 246)"  # sadness blue
        assert [rows.nth(i).get_attribute("class") for i in (0, 2)] == ["turn", "turn"]
        texts = rows.all_inner_texts()
        assert texts[0] == before[0] and texts[2] == before[2] and texts[1] != before[1]
        shown = page.evaluate("mercOverlay.turns")
        assert [(t["turn"], t["speaker"], t["label"], t["updates"]) for t in shown] == [
            (first["turn"], "S1", "neutral", 0), (second["turn"], "S2", "sadness", 1), (2, "S2", "neutral", 0)]
        mark = page.locator(f'#timeline rect.mark[data-seq="{second["seq"]}"]')
        assert mark.get_attribute("data-label") == "sadness" and mark.get_attribute("data-speaker") == "S2"
        lanes = [page.locator(f'#timeline rect.mark[data-seq="{e["seq"]}"]').get_attribute("y")
                 for e in served.turns()]
        assert lanes[0] != lanes[1] == lanes[2]  # turn 1 moved to S2's lane
        assert page.locator("#timeline rect.mark").count() == 3 and page.evaluate("mercOverlay.missed") == 0
        screenshot(page, "overlay-corrected.png")
        wait_for(page, "document.querySelector('#turns .turn.corrected') === null", timeout=WAIT_MS)  # briefly
        page.close()
    finally:
        served.server.stop()


def test_a_partial_shows_as_one_provisional_row_that_the_final_turn_replaces(browser):
    """turn.partial events of the turn still spoken redraw one provisional row (dashed, its
    unconfirmed words fainter), always last; the final turn with that number replaces it; no
    partial is ever a turn or a timeline mark."""
    served = Served("overlay-partial")
    try:
        served.publish_turn("hello there", label="joy", speaker="S1")
        page = open_overlay(browser, served)
        wait_caught_up(page, served)
        for text, stable, label in (("so what I", "", "neutral"), ("so what I think is we", "so what I", "neutral"),
                                    ("so what I think is we should go", "so what I think is", "fear")):
            served.bus.publish(turn_partial_event(turn=1, speaker="S2", t_start=33.0, t_end=35.0, text=text,
                                                  stable=stable, label=label, confidence=0.6, probs={label: 0.6},
                                                  timings_ms={"asr": 90.0}))
        wait_caught_up(page, served)
        rows = page.locator("#turns .turn")
        assert rows.count() == 2
        row = page.locator("#turns .turn.provisional")
        assert row.count() == 1 and rows.nth(1).get_attribute("class") == "turn provisional"
        assert row.locator(".text").inner_text() == "so what I think is we should go"
        assert row.locator(".stable").inner_text() == "so what I think is"
        assert row.locator(".tentative").inner_text().strip() == "we should go"
        assert row.locator(".label").inner_text() == "fear 60%" and row.locator(".speaker").inner_text() == "S2"
        assert row.evaluate("r => getComputedStyle(r).borderLeftStyle") == "dashed"
        assert float(row.evaluate("r => getComputedStyle(r).opacity")) < 1
        assert page.evaluate("mercOverlay.partial")["stable"] == "so what I think is"
        assert len(page.evaluate("mercOverlay.turns")) == 1 and page.locator("#timeline rect.mark").count() == 1
        screenshot(page, "overlay-partial.png")

        served.publish_turn("so what I think is we should go home", label="sadness", speaker="S2")
        wait_caught_up(page, served)
        assert page.locator("#turns .turn.provisional").count() == 0 and rows.count() == 2
        assert rows.nth(1).locator(".text").inner_text() == "so what I think is we should go home"
        assert page.evaluate("mercOverlay.partial") is None
        page.close()
    finally:
        served.server.stop()


def test_transparent_and_compact_modes_and_the_token(replayed, browser):
    served, _ = replayed
    plain = open_overlay(browser, served)
    assert plain.evaluate("getComputedStyle(document.body).backgroundColor") != "rgba(0, 0, 0, 0)"
    plain.close()

    transparent = open_overlay(browser, served, "?transparent=1")
    wait_caught_up(transparent, served)
    for element in ("document.documentElement", "document.body"):
        assert transparent.evaluate(f"getComputedStyle({element}).backgroundColor") == "rgba(0, 0, 0, 0)"
    screenshot(transparent, "overlay-transparent.png", transparent=True)
    transparent.close()

    sockets: list[str] = []
    compact = browser.new_page(viewport={"width": 900, "height": 400})
    compact.on("websocket", lambda ws: sockets.append(ws.url))
    compact.goto(served.server.http_url + "?compact=1&transparent=1&token=s3cret")
    wait_for(compact, "window.mercOverlay && mercOverlay.state === 'live'", timeout=WAIT_MS)
    wait_caught_up(compact, served)
    rows = compact.locator("#turns .turn")
    assert rows.count() == 3 < len(served.turns())
    assert rows.nth(2).locator(".text").inner_text() == served.turns()[-1]["text"]
    assert float(rows.nth(0).evaluate("r => parseFloat(getComputedStyle(r).fontSize)")) >= 24
    assert not compact.locator("#timeline-panel").is_visible()
    assert sockets and "token=s3cret" in sockets[0]
    screenshot(compact, "overlay-compact.png", transparent=True)
    compact.close()


def test_a_server_of_another_major_version_is_shown_as_incompatible(browser, monkeypatch):
    """The overlay reads the protocol version from the server's hello: another major version is
    not followed, and the page says why instead of retrying."""
    from merc.stream.wire import messages

    monkeypatch.setattr(messages, "PROTOCOL_VERSION", 2)
    served = Served("overlay-future")
    try:
        page = browser.new_page(viewport={"width": 900, "height": 600})
        page.goto(served.server.http_url)
        wait_for(page, "window.mercOverlay && mercOverlay.state === 'incompatible'", timeout=WAIT_MS)
        assert page.evaluate("mercOverlay.supportedMajor") == 1 and page.evaluate("mercOverlay.version") is None
        assert "server speaks protocol v2, overlay v1" in page.locator("#connection-text").inner_text()
        notice = page.locator("#notice")
        assert notice.is_visible() and "protocol v2" in notice.inner_text()
        page.close()
    finally:
        served.server.stop()

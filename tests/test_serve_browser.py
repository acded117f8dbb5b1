"""merc-serve's join mode end to end, in Debian's Chromium driven headless by Playwright: a real
`merc-serve` (its installed entry point, the real models), and the page at /?join=1 capturing
Chromium's fake microphone, which plays a fixture recording once (%noloop), and its fake camera.
The turns the session sends back are scored against the fixture's gold as merc-replay's are, and
must be on the page; the frames on the wire are read with the server's own parser. Also: a full
server (HTTP 503), a refused microphone and a missing device are each explained on the page, with
the devices released. Screenshots go to tests/artifacts/overlay-join*.png.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import warnings
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest

from merc.stream.recordings.recording import open_recording, read_gold
from merc.stream.recordings.scoring import apply_updates, score_replay
from merc.stream.serve.media import AUDIO, FRAME_SAMPLES, HEADER, MAX_VIDEO_BYTES, VIDEO, parse_frame

KITCHEN = Path(__file__).parent / "fixtures" / "recordings" / "kitchen-2spk"  # 16 kHz mono int16, 18.9 s
ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM = Path(os.environ.get("MERC_CHROMIUM", "/usr/bin/chromium"))  # Debian's package (README: install)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync"]
# Chromium's fake capture devices; its fake audio input reads a 16-bit PCM WAV of any rate (it
# resamples), and `%noloop` plays it once, then silence.
FAKE_MEDIA = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
              f"--use-file-for-fake-audio-capture={KITCHEN / 'audio.wav'}%noloop"]
WAIT_S = 15.0
STARTUP_S = 180.0  # merc-serve loads every model before it prints its URL
# Watched by every page: a CSP violation anywhere in it is recorded (the listener is installed
# before the page's own scripts, by the browser, so the policy does not apply to it).
RECORD_VIOLATIONS = ("window.__cspViolations = []; document.addEventListener('securitypolicyviolation', "
                     "(e) => window.__cspViolations.push(`${e.violatedDirective} ${e.blockedURI}`));")


def skip_loudly(reason: str) -> None:
    message = f"SERVE BROWSER TESTS SKIPPED: {reason}"
    warnings.warn(message, stacklevel=2)
    pytest.skip(message)


# -- merc-serve, as a user starts it ---------------------------------------------------------------

class Server:
    """`merc-serve --port 0` in a process of its own; stderr is read on a thread (the URL, and the
    log kept for failure messages)."""

    def __init__(self, *args: str) -> None:
        entry = shutil.which("merc-serve", path=str(Path(sys.executable).parent))
        command = [entry] if entry else [sys.executable, "-m", "merc.cli.serve"]
        self.proc = subprocess.Popen([*command, "--port", "0", *args], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "PYTHONFAULTHANDLER": "1"},
                                     # Ctrl-C as a terminal delivers it, however pytest was started
                                     preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self.log: list[str] = []
        self.join_url: str | None = None
        self._found = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self._found.wait(STARTUP_S) or self.join_url is None:
            self.stop()
            pytest.fail(f"merc-serve printed no URL within {STARTUP_S:.0f} s:\n" + self.stderr())
        parts = urlsplit(self.join_url)
        self.base = f"{parts.scheme}://{parts.netloc}/"
        self.token = parse_qs(parts.query).get("token", [None])[0]  # $MERC_TOKEN, if set

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.log.append(line)
            found = re.search(r"join from a browser at (http://\S+?);", line)
            if found:
                self.join_url = found.group(1)
                self._found.set()
        self._found.set()  # it ended

    def stderr(self) -> str:
        return "".join(self.log)[-6000:]

    def page_url(self, **params: str) -> str:
        query = "&".join(f"{k}={v}" for k, v in params.items())
        return self.join_url + ("&" + query if query else "")

    def get(self, path: str) -> str:
        with urllib.request.urlopen(self.base + path, timeout=10) as reply:
            return reply.read().decode()

    def health(self) -> dict:
        return json.loads(self.get("healthz"))

    def metric(self, name: str) -> float:
        found = re.search(rf"^{name} (\S+)$", self.get("metrics"), re.MULTILINE)
        assert found, f"no {name} in /metrics"
        return float(found.group(1))

    def wait_idle(self) -> None:
        """Until no session is open (the last one's thread has finished and been forgotten)."""
        deadline = time.monotonic() + WAIT_S
        while self.health()["sessions"]:
            assert time.monotonic() < deadline, f"a session is still open: {self.health()}"
            time.sleep(0.1)

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                return self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGABRT)  # faulthandler shows where it hangs
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
                return None
        return self.proc.returncode


@pytest.fixture(scope="module")
def server():
    """One merc-serve for the module: a single session at a time (so a second is refused), and room
    to queue the whole fixture should the machine fall behind."""
    served = Server("--max-sessions", "1", "--max-queued-seconds", "120")
    try:
        yield served
    finally:
        code = served.stop()
    assert code == 0, f"merc-serve did not stop cleanly on SIGINT (status {code}):\n{served.stderr()}"


# -- the browser -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pw():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as err:
        skip_loudly(f"the playwright package is not installed ({err}); pip install -e '.[test]'")
    if not CHROMIUM.is_file():
        skip_loudly(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set MERC_CHROMIUM)")
    with sync_playwright() as playwright:
        yield playwright


def launch(pw, *flags: str):
    from playwright.sync_api import Error

    try:
        return pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS + list(flags))
    except Error as err:
        skip_loudly(f"Chromium at {CHROMIUM} does not start: {err}")


@pytest.fixture(scope="module")
def browser(pw):
    """Chromium with a fake microphone playing the kitchen fixture and a fake camera, accepted
    without a prompt."""
    chromium = launch(pw, *FAKE_MEDIA)
    yield chromium
    chromium.close()


class Page:
    """A page and what it did: console errors, uncaught exceptions, the JSON events each WebSocket
    received and the binary frames it sent."""

    def __init__(self, browser, url: str) -> None:
        self.page = browser.new_page(viewport={"width": 900, "height": 640})
        self.console_errors: list[str] = []
        self.page_errors: list[str] = []
        self.received: dict[str, list[dict]] = {}
        self.sent: dict[str, list[bytes]] = {}
        self.page.add_init_script(RECORD_VIOLATIONS)
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda err: self.page_errors.append(str(err)))
        self.page.on("websocket", self._websocket)
        self.page.goto(url)
        wait_for(self.page, "window.mercOverlay !== undefined")

    def _console(self, message) -> None:
        if message.type != "error":
            return
        if message.location.get("url", "").endswith("/favicon.ico"):
            return  # the browser's own request for an icon the overlay does not have
        self.console_errors.append(message.text)

    def _websocket(self, socket) -> None:
        received = self.received.setdefault(socket.url, [])
        sent = self.sent.setdefault(socket.url, [])
        socket.on("framereceived", lambda data: received.append(json.loads(data)) if isinstance(data, str) else None)
        socket.on("framesent", lambda data: sent.append(data) if isinstance(data, bytes) else None)

    def evaluate(self, expression: str):
        return self.page.evaluate(expression)

    @property
    def violations(self) -> list[str]:
        return self.evaluate("window.__cspViolations")

    def session_socket(self) -> str:
        urls = [url for url in self.received if urlsplit(url).path == "/session"]
        assert len(urls) == 1, self.received.keys()
        return urls[0]

    def close(self) -> None:
        self.page.close()


def wait_for(page, expression: str, timeout: float = WAIT_S) -> None:
    """Poll `expression` in the page until it is true (page.wait_for_function would compile it with
    eval, which the overlay's Content-Security-Policy forbids)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise AssertionError(f"still false after {timeout:.0f} s: {expression}")
        time.sleep(0.05)


def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.page.screenshot(path=str(ARTIFACTS / name))
    assert (ARTIFACTS / name).stat().st_size > 1000


# -- refusals ---------------------------------------------------------------------------------------

def test_a_full_server_refuses_the_session_and_the_page_says_so(server, browser):
    """With the server's only session taken, Join is refused with HTTP 503: the page says the server
    is full, releases the microphone it had opened, and can try again."""
    from websockets.sync.client import connect

    server.wait_idle()
    url = server.base.replace("http://", "ws://") + "session" + (f"?token={server.token}" if server.token else "")
    with connect(url) as holder:
        assert json.loads(holder.recv(timeout=WAIT_S))["type"] == "hello"
        assert server.health()["sessions"] == 1
        page = Page(browser, server.page_url())
        try:
            page.page.click("#join-button")
            wait_for(page.page, "mercOverlay.joinState === 'refused'")
            wait_for(page.page, "(mercOverlay.notice || '').includes('sessions are in use')")
            assert "all 1 of its sessions are in use" in page.evaluate("mercOverlay.notice")
            assert page.page.locator("#notice").is_visible()
            assert page.page.locator("#connection").get_attribute("data-state") == "refused"
            assert page.evaluate("mercOverlay.capture.tracksLive") == 0  # the microphone is released
            assert page.page.locator("#join-button").is_enabled()
            assert not page.page.locator("#leave-button").is_enabled()
            assert not page.page.locator("#session").is_visible()
            assert page.page_errors == [] and page.violations == []
            # the browser's own report of the refused handshake is the one console error
            assert len(page.console_errors) == 1 and "503" in page.console_errors[0], page.console_errors
            screenshot(page, "overlay-join-refused.png")
        finally:
            page.close()
    assert server.metric("merc_sessions_refused_total") >= 1


@pytest.mark.parametrize("flags, camera, expected", [
    (["--use-fake-ui-for-media-stream=deny", "--use-fake-device-for-media-stream"], False,
     "Access to the microphone was refused"),
    # the fake devices without a camera: asked for one, the page has none, whatever this machine has
    (["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream=device-count=0"], True,
     "No microphone or camera is available: uncheck camera"),
], ids=["microphone-refused", "no-camera"])
def test_a_refused_or_missing_microphone_is_explained(server, pw, flags, camera, expected):
    """Capture that cannot start (permission denied; no camera) is said on the page; no session is
    opened and nothing is thrown."""
    chromium = launch(pw, *flags)
    try:
        page = Page(chromium, server.page_url())
        if camera:
            page.page.check("#camera-box")
        page.page.click("#join-button")
        wait_for(page.page, "mercOverlay.joinState === 'failed'")
        assert expected in page.evaluate("mercOverlay.notice")
        assert page.page.locator("#notice").is_visible()
        assert page.evaluate("mercOverlay.capture") is None and page.received == {}  # no session opened
        assert page.page.locator("#join-button").is_enabled()
        assert page.page_errors == [] and page.console_errors == [] and page.violations == []
    finally:
        chromium.close()


def test_join_mode_on_an_event_server_says_it_needs_merc_serve(browser):
    """merc-live's event server serves the same page but takes no media: its answer to the first
    frame (not JSON) ends the attempt, with the capture released and the reason on the page."""
    from merc.stream.wire.events import EventBus
    from merc.stream.wire.overlay_http import process_request
    from merc.stream.wire.server import EventServer

    events = EventServer(EventBus("not-serve"), {"labels": ["neutral"], "model": {}, "modalities": ["text"]}, port=0,
                         process_request=process_request)
    events.start()
    try:
        page = Page(browser, events.http_url + "?join=1")
        page.page.click("#join-button")
        wait_for(page.page, "mercOverlay.joinState === 'failed'")
        assert "join mode needs merc-serve" in page.evaluate("mercOverlay.notice")
        assert page.evaluate("mercOverlay.capture.tracksLive") == 0
        assert page.page_errors == [] and page.console_errors == [] and page.violations == []
        page.close()
    finally:
        events.stop()


# -- sessions ---------------------------------------------------------------------------------------

def join_and_leave(server: Server, page: Page, watcher_browser=None) -> tuple[list[dict], Page | None]:
    """Join, let the fixture play to its end, Leave, and wait for the session's end: the events the
    session's socket received, in order (and a page that watched the session from its link)."""
    duration = float(json.loads((KITCHEN / "manifest.json").read_text())["duration_s"])
    page.page.click("#join-button")
    wait_for(page.page, "mercOverlay.joinState === 'live'")
    watcher = None
    if watcher_browser is not None:  # another screen following the session from the link the page shows
        link = page.page.locator("#session-id").get_attribute("href")
        watcher = Page(watcher_browser, server.base.rstrip("/") + link)
    # the fixture, then some of the silence after it (%noloop); 2 cores may lag a little behind real time
    wait_for(page.page, f"mercOverlay.capture.seconds >= {duration + 0.8}", timeout=duration + 20)
    page.page.click("#leave-button")
    wait_for(page.page, "mercOverlay.joinState === 'ended'", timeout=60)
    page.page.wait_for_timeout(200)  # the last frames' events are delivered to the recorders
    return page.received[page.session_socket()], watcher


def check_turns(page: Page, events: list[dict]) -> dict:
    """The session's turns against the fixture's gold (as merc-eval --replay scores merc-replay's)
    and against what the page shows; the scores as a dict."""
    hello = events[0]
    assert hello["type"] == "hello" and hello["session"].startswith("s-")
    assert all(e["session"] == hello["session"] for e in events)
    assert events[-1]["type"] == "status" and events[-1]["message"].startswith("session ended")
    assert not [e for e in events if e["type"] == "error"], [e for e in events if e["type"] == "error"]
    gold = read_gold(open_recording(KITCHEN))
    scores = score_replay(gold, events)
    summary = f"{scores} (texts: {[e['text'] for e in events if e['type'] == 'turn']})"
    # merc-replay on this fixture: every gold turn, none extra, speakers >= 0.8, WER <= 0.25 (the
    # Python media client: WER 0.10). The browser's capture (echo cancellation, noise suppression,
    # automatic gain) costs a few words: one turn and WER 0.35 of slack.
    assert abs(scores.predicted_turns - scores.gold_turns) <= 1, summary
    assert scores.missed_turns <= 1 and scores.extra_turns <= 1, summary
    assert scores.speaker_accuracy >= 0.8, summary
    assert scores.wer <= 0.35, summary

    # the page shows exactly those turns (as finally corrected), on the rows and the timeline
    turns = [e for e in apply_updates(events) if e["type"] == "turn"]
    rows = page.page.locator("#turns .turn")
    assert rows.count() == len(turns) and page.page.locator("#turns .turn.provisional").count() == 0
    for i, turn in enumerate(turns):
        assert rows.nth(i).locator(".speaker").inner_text() == turn["speaker"]
        assert rows.nth(i).locator(".text").inner_text() == turn["text"]
        assert rows.nth(i).locator(".label").inner_text() == f"{turn['label']} {round(turn['confidence'] * 100)}%"
    assert page.page.locator("#timeline rect.mark").count() == len(turns)
    assert [t["text"] for t in page.evaluate("mercOverlay.turns")] == [t["text"] for t in turns]
    assert page.evaluate("mercOverlay.missed") == 0
    # the session id, shown with a link to watch it
    assert page.page.locator("#session").is_visible()
    assert page.page.locator("#session-id").inner_text() == hello["session"]
    assert page.page.locator("#session-id").get_attribute("href").startswith(f"/?session={hello['session']}")
    assert f"Session {hello['session']} ended" in page.evaluate("mercOverlay.notice")
    assert page.page_errors == [] and page.console_errors == [] and page.violations == []
    return scores.as_dict()


def check_audio_frames(page: Page, duration: float) -> np.ndarray:
    """The audio frames the page sent, read with the server's parser: 512 samples each, numbered
    from 0 without a gap, timed by their samples, then the end of audio; the samples as float32."""
    frames = [parse_frame(data) for data in page.sent[page.session_socket()]]
    audio = [f for f in frames if f.kind == AUDIO]
    assert [f.seq for f in audio] == list(range(len(audio)))
    assert all(len(f.payload) == 2 * FRAME_SAMPLES for f in audio[:-2])  # the last: maybe a part, then none
    assert audio[-1].payload == b"" and len(page.sent[page.session_socket()][-1]) == HEADER.size
    assert frames[-1] == audio[-1]  # nothing after the end of audio
    heard = 0
    for frame in audio:
        assert frame.t == pytest.approx(heard / 16000)
        heard += len(frame.payload) // 2
    samples = np.concatenate([f.samples() for f in audio])
    counters = page.evaluate("mercOverlay.capture")
    assert counters["audioFrames"] == len(audio) - 1 and counters["audioSamples"] == len(samples)
    assert len(samples) / 16000 >= duration
    # the recording was played once (%noloop): speech in it, silence after its end
    rms = lambda x: float(np.sqrt(np.mean(np.square(x))))  # noqa: E731
    assert rms(samples[16000:int(16000 * (duration - 1))]) > 0.02
    assert rms(samples[int(16000 * (duration + 0.3)):]) < 0.005
    return samples


def test_joining_with_the_microphone_gives_the_fixture_turns(server, browser):
    """Audio only, at the 16 kHz the page asks its AudioContext for: the session's turns match the
    gold as merc-replay's do and are shown; a second screen watching the session from the page's
    link gets the same turns; the server counts them."""
    server.wait_idle()
    turns_before = server.metric("merc_turns_total")
    page = Page(browser, server.page_url())
    watcher = None
    try:
        assert page.page.locator("#join").is_visible() and not page.page.locator("#camera-box").is_checked()
        assert page.page.locator("#connection").get_attribute("data-state") == "not joined"
        assert page.received == {}  # nothing is opened before Join
        events, watcher = join_and_leave(server, page, watcher_browser=browser)
        scores = check_turns(page, events)
        print(f"\njoin (microphone, 16 kHz context): {json.dumps(scores)}")
        counters = page.evaluate("mercOverlay.capture")
        assert counters["sampleRate"] == 16000 and not counters["resampled"] and counters["videoFrames"] == 0
        assert counters["tracksLive"] == 0 and counters["stopped"]
        check_audio_frames(page, float(json.loads((KITCHEN / "manifest.json").read_text())["duration_s"]))
        assert [f for f in page.sent[page.session_socket()] if f[3] == VIDEO] == []
        assert not [e for e in events if e["type"] == "status" and {"camera", "face"} & set(e.get("devices") or {})]
        screenshot(page, "overlay-join.png")

        turns = [e for e in apply_updates(events) if e["type"] == "turn"]
        wait_for(watcher.page, f"mercOverlay.turns.length >= {len(turns)}")
        assert [t["text"] for t in watcher.evaluate("mercOverlay.turns")] == [t["text"] for t in turns]
        assert watcher.page_errors == [] and watcher.violations == []
        assert server.metric("merc_turns_total") - turns_before == len(turns)
        assert server.metric("merc_audio_dropped_seconds_total") == 0
    finally:
        page.close()
        if watcher is not None:
            watcher.close()


def test_joining_with_the_camera_sends_jpeg_frames(server, browser):
    """Camera on, and the AudioContext at the device's rate (?native=1), so the worklet resamples to
    16 kHz itself: the turns still match the gold; JPEG frames of 320x240 went out at about 5 per
    second, each read by the server's parser; the server's face tracker reported on them."""
    import cv2

    server.wait_idle()
    duration = float(json.loads((KITCHEN / "manifest.json").read_text())["duration_s"])
    page = Page(browser, server.page_url(native="1"))
    try:
        page.page.check("#camera-box")
        events, _ = join_and_leave(server, page)
        scores = check_turns(page, events)
        counters = page.evaluate("mercOverlay.capture")
        print(f"\njoin (camera, worklet resampling from {counters['sampleRate']} Hz): {json.dumps(scores)}; "
              f"{counters['videoFrames']} video frames, {counters['videoBytes']} bytes")
        assert counters["resampled"] and counters["sampleRate"] != 16000
        check_audio_frames(page, duration)

        video = [parse_frame(data) for data in page.sent[page.session_socket()] if data[3] == VIDEO]
        assert counters["videoFrames"] == len(video) and counters["videoSkipped"] == 0
        assert [f.seq for f in video] == list(range(len(video)))
        seconds = video[-1].t - video[0].t
        assert seconds >= duration - 1 and 3.5 <= (len(video) - 1) / seconds <= 5.5  # 5 fps, timers permitting
        assert all(0 < len(f.payload) <= MAX_VIDEO_BYTES for f in video)
        for frame in video[:: max(1, len(video) // 5)]:
            image = cv2.imdecode(np.frombuffer(frame.payload, np.uint8), cv2.IMREAD_COLOR)
            assert image is not None and image.shape == (240, 320, 3)
        assert page.page.locator("#preview").is_hidden()  # the preview went with the camera
        # the server read them: the session's face tracker said what it saw in them (or why it could not)
        camera = [e for e in events if e["type"] == "status" and {"camera", "face"} & set(e.get("devices") or {})]
        assert camera, [e for e in events if e["type"] == "status"]
        shown = page.evaluate("mercOverlay.devices")
        assert shown["face"] == camera[-1]["devices"].get("face", shown["face"])  # and the page shows it
        screenshot(page, "overlay-join-camera.png")
    finally:
        page.close()

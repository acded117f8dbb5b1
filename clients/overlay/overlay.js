// merc-live overlay: follows the event server it was served from and draws turns, a per-speaker
// emotion timeline, device availability and the connection state. Vanilla JS, no build step.
//
// URL parameters: transparent=1 (no background, for OBS), compact=1 (last few turns, large type),
// token=... (passed on to the WebSocket URL for servers that require one), session=ID (merc-serve:
// watch that session), join=1 (merc-serve: this browser's microphone, and camera, are a new session;
// capture.js captures, the events come back on the same socket and are drawn as any others),
// native=1 (join mode: capture at the device's rate and resample in the worklet).
(function () {
  "use strict";

  // The protocol major version this overlay understands; the server says which it speaks in its hello.
  const SUPPORTED_MAJOR = 1;
  const SVG_NS = "http://www.w3.org/2000/svg";
  const COMPACT_TURNS = 3;
  const FULL_TURNS = 50;
  const TIMELINE_SECONDS = 300; // the timeline shows the last five minutes of the conversation
  const BACKOFF_MS = [250, 5000]; // first retry, ceiling (doubling in between)
  const CORRECTED_MS = 4000; // how long a row corrected by a turn.update stays marked
  const SESSION_ENDED = "session ended"; // merc-serve's last status of a session
  const MAX_PENDING = 320; // join mode: audio frames (10 s) kept while the session's socket opens
  const MAX_BUFFERED_BYTES = 1 << 20; // join mode: video frames are skipped while this much is unsent

  // MELD-7 and IEMOCAP-6 share hues for the same emotion so a viewer learns one palette.
  const COLOURS = {
    neutral: "#9aa5b1", neu: "#9aa5b1",
    joy: "#f5c518", hap: "#f5c518",
    exc: "#ff9f1c",
    surprise: "#ff7a00",
    anger: "#e53935", ang: "#e53935",
    fru: "#b5651d",
    sadness: "#3b82f6", sad: "#3b82f6",
    disgust: "#43a047",
    fear: "#8e44ad",
  };

  function colourOf(label) {
    if (COLOURS[label]) return COLOURS[label];
    let hash = 0; // an unknown label still gets a stable colour of its own
    for (const ch of String(label)) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
    return `hsl(${hash % 360}, 60%, 55%)`;
  }

  function readOptions(search) {
    const params = new URLSearchParams(search);
    const flag = (name) => ["1", "true", "yes", ""].includes(params.get(name) ?? "no");
    return { transparent: flag("transparent"), compact: flag("compact"), token: params.get("token"),
      session: params.get("session"), join: flag("join"), native: flag("native") };
  }

  function socketUrl(loc, since, token, session) {
    // `since` in the URL makes the server's backlog atomic with the subscription, so events
    // published while the socket opens can neither overtake the backlog nor be lost.
    const query = new URLSearchParams({ since: String(since) });
    if (token) query.set("token", token);
    if (session) query.set("session", session);
    return `${loc.protocol === "https:" ? "wss" : "ws"}://${loc.host}/?${query}`;
  }

  function sessionUrl(loc, token) {
    // merc-serve's media endpoint: every connection is a new session
    const query = token ? `?${new URLSearchParams({ token })}` : "";
    return `${loc.protocol === "https:" ? "wss" : "ws"}://${loc.host}/session${query}`;
  }

  function watchUrl(session, token) {
    const query = new URLSearchParams({ session });
    if (token) query.set("token", token);
    return `/?${query}`;
  }

  function majorOf(version) {
    // `v` is the major version (an integer; "1.2"-style text is read as its major part)
    const major = Number.parseInt(String(version), 10);
    return Number.isInteger(major) ? major : null;
  }

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text; // never innerHTML: transcripts are untrusted
    return node;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
    return node;
  }

  function createOverlay(doc, loc) {
    const options = readOptions(loc.search);
    const view = {
      connection: doc.getElementById("connection"),
      connectionText: doc.getElementById("connection-text"),
      devices: doc.getElementById("devices"),
      notice: doc.getElementById("notice"),
      turns: doc.getElementById("turns"),
      timeline: doc.getElementById("timeline"),
      legend: doc.getElementById("legend"),
      join: doc.getElementById("join"),
      joinButton: doc.getElementById("join-button"),
      leaveButton: doc.getElementById("leave-button"),
      cameraBox: doc.getElementById("camera-box"),
      sessionBox: doc.getElementById("session"),
      sessionId: doc.getElementById("session-id"),
      captureInfo: doc.getElementById("capture-info"),
      preview: doc.getElementById("preview"),
    };
    const state = {
      session: null, labels: [], turns: [], lastSeq: 0, missed: 0, connectionState: "connecting",
      connections: 0, devices: { microphone: null, camera: null, face: null }, socket: null,
      backoff: BACKOFF_MS[0], retryTimer: null, held: false, noticeTimer: null, version: null, partial: null,
      joinState: "idle", capture: null, pending: [], infoTimer: null,
    };
    doc.body.classList.toggle("transparent", options.transparent);
    doc.body.classList.toggle("compact", options.compact);

    function setConnection(name, detail) {
      state.connectionState = name;
      view.connection.dataset.state = name;
      view.connectionText.textContent = detail ? `${name} (${detail})` : name;
    }

    function notify(message, sticky = false, kind = "problem") {
      view.notice.textContent = message;
      view.notice.dataset.kind = kind; // "problem" or "info" (join mode: a session that ended as it should)
      view.notice.hidden = false;
      clearTimeout(state.noticeTimer);
      if (!sticky) state.noticeTimer = setTimeout(() => { view.notice.hidden = true; }, 8000);
    }

    function incompatible(version) {
      // Not retried: reconnecting would meet the same server. The notice stays up.
      const detail = `server speaks protocol v${String(version).slice(0, 20)}, overlay v${SUPPORTED_MAJOR}`;
      setConnection("incompatible", detail);
      notify(`Incompatible server: it speaks protocol v${String(version).slice(0, 20)}, this overlay ` +
        `understands v${SUPPORTED_MAJOR}. Update merc-live or the overlay so both speak the same version.`, true);
      state.socket.close();
    }

    function connect() {
      state.retryTimer = null;
      setConnection(state.connections === 0 ? "connecting" : "reconnecting");
      const socket = new WebSocket(socketUrl(loc, state.lastSeq, options.token, options.session));
      state.socket = socket;
      state.version = null; // learnt again from this connection's hello
      socket.onopen = () => socket.send(JSON.stringify({ type: "hello", since: state.lastSeq }));
      socket.onmessage = (message) => {
        if (socket === state.socket) receive(JSON.parse(message.data));
      };
      socket.onclose = () => {
        if (socket !== state.socket) return; // an old socket closing late
        state.socket = null;
        if (state.connectionState !== "incompatible") scheduleReconnect();
      };
    }

    function scheduleReconnect() {
      if (state.held || state.retryTimer !== null) {
        setConnection("reconnecting", state.held ? "held" : undefined);
        return;
      }
      const delay = state.backoff;
      state.backoff = Math.min(BACKOFF_MS[1], state.backoff * 2);
      setConnection("reconnecting", `in ${(delay / 1000).toFixed(1)} s`);
      state.retryTimer = setTimeout(connect, delay);
    }

    function receive(event) {
      if (event.type === "hello") {
        if (majorOf(event.v) !== SUPPORTED_MAJOR) return incompatible(event.v);
        state.version = majorOf(event.v);
        return greet(event);
      }
      if (state.version === null) { // the server greets first: nothing counts before its hello...
        if (event.direct && event.type === "error") notify(event.message); // ...but say why it will not
        return;
      }
      if (majorOf(event.v) !== state.version) return incompatible(event.v);
      if (event.direct) { // a pong, or an error about our own message: outside the sequence
        if (event.type === "error" && options.join && event.code === "bad_json") return notASessionServer();
        if (event.type === "error") notify(event.message);
        return;
      }
      if (event.seq <= state.lastSeq) return; // already shown: a resume may overlap
      state.missed += Math.max(0, event.seq - state.lastSeq - 1);
      state.lastSeq = event.seq;
      if (event.type === "turn") addTurn(event);
      else if (event.type === "turn.partial") showPartial(event);
      else if (event.type === "turn.update") updateTurn(event);
      else if (event.type === "status") {
        updateDevices(event);
        if (options.join) sessionStatus(event);
      }
      else if (event.type === "error") notify(event.message);
      // any other type is from a newer minor version of the protocol: ignored
    }

    function greet(hello) {
      if (state.session !== null && hello.session !== state.session) {
        // A new session numbers its events from 1 again: start over from its beginning.
        forget();
        state.session = hello.session;
        const old = state.socket;
        state.socket = null; // ignore what the old socket still delivers (the old numbering)
        old.close();
        connect();
        return;
      }
      state.session = hello.session;
      state.connections += 1;
      state.backoff = BACKOFF_MS[0]; // reset only once the server has really let us in
      state.labels = hello.labels || [];
      drawLegend();
      setConnection("live");
      if (options.join) joined(hello.session);
    }

    function forget() {
      state.partial = null;
      state.turns = [];
      state.lastSeq = 0;
      state.missed = 0;
      view.turns.replaceChildren();
      drawTimeline();
    }

    function dropPartial() {
      state.partial = null;
      view.turns.querySelector(".turn.provisional")?.remove();
    }

    function showPartial(event) {
      // The turn still being spoken: one provisional row at the bottom, redrawn by each newer
      // partial and replaced by the final turn. The words decodes agreed on are solid, the rest faint.
      state.partial = { ...event };
      let row = view.turns.querySelector(".turn.provisional");
      if (row === null) {
        row = element("li", "turn provisional");
        row.title = "still being spoken: provisional";
        row.append(element("span", "speaker"), element("span", "label"), element("span", "text"));
        view.turns.append(row);
      }
      row.dataset.turn = event.turn;
      fillRow(row, event);
      const stable = event.stable && event.text.startsWith(event.stable) ? event.stable : "";
      row.querySelector(".text").replaceChildren(element("span", "stable", stable),
        element("span", "tentative", event.text.slice(stable.length)));
      view.turns.append(row); // stays last
      view.turns.scrollTop = view.turns.scrollHeight;
    }

    function addTurn(event) {
      dropPartial();
      state.turns.push({ ...event, updates: 0 });
      const row = element("li", "turn");
      row.dataset.seq = event.seq;
      row.dataset.turn = event.turn;
      row.append(element("span", "speaker"), element("span", "label"), element("span", "text", event.text));
      fillRow(row, event);
      view.turns.append(row);
      const keep = options.compact ? COMPACT_TURNS : FULL_TURNS;
      while (view.turns.children.length > keep) view.turns.firstElementChild.remove();
      view.turns.scrollTop = view.turns.scrollHeight;
      drawTimeline();
    }

    function fillRow(row, turn) {
      row.dataset.label = turn.label;
      row.style.setProperty("--emotion", colourOf(turn.label));
      row.querySelector(".speaker").textContent = turn.speaker ?? "?";
      row.querySelector(".label").textContent = `${turn.label} ${Math.round(turn.confidence * 100)}%`;
    }

    function updateTurn(event) {
      // A correction of a turn already shown (its speaker was revised, so its emotion too): the most
      // recent turn with that number (numbers start again after a reset). Never creates a turn.
      let turn = null;
      for (let i = state.turns.length - 1; i >= 0; i -= 1) {
        if (state.turns[i].turn === event.turn) { turn = state.turns[i]; break; }
      }
      if (turn === null) return; // a turn this page never had
      for (const key of ["speaker", "label", "confidence", "probs"]) if (key in event) turn[key] = event[key];
      turn.updates += 1;
      const row = view.turns.querySelector(`.turn[data-seq="${turn.seq}"]`);
      if (row) { // still on screen (compact mode keeps only the last few rows)
        fillRow(row, turn);
        row.classList.add("corrected");
        row.title = `corrected (${event.reason ?? "update"})`;
        clearTimeout(row.correctedTimer);
        row.correctedTimer = setTimeout(() => row.classList.remove("corrected"), CORRECTED_MS);
      }
      drawTimeline();
    }

    function updateDevices(event) {
      for (const [name, on] of Object.entries(event.devices || {})) {
        if (!(name in state.devices)) continue;
        state.devices[name] = on;
        const item = view.devices.querySelector(`[data-device="${name}"]`);
        item.dataset.on = on === null ? "unknown" : String(on);
        item.title = event.message;
      }
    }

    function drawLegend() {
      view.legend.replaceChildren(...state.labels.map((label) => {
        const item = element("li", "legend-item", label);
        item.style.setProperty("--emotion", colourOf(label));
        return item;
      }));
    }

    function drawTimeline() {
      const chart = view.timeline;
      const speakers = [...new Set(state.turns.map((t) => t.speaker ?? "?"))];
      const width = Math.max(200, chart.clientWidth || 600);
      const lane = 22, left = 44, top = 4, axis = 16;
      const height = top + speakers.length * lane + axis;
      chart.setAttribute("viewBox", `0 0 ${width} ${height}`);
      chart.setAttribute("height", String(height));
      chart.replaceChildren();
      if (state.turns.length === 0) return;
      const end = Math.max(...state.turns.map((t) => t.t_end));
      const start = Math.max(0, end - TIMELINE_SECONDS);
      const span = Math.max(1, end - start);
      const x = (t) => left + ((t - start) / span) * (width - left - 4);
      speakers.forEach((speaker, i) => {
        chart.append(svg("line", { class: "lane", x1: left, x2: width, y1: top + (i + 1) * lane,
          y2: top + (i + 1) * lane }));
        const name = svg("text", { class: "lane-name", x: 2, y: top + i * lane + lane * 0.7 });
        name.textContent = speaker;
        chart.append(name);
      });
      const step = [1, 2, 5, 10, 15, 30, 60, 120].find((s) => span / s <= 8) || 300;
      for (let t = Math.ceil(start / step) * step; t <= end; t += step) {
        const tick = svg("text", { class: "tick", x: x(t), y: height - 3 });
        tick.textContent = `${t}s`;
        chart.append(tick);
      }
      for (const turn of state.turns) {
        if (turn.t_end < start) continue;
        const from = Math.max(start, turn.t_start);
        const mark = svg("rect", {
          class: turn.updates ? "mark corrected" : "mark", "data-seq": turn.seq, "data-label": turn.label,
          "data-speaker": turn.speaker ?? "?",
          x: x(from), width: Math.max(3, x(turn.t_end) - x(from)),
          y: top + speakers.indexOf(turn.speaker ?? "?") * lane + 3, height: lane - 6, rx: 3,
          fill: colourOf(turn.label), "fill-opacity": 0.35 + 0.65 * turn.confidence,
        });
        const tip = svg("title", {});
        tip.textContent = `${turn.speaker ?? "?"} · ${turn.label} ${Math.round(turn.confidence * 100)}% · ${turn.text}`;
        mark.append(tip);
        chart.append(mark);
      }
    }

    // -- join mode: this browser's microphone (and camera) is a session of merc-serve ------------------
    // Capture starts first (the permission prompt belongs to the click), then the session's socket;
    // audio captured before it opens waits in `pending`. Leave sends the end of audio and stops the
    // devices; the turns still being processed arrive until the server's "session ended" status, then
    // the socket closes. A socket is never reopened: a new one would be a new session.

    function setUpJoin() {
      view.join.hidden = false;
      doc.body.classList.add("join");
      setConnection("not joined");
      const unexpected = (err) => notify(`Something went wrong: ${err && err.message ? err.message : err}`, true);
      view.joinButton.addEventListener("click", () => { join().catch(unexpected); });
      view.leaveButton.addEventListener("click", () => { leave().catch(unexpected); });
      setJoin("idle");
    }

    function setJoin(name) {
      state.joinState = name;
      view.join.dataset.state = name;
      const idle = ["idle", "ended", "refused", "failed"].includes(name);
      view.joinButton.disabled = !idle;
      view.cameraBox.disabled = !idle;
      view.leaveButton.disabled = name !== "live";
      if (idle) stopInfo();
    }

    async function join() {
      if (!["idle", "ended", "refused", "failed"].includes(state.joinState)) return;
      const camera = view.cameraBox.checked;
      setJoin("starting");
      forget();
      state.session = null;
      state.version = null;
      state.pending = [];
      view.sessionBox.hidden = true;
      view.notice.hidden = true;
      setConnection("joining", camera ? "asking for the microphone and camera" : "asking for the microphone");
      let capture;
      try {
        capture = await window.MercCapture.start({
          camera, native: options.native, video: view.preview, onFrame: sendFrame,
          onProblem: (message) => { notify(message, true); leave(); },
        });
      } catch (err) {
        setJoin("failed");
        setConnection("not joined");
        notify(window.MercCapture.describe(err, camera), true);
        return;
      }
      state.capture = capture;
      updateDevices({ devices: { microphone: true, camera }, message: "this browser's capture" });
      setConnection("joining", "opening the session");
      openSession();
      showInfo();
    }

    function openSession() {
      const socket = new WebSocket(sessionUrl(loc, options.token));
      socket.binaryType = "arraybuffer";
      state.socket = socket;
      socket.onopen = () => {
        for (const frame of state.pending) socket.send(frame);
        state.pending = [];
      };
      socket.onmessage = (message) => {
        if (socket === state.socket && typeof message.data === "string") receive(JSON.parse(message.data));
      };
      socket.onclose = (closed) => {
        if (socket !== state.socket) return; // closed by us, on purpose
        state.socket = null;
        sessionClosed(closed);
      };
    }

    function sendFrame(frame, kind) {
      const socket = state.socket;
      if (socket && socket.readyState === WebSocket.OPEN) {
        if (kind === window.MercCapture.VIDEO && socket.bufferedAmount > MAX_BUFFERED_BYTES) return false;
        socket.send(frame);
        return true;
      }
      if (state.joinState === "starting" && kind === window.MercCapture.AUDIO && state.pending.length < MAX_PENDING) {
        state.pending.push(frame); // the socket is still opening
        return true;
      }
      return false;
    }

    function joined(session) {
      setJoin("live");
      view.sessionId.textContent = session;
      view.sessionId.href = watchUrl(session, options.token);
      view.sessionBox.hidden = false;
    }

    async function leave() {
      if (state.joinState !== "live") return;
      setJoin("leaving");
      setConnection("leaving", "finishing the last turns");
      const capture = state.capture;
      await capture.stop(); // its last frames, then the end of audio
      updateDevices({ devices: { microphone: null, camera: null }, message: "capture stopped" });
      showInfo();
    }

    function sessionStatus(event) {
      if (!String(event.message || "").startsWith(SESSION_ENDED)) return;
      if (state.capture) state.capture.abort(); // the server ended it (normally: after our Leave)
      const socket = state.socket;
      state.socket = null;
      if (socket) socket.close(1000, "session ended");
      setJoin("ended");
      setConnection("ended", state.session);
      const detail = event.message.slice(SESSION_ENDED.length).replace(/^[:\s]+/, "");
      notify(`Session ${state.session} ended${detail ? ` (${detail})` : ""}. Join again for a new one.`, true, "info");
    }

    function sessionClosed(closed) {
      if (state.capture) state.capture.abort();
      updateDevices({ devices: { microphone: null, camera: null }, message: "capture stopped" });
      if (state.connectionState === "incompatible") {
        setJoin("failed");
        return;
      }
      if (state.version === null) { // no hello: the handshake was refused
        setJoin("refused");
        view.captureInfo.textContent = ""; // nothing was sent
        setConnection("refused");
        notify("The server refused the session.", true);
        explainRefusal();
        return;
      }
      setJoin("failed");
      setConnection("disconnected");
      notify(`The connection to the server was lost (code ${closed.code}${closed.reason ? `: ${closed.reason}` : ""}` +
        "): this session is over. Join again for a new one.", true);
    }

    function notASessionServer() {
      // Our media frames were read as JSON messages: an event server (merc-live, merc-replay), not merc-serve.
      if (!["live", "leaving"].includes(state.joinState)) return;
      if (state.capture) state.capture.abort();
      const socket = state.socket;
      state.socket = null;
      if (socket) socket.close(1000, "not a session server");
      updateDevices({ devices: { microphone: null, camera: null }, message: "capture stopped" });
      setJoin("failed");
      setConnection("not joined");
      notify("This server does not take sessions: join mode needs merc-serve (merc-live and merc-replay serve " +
        "their own session's events; open this page without ?join=1 to follow them).", true);
    }

    async function explainRefusal() {
      // A browser is not told why a WebSocket handshake failed; merc-serve's /healthz says if it is full.
      let message = "The server refused the session: it may be full, the token may be missing or wrong, or it " +
        "is not merc-serve (merc-live and merc-replay serve the overlay, not sessions). Try again later.";
      try {
        const reply = await fetch("/healthz", { cache: "no-store" });
        const health = reply.ok ? await reply.json() : null;
        if (health && Number.isInteger(health.max_sessions) && health.sessions >= health.max_sessions) {
          message = `The server refused the session: all ${health.max_sessions} of its sessions are in use ` +
            "(HTTP 503). Try again later.";
        }
      } catch (err) {
        // no /healthz: keep the general message
      }
      if (state.joinState === "refused") notify(message, true);
    }

    function showInfo() {
      // The capture's counters, once a second while it runs: seconds sent, frames, the capture rate.
      const capture = state.capture;
      if (!capture) return;
      const c = capture.counters;
      const video = c.videoFrames || c.videoSkipped ? `, ${c.videoFrames} video frames` +
        (c.videoSkipped ? ` (${c.videoSkipped} skipped)` : "") : "";
      view.captureInfo.textContent = `${capture.seconds.toFixed(1)} s of audio${video}` +
        (c.resampled ? `, resampled from ${c.sampleRate} Hz` : "");
      clearTimeout(state.infoTimer);
      if (!c.stopped) state.infoTimer = setTimeout(showInfo, 1000);
    }

    function stopInfo() {
      clearTimeout(state.infoTimer);
      state.infoTimer = null;
      if (state.capture) showInfo();
    }

    // Small hooks for tests and for debugging from the console.
    const hooks = {
      get turns() { return state.turns.map((t) => ({ seq: t.seq, turn: t.turn, speaker: t.speaker,
        label: t.label, confidence: t.confidence, text: t.text, updates: t.updates })); },
      get partial() { return state.partial && { turn: state.partial.turn, speaker: state.partial.speaker,
        label: state.partial.label, text: state.partial.text, stable: state.partial.stable }; },
      get lastSeq() { return state.lastSeq; },
      get missed() { return state.missed; },
      get state() { return state.connectionState; },
      get connections() { return state.connections; },
      get devices() { return { ...state.devices }; },
      get labels() { return [...state.labels]; },
      get version() { return state.version; },
      get session() { return state.session; },
      // join mode: idle, starting, live, leaving, ended, refused, failed; and the capture's counters
      get joinState() { return state.joinState; },
      get capture() {
        const capture = state.capture;
        return capture && { ...capture.counters, seconds: capture.seconds, tracksLive: capture.tracksLive };
      },
      get notice() { return view.notice.hidden ? null : view.notice.textContent; },
      supportedMajor: SUPPORTED_MAJOR,
      options,
      // Drop the socket as a network failure would; `hold` keeps it down until reconnect().
      dropConnection(hold = false) {
        state.held = hold;
        if (state.socket) state.socket.close();
      },
      reconnect() {
        state.held = false;
        clearTimeout(state.retryTimer);
        state.retryTimer = null;
        if (!state.socket) connect();
      },
    };
    addEventListener("resize", drawTimeline);
    if (options.join) setUpJoin();
    else connect();
    return hooks;
  }

  window.mercOverlay = createOverlay(document, window.location);
})();

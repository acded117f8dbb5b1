// merc-live join mode: capture this browser's microphone (and camera) as merc-serve's binary media
// frames. overlay.js owns the page and the session's WebSocket; this file only captures and encodes.
//
// A frame (stream/serve/media.py, README "Browser capture and merc-serve") is a 16-byte header,
// little-endian: "MF", version 1, kind (1 audio, 2 video), seq (uint32, per kind from 0), t (float64,
// seconds since capture started); then 512 samples of 16 kHz mono int16 PCM (32 ms), or one JPEG.
// An audio frame with no samples says capture stopped.
(function () {
  "use strict";

  const MEDIA_VERSION = 1;
  const AUDIO = 1;
  const VIDEO = 2;
  const HEADER_BYTES = 16;
  const SAMPLE_RATE = 16000;
  const VIDEO_FPS = 5;
  const VIDEO_SIZE = { width: 320, height: 240 };
  const JPEG_QUALITY = [0.7, 0.5]; // the second only when a frame comes out over MAX_VIDEO_BYTES
  const MAX_VIDEO_BYTES = 60 * 1024;
  const FLUSH_WAIT_MS = 1000; // how long stop() waits for the worklet's last samples

  /** A user-facing reason capture could not start (its `message` is meant for the page). */
  class CaptureError extends Error {
    constructor(message, cause) {
      super(message);
      this.name = "CaptureError";
      this.cause = cause;
    }
  }

  function header(kind, seq, t, payloadBytes) {
    const buffer = new ArrayBuffer(HEADER_BYTES + payloadBytes);
    const view = new DataView(buffer);
    view.setUint8(0, 0x4d); // "M"
    view.setUint8(1, 0x46); // "F"
    view.setUint8(2, MEDIA_VERSION);
    view.setUint8(3, kind);
    view.setUint32(4, seq >>> 0, true);
    view.setFloat64(8, Math.max(0, t), true);
    return { buffer, view };
  }

  /** An audio frame of int16 samples (an Int16Array; empty: the end of audio). */
  function audioFrame(seq, t, samples) {
    const { buffer, view } = header(AUDIO, seq, t, samples.length * 2);
    for (let i = 0; i < samples.length; i += 1) view.setInt16(HEADER_BYTES + 2 * i, samples[i], true);
    return buffer;
  }

  /** A video frame of one JPEG (an ArrayBuffer). */
  function videoFrame(seq, t, jpeg) {
    const { buffer } = header(VIDEO, seq, t, jpeg.byteLength);
    new Uint8Array(buffer, HEADER_BYTES).set(new Uint8Array(jpeg));
    return buffer;
  }

  /** What to tell the user when getUserMedia (or the audio graph) failed. */
  function describe(err, camera) {
    const devices = camera ? "microphone or camera" : "microphone";
    const name = err && err.name;
    if (err instanceof CaptureError) return err.message;
    if (name === "NotAllowedError" || name === "SecurityError") {
      return `Access to the ${devices} was refused. Allow it for this page (the browser's site settings), ` +
        "then Join again.";
    }
    if (name === "NotFoundError" || name === "OverconstrainedError") {
      return `No ${devices} is available` + (camera ? ": uncheck camera to join with the microphone alone." : ".");
    }
    if (name === "NotReadableError" || name === "AbortError") {
      return `The ${devices} could not be opened: another program may be using it.`;
    }
    return `Could not start capturing: ${name || "error"}: ${(err && err.message) || err}`;
  }

  function newContext(native) {
    // 16 kHz asked for, so the browser resamples; where it will not (or `native`), the device's rate
    // and the worklet resamples.
    const Context = window.AudioContext || window.webkitAudioContext;
    if (!Context) throw new CaptureError("This browser has no Web Audio: it cannot capture for a session.");
    if (!native) {
      try {
        return new Context({ sampleRate: SAMPLE_RATE, latencyHint: "interactive" });
      } catch (err) {
        // a browser that refuses the rate: the device's own, resampled in the worklet
      }
    }
    return new Context({ latencyHint: "interactive" });
  }

  async function audioGraph(context, stream, onSamples) {
    const source = context.createMediaStreamSource(stream);
    const node = new AudioWorkletNode(context, "merc-capture", {
      numberOfInputs: 1, numberOfOutputs: 1, outputChannelCount: [1], channelCount: 1, channelCountMode: "explicit",
    });
    node.port.onmessage = (message) => onSamples(message.data);
    source.connect(node);
    node.connect(context.destination); // the worklet writes silence; connected, it is always pulled
    return { source, node };
  }

  /**
   * Start capturing. Call from a click handler (the AudioContext is made before the first await).
   * options: camera (bool), native (bool: the context at the device's rate, resampled in the
   * worklet), video (a <video> element for the preview, needed with camera), onFrame(buffer, kind)
   * (returns false when the frame could not be sent), onProblem(message) (capture stopped by itself).
   * Resolves to a capture: counters, stop() (the last samples, then the end-of-audio frame), abort().
   */
  async function start(options) {
    const { camera = false, native = false, video = null, onFrame, onProblem = () => {} } = options;
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      throw new CaptureError("This page cannot use the microphone here: browsers allow capture only on https:// " +
        "pages and on http://localhost or http://127.0.0.1. Open it that way, or serve it over https.");
    }
    let context = newContext(native);
    let stream = null;
    const modules = new WeakMap();
    const load = (ctx) => {
      if (!modules.has(ctx)) modules.set(ctx, ctx.audioWorklet.addModule("capture-worklet.js"));
      return modules.get(ctx);
    };
    load(context).catch(() => {}); // loads while the user answers the permission prompt; awaited below
    const counters = { audioFrames: 0, audioSamples: 0, videoFrames: 0, videoBytes: 0, videoSkipped: 0,
      sampleRate: context.sampleRate, resampled: context.sampleRate !== SAMPLE_RATE, stopped: false };
    const cleanUp = () => {
      if (stream) for (const track of stream.getTracks()) track.stop();
      if (context.state !== "closed") context.close().catch(() => {});
    };
    try {
      stream = await navigator.mediaDevices.getUserMedia({
        audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true },
        video: camera ? { width: VIDEO_SIZE.width, height: VIDEO_SIZE.height, frameRate: 10 } : false,
      });
      await load(context);
      if (context.state === "suspended") await context.resume();
    } catch (err) {
      cleanUp();
      throw new CaptureError(describe(err, camera), err);
    }

    let audioSeq = 0;
    let videoSeq = 0;
    let started = performance.now();
    let flushed = null; // resolves when the worklet has handed over its last samples
    const since = () => (performance.now() - started) / 1000;
    const onSamples = (data) => {
      if (counters.stopped) return; // a flush that came too late: the end of audio has been sent
      if (data.samples.length) {
        onFrame(audioFrame(audioSeq, counters.audioSamples / SAMPLE_RATE, data.samples), AUDIO);
        audioSeq += 1;
        counters.audioFrames += 1;
        counters.audioSamples += data.samples.length;
      }
      if (data.last && flushed) flushed.resolve();
    };
    let graph;
    try {
      try {
        graph = await audioGraph(context, stream, onSamples);
      } catch (err) {
        if (err.name !== "NotSupportedError") throw err;
        // Firefox will not connect a microphone to a context of another rate: the device's rate then
        await context.close();
        context = newContext(true);
        await load(context);
        graph = await audioGraph(context, stream, onSamples);
        counters.sampleRate = context.sampleRate;
        counters.resampled = context.sampleRate !== SAMPLE_RATE;
      }
    } catch (err) {
      cleanUp();
      throw new CaptureError(`Could not start the audio capture: ${err.name}: ${err.message}`, err);
    }
    started = performance.now();

    let timer = null;
    if (camera) {
      video.srcObject = new MediaStream(stream.getVideoTracks());
      video.muted = true;
      video.hidden = false;
      video.play().catch(() => {}); // muted: allowed; without it no frames reach the canvas
      const canvas = document.createElement("canvas");
      canvas.width = VIDEO_SIZE.width;
      canvas.height = VIDEO_SIZE.height;
      const drawing = canvas.getContext("2d");
      let busy = false;
      const encode = (quality) => new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", quality));
      const grab = async () => {
        if (busy || counters.stopped || video.readyState < 2) return; // HAVE_CURRENT_DATA
        busy = true;
        try {
          const t = since();
          drawing.drawImage(video, 0, 0, VIDEO_SIZE.width, VIDEO_SIZE.height);
          let jpeg = null;
          for (const quality of JPEG_QUALITY) {
            const blob = await encode(quality);
            if (blob && blob.size <= MAX_VIDEO_BYTES) { jpeg = await blob.arrayBuffer(); break; }
          }
          if (counters.stopped) return;
          if (jpeg && onFrame(videoFrame(videoSeq, t, jpeg), VIDEO) !== false) {
            videoSeq += 1;
            counters.videoFrames += 1;
            counters.videoBytes += jpeg.byteLength;
          } else {
            counters.videoSkipped += 1;
          }
        } catch (err) {
          counters.videoSkipped += 1;
        } finally {
          busy = false;
        }
      };
      timer = setInterval(grab, 1000 / VIDEO_FPS);
    }

    for (const track of stream.getTracks()) {
      track.addEventListener("ended", () => {
        if (!counters.stopped) onProblem(`The ${track.kind === "audio" ? "microphone" : "camera"} stopped ` +
          "(unplugged, or access withdrawn).");
      });
    }

    function release() {
      counters.stopped = true;
      clearInterval(timer);
      try {
        graph.source.disconnect();
        graph.node.disconnect();
      } catch (err) {
        // already disconnected
      }
      if (video) {
        video.pause();
        video.srcObject = null;
        video.hidden = true;
      }
      cleanUp();
    }

    return {
      counters,
      get tracksLive() { return stream.getTracks().filter((track) => track.readyState === "live").length; },
      get seconds() { return counters.audioSamples / SAMPLE_RATE; },
      /** The worklet's last samples, then the end-of-audio frame; then the devices are released. */
      async stop() {
        if (counters.stopped) return;
        clearInterval(timer);
        let resolve;
        const last = new Promise((done) => { resolve = done; });
        flushed = { resolve };
        graph.node.port.postMessage("flush");
        await Promise.race([last, new Promise((done) => setTimeout(done, FLUSH_WAIT_MS))]);
        release();
        onFrame(audioFrame(audioSeq, counters.audioSamples / SAMPLE_RATE, new Int16Array(0)), AUDIO);
      },
      /** Release the devices, sending nothing more (the session is gone). */
      abort() {
        if (!counters.stopped) release();
      },
    };
  }

  window.MercCapture = { start, describe, audioFrame, videoFrame, CaptureError, SAMPLE_RATE, AUDIO, VIDEO };
})();

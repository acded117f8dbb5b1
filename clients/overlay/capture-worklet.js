// merc-live join mode: the AudioWorklet that turns the microphone into merc-serve's audio frames.
// It mixes the input down to mono, resamples it to 16 kHz when the AudioContext runs at another rate
// (a low-pass FIR, then linear interpolation), converts it to int16 and posts each frame of 512
// samples (32 ms) to the main thread as an Int16Array (its buffer transferred). Loaded by capture.js
// with audioWorklet.addModule from the page's own origin (script-src 'self').
//
// Messages from the main thread: "flush" posts the samples of the unfinished frame (maybe none)
// with {last: true} and ends the processor.

const TARGET_RATE = 16000;
const FRAME_SAMPLES = 512;
const FIR_TAPS = 63; // odd: a symmetric windowed sinc has a whole-sample delay

function lowpass(cutoff, taps) {
  // A windowed-sinc low-pass (Blackman window) with its cutoff in cycles per input sample.
  const h = new Float32Array(taps);
  const middle = (taps - 1) / 2;
  let sum = 0;
  for (let i = 0; i < taps; i += 1) {
    const x = i - middle;
    const sinc = x === 0 ? 2 * cutoff : Math.sin(2 * Math.PI * cutoff * x) / (Math.PI * x);
    const window = 0.42 - 0.5 * Math.cos((2 * Math.PI * i) / (taps - 1)) + 0.08 * Math.cos((4 * Math.PI * i) / (taps - 1));
    h[i] = sinc * window;
    sum += h[i];
  }
  for (let i = 0; i < taps; i += 1) h[i] /= sum; // unity gain at 0 Hz
  return h;
}

class CaptureProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.step = sampleRate / TARGET_RATE; // input samples per output sample (`sampleRate`: the context's)
    this.fir = this.step > 1 ? lowpass((0.45 * TARGET_RATE) / sampleRate, FIR_TAPS) : null;
    this.history = new Float32Array(FIR_TAPS); // the last FIR_TAPS input samples, a ring
    this.at = 0; // the ring's next write position
    this.previous = 0; // the last (filtered) input sample of the block before
    this.position = 0; // where the next output sample falls, in input samples from this block's start
    this.frame = new Int16Array(FRAME_SAMPLES);
    this.filled = 0;
    this.running = true;
    this.port.onmessage = (message) => {
      if (message.data !== "flush" || !this.running) return;
      const rest = this.frame.slice(0, this.filled);
      this.port.postMessage({ samples: rest, last: true }, [rest.buffer]);
      this.filled = 0;
      this.running = false;
    };
  }

  emit(value) {
    const clipped = Math.max(-1, Math.min(1, value));
    this.frame[this.filled] = Math.round(clipped * 32767);
    this.filled += 1;
    if (this.filled === FRAME_SAMPLES) {
      const full = this.frame;
      this.port.postMessage({ samples: full }, [full.buffer]);
      this.frame = new Int16Array(FRAME_SAMPLES);
      this.filled = 0;
    }
  }

  mono(channels) {
    if (channels.length === 1) return channels[0];
    const mixed = new Float32Array(channels[0].length);
    for (const channel of channels) for (let i = 0; i < mixed.length; i += 1) mixed[i] += channel[i] / channels.length;
    return mixed;
  }

  filter(block) {
    if (this.fir === null) return block;
    const out = new Float32Array(block.length);
    const taps = this.fir.length;
    for (let n = 0; n < block.length; n += 1) {
      this.history[this.at] = block[n];
      this.at = (this.at + 1) % taps;
      let acc = 0;
      for (let k = 0, j = this.at; k < taps; k += 1, j = (j + 1) % taps) acc += this.fir[k] * this.history[j];
      out[n] = acc;
    }
    return out;
  }

  process(inputs) {
    if (!this.running) return false;
    const input = inputs[0];
    if (!input || input.length === 0) return true; // nothing connected (yet): no samples, no frames
    const block = this.mono(input);
    if (this.step === 1) {
      for (let i = 0; i < block.length; i += 1) this.emit(block[i]);
      return true;
    }
    // Resample: output sample k falls at `position` (input samples, from this block's first; -1 is
    // the last sample of the block before), interpolated linearly between its two neighbours.
    const x = this.filter(block);
    while (this.position < x.length - 1) {
      const i = Math.floor(this.position);
      const f = this.position - i;
      const a = i < 0 ? this.previous : x[i];
      this.emit(a + (x[i + 1] - a) * f);
      this.position += this.step;
    }
    this.position -= x.length;
    this.previous = x[x.length - 1];
    return true;
  }
}

registerProcessor("merc-capture", CaptureProcessor);

// Streaming playback of the server's `pcm` format (16-bit little-endian mono) with the Web Audio API,
// and the WAV file of what was received. No UI here: app.js wires it to the page.
"use strict";

(function () {
  // Network chunks can be a few hundred bytes; one AudioBuffer each would mean thousands of nodes,
  // so samples are gathered into buffers of at least this long before they are scheduled.
  const MIN_BUFFER_SECONDS = 0.1;
  // How far ahead of "now" the first buffer (and one after an underrun) starts, so it is not late.
  const START_LEAD_SECONDS = 0.05;

  // Counters for tests and the curious: buffers scheduled, buffers that finished playing, samples seen.
  window.fastdiaPlayed = 0;
  window.fastdiaScheduled = 0;

  class PcmPlayer {
    // `context` is an AudioContext, created once by the page after a user gesture (autoplay rules).
    constructor(context, sampleRate, onStart) {
      this.context = context;
      this.sampleRate = sampleRate;
      this.onStart = onStart;
      this.chunks = [];        // every received byte array, in order: the WAV is built from them
      this.bytes = 0;
      this.odd = null;         // a byte split from its sample's partner by a chunk boundary
      this.pending = [];       // Float32Arrays not yet scheduled
      this.pendingSamples = 0;
      this.nextTime = 0;       // when the next buffer starts, on the context's clock
      this.sources = new Set();
      this.started = false;
    }

    // Takes the next bytes of the stream; plays them once enough are gathered.
    push(bytes) {
      if (!bytes.length) return;
      this.chunks.push(bytes);
      this.bytes += bytes.length;
      let data = bytes;
      if (this.odd !== null) {
        data = new Uint8Array(bytes.length + 1);
        data[0] = this.odd;
        data.set(bytes, 1);
        this.odd = null;
      }
      const whole = data.length - (data.length % 2);
      if (whole < data.length) this.odd = data[data.length - 1];
      const view = new DataView(data.buffer, data.byteOffset, whole);
      const samples = new Float32Array(whole / 2);
      for (let i = 0; i < samples.length; i++) samples[i] = view.getInt16(2 * i, true) / 32768;
      this.pending.push(samples);
      this.pendingSamples += samples.length;
      if (this.pendingSamples >= MIN_BUFFER_SECONDS * this.sampleRate) this.flush();
    }

    // Schedules whatever is gathered, right after the previous buffer (call it at the end of the stream).
    flush() {
      if (!this.pendingSamples) return;
      const buffer = this.context.createBuffer(1, this.pendingSamples, this.sampleRate);
      const channel = buffer.getChannelData(0);
      let at = 0;
      for (const part of this.pending) {
        channel.set(part, at);
        at += part.length;
      }
      this.pending = [];
      this.pendingSamples = 0;
      const source = this.context.createBufferSource();
      source.buffer = buffer;
      source.connect(this.context.destination);
      const now = this.context.currentTime;
      if (this.nextTime < now + 0.005) this.nextTime = now + START_LEAD_SECONDS; // first buffer, or an underrun
      source.start(this.nextTime);
      this.nextTime += buffer.duration;
      this.sources.add(source);
      window.fastdiaScheduled += 1;
      source.onended = () => {
        this.sources.delete(source);
        window.fastdiaPlayed += 1;
      };
      if (!this.started) {
        this.started = true;
        if (this.onStart) this.onStart();
      }
    }

    // Seconds until everything scheduled has played.
    remaining() {
      return Math.max(0, this.nextTime - this.context.currentTime);
    }

    stop() {
      this.pending = [];
      this.pendingSamples = 0;
      for (const source of this.sources) {
        try { source.stop(); } catch (e) { /* not started yet */ }
      }
      this.sources.clear();
    }

    // The received audio as a 16-bit mono WAV file (a trailing odd byte, never a whole sample, is dropped).
    wav() {
      return wavBlob(this.chunks, this.bytes - (this.bytes % 2), this.sampleRate);
    }
  }

  // A canonical 44-byte WAV header followed by `dataBytes` bytes taken from `chunks`.
  function wavBlob(chunks, dataBytes, sampleRate) {
    const header = new ArrayBuffer(44);
    const v = new DataView(header);
    const text = (offset, s) => { for (let i = 0; i < s.length; i++) v.setUint8(offset + i, s.charCodeAt(i)); };
    text(0, "RIFF");
    v.setUint32(4, 36 + dataBytes, true);
    text(8, "WAVE");
    text(12, "fmt ");
    v.setUint32(16, 16, true);             // fmt chunk size
    v.setUint16(20, 1, true);              // PCM
    v.setUint16(22, 1, true);              // mono
    v.setUint32(24, sampleRate, true);
    v.setUint32(28, sampleRate * 2, true); // byte rate
    v.setUint16(32, 2, true);              // block align
    v.setUint16(34, 16, true);             // bits per sample
    text(36, "data");
    v.setUint32(40, dataBytes, true);
    const parts = [header];
    let left = dataBytes;
    for (const c of chunks) {
      if (left <= 0) break;
      parts.push(c.length <= left ? c : c.subarray(0, left));
      left -= c.length;
    }
    return new Blob(parts, { type: "audio/wav" });
  }

  window.FastdiaAudio = { PcmPlayer, wavBlob };
})();

// The page's wiring: pickers filled from the API, the script editor, generation with streamed
// playback (player.js), voice upload, and errors shown as the server words them.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const PCM_RATE = 24000; // the server's `pcm` format, unless it says otherwise in X-Sample-Rate

  let audioContext = null;
  let player = null;
  let controller = null;
  let resultUrl = null;
  let families = {}; // model -> "dia1" | "dia2", from /health once a model is loaded

  // ---- talking to the server ----

  function headers(extra) {
    const h = Object.assign({}, extra || {});
    const key = $("api_key").value.trim();
    if (key) h["Authorization"] = "Bearer " + key;
    return h;
  }

  // fetch, turning "the server could not be reached" into a sentence a person can act on.
  async function call(path, options) {
    try {
      return await fetch(path, options);
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw new Error(`Network error: could not reach the server at ${location.origin} (${err.message})`);
    }
  }

  // The message of an OpenAI-shaped error body, or the status line when the body is something else.
  async function errorMessage(response) {
    const text = await response.text().catch(() => "");
    try {
      const body = JSON.parse(text);
      if (body && body.error && body.error.message) return body.error.message;
    } catch (e) { /* not JSON */ }
    return `${response.status} ${response.statusText}${text ? ": " + text.slice(0, 300) : ""}`;
  }

  async function getJson(path) {
    const response = await call(path, { headers: headers() });
    if (!response.ok) throw new Error(await errorMessage(response));
    return response.json();
  }

  // ---- status and errors ----

  function setStatus(state, text) {
    const el = $("status");
    el.dataset.state = state;
    el.textContent = text || state;
  }

  function showError(message) {
    const el = $("error");
    el.textContent = message;
    el.hidden = false;
  }

  function clearError() {
    const el = $("error");
    el.textContent = "";
    el.hidden = true;
  }

  // ---- pickers ----

  async function loadModels() {
    const list = await getJson("/v1/models");
    const select = $("model");
    const previous = select.value;
    select.replaceChildren(...list.data.map((m) => new Option(m.id, m.id)));
    if (list.data.some((m) => m.id === previous)) select.value = previous;
    try { // families only decide which "max length" field to send; /health is open and needs no key
      const health = await (await fetch("/health")).json();
      for (const [name, info] of Object.entries(health.models || {})) if (info.family) families[name] = info.family;
    } catch (e) { /* fall back to the name */ }
  }

  async function loadVoices(selected) {
    const list = await getJson("/v1/audio/voices");
    const select = $("voice");
    const wanted = selected || select.value;
    const builtin = document.createElement("optgroup");
    builtin.label = "Built-in";
    const saved = document.createElement("optgroup");
    saved.label = "Saved";
    for (const v of list.data) {
      const label = v.builtin ? v.id : `${v.id} (${Number(v.seconds || 0).toFixed(1)} s)`;
      (v.builtin ? builtin : saved).appendChild(new Option(label, v.id));
    }
    select.replaceChildren(builtin, ...(saved.children.length ? [saved] : []));
    if (list.data.some((v) => v.id === wanted)) select.value = wanted;
  }

  async function loadLists() {
    clearError();
    try {
      await Promise.all([loadModels(), loadVoices()]);
    } catch (err) {
      showError(err.message);
    }
  }

  // ---- the script editor ----

  function insertTag(tag) {
    const area = $("script");
    const start = area.selectionStart, end = area.selectionEnd;
    const before = area.value.slice(0, start);
    const text = (before && !/\s$/.test(before) ? " " : "") + tag;
    area.setRangeText(text, start, end, "end");
    area.focus();
  }

  // ---- generation ----

  function family(model) {
    return families[model] || (/dia2/i.test(model) ? "dia2" : "dia1");
  }

  function number(id, parse) {
    const raw = $(id).value.trim();
    return raw === "" ? undefined : parse(raw);
  }

  function requestBody() {
    const model = $("model").value;
    const body = { model, input: $("script").value, voice: $("voice").value, response_format: "pcm",
                   stream_format: "audio" };
    const seed = number("seed", (s) => parseInt(s, 10));
    const temperature = number("temperature", parseFloat);
    const cfg = number("cfg_scale", parseFloat);
    const length = number("max_length", (s) => parseInt(s, 10));
    if (seed !== undefined) body.seed = seed;
    if (temperature !== undefined) body.temperature = temperature;
    if (cfg !== undefined) body.cfg_scale = cfg;
    if (length !== undefined) body[family(model) === "dia2" ? "max_steps" : "max_tokens"] = length;
    return body;
  }

  function resetResult() {
    $("result").hidden = true;
    $("player").removeAttribute("src");
    $("download").href = "#";
    if (resultUrl) URL.revokeObjectURL(resultUrl);
    resultUrl = null;
  }

  function offerResult() {
    if (!player || player.bytes < 2) return;
    resultUrl = URL.createObjectURL(player.wav());
    $("download").href = resultUrl;
    $("download").download = `fastdia-${Date.now()}.wav`;
    $("player").src = resultUrl;
    $("result").hidden = false;
  }

  function seconds() {
    return player ? (player.bytes / 2 / player.sampleRate).toFixed(1) : "0.0";
  }

  async function generate() {
    if (controller) return; // one at a time (Ctrl+Enter can arrive while one runs)
    clearError();
    resetResult();
    if (player) player.stop();
    player = null; // so a failure below cannot offer the previous result as this one's
    // Created on the click (a user gesture), so browsers let it play.
    audioContext = audioContext || new AudioContext();
    await audioContext.resume();
    controller = new AbortController();
    $("generate").disabled = true;
    $("stop").disabled = false;
    setStatus("requesting", "generating...");
    let received = false;
    try {
      const response = await call("/v1/audio/speech", {
        method: "POST", body: JSON.stringify(requestBody()), signal: controller.signal,
        headers: headers({ "Content-Type": "application/json" }),
      });
      if (!response.ok) throw new Error(await errorMessage(response));
      const rate = parseInt(response.headers.get("X-Sample-Rate") || "", 10) || PCM_RATE;
      player = new FastdiaAudio.PcmPlayer(audioContext, rate, () => setStatus("playing", "playing (streaming)..."));
      const reader = response.body.getReader();
      for (;;) {
        let part;
        try {
          part = await reader.read();
        } catch (err) {
          if (err.name === "AbortError") throw err;
          throw new Error(`the audio stream broke off after ${seconds()} s: ${err.message}`);
        }
        if (part.done) break;
        player.push(part.value);
        if (player.started) setStatus("playing", `playing, ${seconds()} s received...`);
      }
      player.flush();
      received = true;
      offerResult();
      setStatus("done", `done: ${seconds()} s of audio`);
    } catch (err) {
      if (err.name === "AbortError") {
        if (player) player.stop();
        offerResult();
        setStatus("stopped", `stopped after ${seconds()} s`);
      } else {
        if (player && !received) offerResult(); // keep what did arrive
        showError(err.message);
        setStatus("error", "failed");
      }
    } finally {
      controller = null;
      $("generate").disabled = false;
      $("stop").disabled = true;
    }
  }

  // ---- voice upload ----

  async function upload(event) {
    event.preventDefault();
    clearError();
    const form = $("upload-form");
    const name = $("voice_name").value.trim();
    $("upload_submit").disabled = true;
    $("upload_status").textContent = "encoding...";
    try {
      const response = await call("/v1/audio/voices", { method: "POST", body: new FormData(form), headers: headers() });
      if (!response.ok) throw new Error(await errorMessage(response));
      const voice = await response.json();
      await loadVoices(voice.id || name);
      $("upload_status").textContent = `saved ${voice.id || name}`;
      form.reset();
    } catch (err) {
      $("upload_status").textContent = "";
      showError(err.message);
    } finally {
      $("upload_submit").disabled = false;
    }
  }

  // ---- wiring ----

  for (const button of document.querySelectorAll("#tags button")) {
    button.addEventListener("click", () => insertTag(button.dataset.insert));
  }
  $("generate").addEventListener("click", generate);
  $("stop").addEventListener("click", () => controller && controller.abort());
  $("upload-form").addEventListener("submit", upload);
  $("settings").addEventListener("submit", (e) => e.preventDefault()); // Enter in a field must not reload the page
  $("api_key").addEventListener("change", loadLists);
  $("script").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) generate();
  });
  setStatus("idle");
  window.fastdiaReady = loadLists();
})();

"""The server's web page in a real browser: headless Chromium driven by Playwright, against a real server.

Debian's `chromium` is used (Playwright's own browser download is not available here); CI installs it
in .ci/run. The tiny random presets make noise: what is checked is the page's behaviour (pickers
filled from the API, streamed playback through Web Audio, the WAV offered at the end, errors shown
as the server words them, voice upload), not the sound.
"""

from __future__ import annotations

import io
import shutil
import struct

import httpx
import numpy as np
import pytest
import soundfile as sf
from playwright.sync_api import expect, sync_playwright

from tests.test_server_openai import DIA1, DIA2, ServerProcess, served

SCRIPT = "[S1] Hi. [S2] Hello."
WAIT_MS = 90_000  # generous: CI machines are small and other tests may run alongside


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with served(tmp_path_factory.mktemp("web")) as srv:
        yield srv


@pytest.fixture(scope="module")
def browser():
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    assert executable, "the browser test needs Debian's chromium (apt-get install chromium; .ci/run does this)"
    with sync_playwright() as p:
        # CI runs as root, where Chromium's sandbox cannot start; the page plays audio without a click in tests.
        b = p.chromium.launch(executable_path=executable,
                              args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(server, browser):
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server.url + "/")
    page.evaluate("window.fastdiaReady")  # the pickers are filled
    yield page
    context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def _wav_in_page(page, url: str) -> bytes:
    data = page.evaluate("async (u) => Array.from(new Uint8Array(await (await fetch(u)).arrayBuffer()))", url)
    return bytes(data)


def _generate(page, model: str, script: str = SCRIPT, length: int | None = None, seed: int = 3) -> None:
    page.select_option("#model", model)
    page.fill("#script", script)
    page.fill("#seed", str(seed))
    page.fill("#max_length", "" if length is None else str(length))
    page.click("#generate")


def test_page_lists_models_and_voices(page):
    models = page.eval_on_selector_all("#model option", "os => os.map(o => o.value)")
    assert models == [DIA1, DIA2]
    voices = page.eval_on_selector_all("#voice option", "os => os.map(o => o.value)")
    assert {"alloy", "nova", "cedar"} <= set(voices)
    expect(page.locator("#error")).to_be_hidden()
    expect(page.locator("#status")).to_have_attribute("data-state", "idle")


def test_tag_buttons_insert_at_the_cursor(page):
    page.fill("#script", "")
    page.click("#tags button:text-is('[S1]')")
    page.keyboard.type("Hi.")
    page.click("#tags button:text-is('(laughs)')")
    assert page.input_value("#script") == "[S1] Hi. (laughs) "


@pytest.mark.parametrize("model,length", [(DIA1, 60), (DIA2, 24)])
def test_generate_plays_while_streaming_then_offers_the_wav(page, server, model, length):
    page.evaluate("window.fastdiaPlayed = 0; window.fastdiaScheduled = 0")
    # Record every status the page shows, to see "playing" come before "done".
    page.evaluate("""() => { window.states = [];
        new MutationObserver(() => window.states.push(document.getElementById('status').dataset.state))
            .observe(document.getElementById('status'), {attributes: true, childList: true}); }""")
    _generate(page, model, length=length)
    expect(page.locator("#status")).to_have_attribute("data-state", "done", timeout=WAIT_MS)
    expect(page.locator("#error")).to_be_hidden()
    states = page.evaluate("window.states")
    assert "playing" in states and states.index("playing") < states.index("done"), states
    assert page.evaluate("window.fastdiaScheduled") > 0
    # The scheduled buffers really play: the AudioContext's clock runs and their `ended` events fire.
    page.wait_for_function("window.fastdiaPlayed > 0", timeout=WAIT_MS)

    link = page.locator("#download")
    expect(link).to_be_visible()
    href = link.get_attribute("href")
    assert href.startswith("blob:")
    assert page.locator("#player").get_attribute("src") == href
    wav = _wav_in_page(page, href)
    assert wav[:4] == b"RIFF" and wav[8:12] == b"WAVE" and wav[36:40] == b"data"
    channels, rate, bits = struct.unpack("<HI", wav[22:28]) + struct.unpack("<H", wav[34:36])
    assert (channels, rate, bits) == (1, 24000, 16)
    (size,) = struct.unpack("<I", wav[40:44])
    assert size > 0 and size == len(wav) - 44

    # The page received the whole stream intact: the same request made directly gives the same samples.
    option = "max_tokens" if model == DIA1 else "max_steps"
    direct = httpx.post(server.url + "/v1/audio/speech", timeout=120,
                        json={"model": model, "input": SCRIPT, "voice": page.input_value("#voice"),
                              "response_format": "pcm", "seed": 3, option: length})
    assert direct.status_code == 200, direct.text
    assert wav[44:] == direct.content


def test_playback_starts_before_the_stream_ends(page):
    # ~7 s of audio, which the tiny model streams over a second or more: the first buffers must have
    # played to their end while later audio was still arriving.
    page.evaluate("""() => { window.log = []; const el = document.getElementById('status');
        new MutationObserver(() => window.log.push([el.dataset.state, el.textContent, window.fastdiaPlayed]))
            .observe(el, {attributes: true, childList: true}); }""")
    _generate(page, DIA1, script="[S1] Hi there, how are you today? [S2] Fine, thanks.", length=600)
    expect(page.locator("#status")).to_have_attribute("data-state", "done", timeout=WAIT_MS)
    log = page.evaluate("window.log")
    received_while_playing = {text for state, text, _ in log if state == "playing"}
    assert len(received_while_playing) >= 2, log  # more audio came after playback had started
    assert log[-1][0] == "done" and log[-1][2] > 0, log  # and some had finished playing by the end
    assert page.evaluate("window.fastdiaScheduled") >= 2


@pytest.mark.parametrize("script", ["hello there, no speaker tag", ""])
def test_bad_script_shows_the_servers_message(page, server, script):
    _generate(page, DIA1, length=60)  # a result first: a failure must not offer it again
    expect(page.locator("#status")).to_have_attribute("data-state", "done", timeout=WAIT_MS)
    expect(page.locator("#result")).to_be_visible()

    _generate(page, DIA1, script=script, length=60)
    error = page.locator("#error")
    expect(error).to_be_visible(timeout=WAIT_MS)
    expect(page.locator("#status")).to_have_attribute("data-state", "error")
    r = httpx.post(server.url + "/v1/audio/speech", timeout=60,
                   json={"model": DIA1, "input": script, "voice": "alloy", "response_format": "pcm"})
    assert r.status_code == 400
    expect(error).to_have_text(r.json()["error"]["message"])
    assert page.get_attribute("#error", "role") == "alert"
    expect(page.locator("#result")).to_be_hidden()

    # The next good request clears it.
    _generate(page, DIA1, length=60)
    expect(page.locator("#status")).to_have_attribute("data-state", "done", timeout=WAIT_MS)
    expect(error).to_be_hidden()


def test_network_error_is_shown(page):
    page.route("**/v1/audio/speech", lambda route: route.abort("connectionrefused"))
    _generate(page, DIA1, length=60)
    expect(page.locator("#error")).to_be_visible(timeout=WAIT_MS)
    expect(page.locator("#error")).to_contain_text("Network error")
    expect(page.locator("#status")).to_have_attribute("data-state", "error")


def test_upload_a_voice_then_use_it(page, server):
    buf = io.BytesIO()
    t = np.arange(24000) / 24000
    sf.write(buf, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 24000, format="WAV")
    page.click("#upload summary")
    page.fill("#voice_name", "webvoice")
    page.set_input_files("#voice_audio", files=[{"name": "webvoice.wav", "mimeType": "audio/wav",
                                                 "buffer": buf.getvalue()}])
    page.fill("#voice_transcript", "[S1] A test voice.")
    page.click("#upload_submit")
    expect(page.locator("#upload_status")).to_have_text("saved webvoice", timeout=WAIT_MS)
    expect(page.locator("#error")).to_be_hidden()
    # The picker was refreshed and the new voice is chosen.
    assert "webvoice" in page.eval_on_selector_all("#voice option", "os => os.map(o => o.value)")
    assert page.input_value("#voice") == "webvoice"
    saved = [v["id"] for v in httpx.get(server.url + "/v1/audio/voices").json()["data"] if not v["builtin"]]
    assert "webvoice" in saved

    # Uploading the same name again shows the server's refusal.
    page.fill("#voice_name", "webvoice")
    page.set_input_files("#voice_audio", files=[{"name": "webvoice.wav", "mimeType": "audio/wav",
                                                 "buffer": buf.getvalue()}])
    page.fill("#voice_transcript", "[S1] Again.")
    page.click("#upload_submit")
    expect(page.locator("#error")).to_contain_text("exists", timeout=WAIT_MS)

    _generate(page, DIA2, length=24)
    expect(page.locator("#status")).to_have_attribute("data-state", "done", timeout=WAIT_MS)
    expect(page.locator("#download")).to_be_visible()
    httpx.delete(server.url + "/v1/audio/voices/webvoice")


def test_api_key_field(browser, tmp_path):
    srv = ServerProcess("--model", DIA1, "--api-key", "sekret", "--voices-dir", str(tmp_path / "voices"), tmp=tmp_path)
    try:
        srv.wait_ready()
        context = browser.new_context()
        page = context.new_page()
        page.set_default_timeout(WAIT_MS)
        page.goto(srv.url + "/")
        page.evaluate("window.fastdiaReady")
        # Without the key the pickers cannot be filled, and the page says why.
        expect(page.locator("#error")).to_contain_text("API key")
        assert page.eval_on_selector_all("#model option", "os => os.length") == 0

        page.fill("#api_key", "sekret")
        page.dispatch_event("#api_key", "change")
        expect(page.locator("#model option")).to_have_count(1)
        expect(page.locator("#error")).to_be_hidden()
        _generate(page, DIA1, length=60)
        expect(page.locator("#status")).to_have_attribute("data-state", "done", timeout=WAIT_MS)

        page.fill("#api_key", "wrong")
        _generate(page, DIA1, length=60)
        expect(page.locator("#error")).to_have_text("incorrect API key provided", timeout=WAIT_MS)
        context.close()
    finally:
        srv.stop()

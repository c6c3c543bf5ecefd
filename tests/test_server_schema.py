"""The published OpenAPI document (/openapi.json) describes what the server really does.

In-process (FastAPI's TestClient over the real app with the tiny Dia-1 preset): every route is in
the document, requests that the server takes validate against it, real responses (success and
error) validate against their documented schemas, and the API key scheme is declared.
"""

from __future__ import annotations

import time

import pytest

jsonschema = pytest.importorskip("jsonschema")
pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from fastdia.serve.app import ServerConfig, create_app  # noqa: E402

MODEL = "tiny-random"
KEY = "schema-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    app = create_app(ServerConfig(models=[MODEL], api_key=KEY, voices_dir=str(tmp_path_factory.mktemp("voices"))))
    with TestClient(app) as c:
        deadline = time.monotonic() + 120
        while c.get("/health").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        yield c


@pytest.fixture(scope="module")
def spec(client):
    r = client.get("/openapi.json")  # open, like /health: no key
    assert r.status_code == 200
    return r.json()


def _validator(spec: dict, ref: dict):
    # The document's components become the root's, so "#/components/schemas/X" resolves.
    return jsonschema.Draft202012Validator({**ref, "components": spec["components"]})


def _response_schema(spec, path, method, status, media="application/json"):
    return spec["paths"][path][method]["responses"][str(status)]["content"][media]["schema"]


def test_every_route_is_documented(client, spec):
    documented = {(path, method.upper()) for path, ops in spec["paths"].items() for method in ops}
    for route in client.app.routes:
        methods = getattr(route, "methods", None)
        if not methods or not getattr(route, "include_in_schema", False):
            continue
        path = route.path.replace(":path}", "}")
        for method in methods - {"HEAD", "OPTIONS"}:
            assert (path, method) in documented, (path, method)
    assert {"/v1/audio/speech", "/v1/models", "/v1/audio/voices", "/v1/audio/voices/{name}", "/health",
            "/metrics"} <= set(spec["paths"])
    assert {"SpeechBody", "ErrorResponse", "LiveTextAppend", "LiveSessionUpdate", "ErrorEvent"} <= set(
        spec["components"]["schemas"])
    assert client.get("/docs").headers["content-type"].startswith("text/html")


def test_api_key_scheme_and_errors_are_declared(spec):
    assert spec["components"]["securitySchemes"]["APIKey"] == {**spec["components"]["securitySchemes"]["APIKey"],
                                                                "type": "http", "scheme": "bearer"}
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            if path.startswith("/v1/"):
                assert op["security"] == [{"APIKey": []}], (path, method)
                assert "401" in op["responses"], (path, method)
            assert "422" not in op["responses"]  # bad input is OpenAI's 400 here
    speech = spec["paths"]["/v1/audio/speech"]["post"]
    assert {"200", "400", "401", "413", "429", "503", "504"} <= set(speech["responses"])
    assert "Retry-After" in speech["responses"]["429"]["headers"]
    assert {"audio/mpeg", "audio/wav", "audio/pcm", "text/event-stream"} <= set(speech["responses"]["200"]["content"])


def test_requests_validate_against_the_schema(client, spec):
    body_schema = spec["paths"]["/v1/audio/speech"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    check = _validator(spec, body_schema)
    good = {"model": MODEL, "input": "[S1] Schema check.", "voice": "alloy", "response_format": "wav",
            "seed": 3, "max_tokens": 40, "cfg_scale": 3.0}
    check.validate(good)
    assert client.post("/v1/audio/speech", json=good, headers=AUTH).status_code == 200
    for bad in ({**good, "nope": 1}, {**good, "response_format": "ogg"}, {k: v for k, v in good.items() if k != "input"},
                {**good, "seed": "x"}):
        assert list(check.iter_errors(bad)), bad  # the document refuses it ...
        assert client.post("/v1/audio/speech", json=bad, headers=AUTH).status_code == 400  # ... and so does the server


def test_responses_validate_against_the_schema(client, spec):
    cases = [("/v1/models", "get", client.get("/v1/models", headers=AUTH)),
             ("/v1/audio/voices", "get", client.get("/v1/audio/voices", headers=AUTH)),
             ("/health", "get", client.get("/health")),
             ("/v1/audio/speech", "post", client.post("/v1/audio/speech", json={"model": MODEL}, headers=AUTH)),
             ("/v1/audio/speech", "post", client.post("/v1/audio/speech", json={}, headers={})),
             ("/v1/audio/voices/{name}", "delete", client.delete("/v1/audio/voices/nobody", headers=AUTH)),
             ("/v1/models/{model}", "get", client.get("/v1/models/nothing", headers=AUTH))]
    for path, method, r in cases:
        _validator(spec, _response_schema(spec, path, method, r.status_code)).validate(r.json())
    assert [r.status_code for _, _, r in cases] == [200, 200, 200, 400, 401, 404, 404]

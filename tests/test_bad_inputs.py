"""The bad-input matrix (issue 12) on both APIs: every malformed request is a 4xx in the API's error shape (OpenAI's,
which Ollama clients read too), never a 5xx and never a 200 stream that breaks mid-way, and the server answers a
normal request right after. The fast part runs over the fake engine; the `slow` part over a real `protege serve`."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.net import protege_serve
from tests.test_serve_routes import Env, assert_error

REPO = Path(__file__).resolve().parent.parent
M = "minimal"
U = [{"role": "user", "content": "hello there"}]
SURR = '"a\\ud800b"'  # a lone surrogate, JSON-escaped: valid JSON, not valid Unicode


def chat(**kw) -> dict:
    return {"model": M, "messages": U, **kw}


def gen(**kw) -> dict:
    return {"model": M, "prompt": "hello", "stream": False, **kw}


def deep(n: int) -> bytes:
    head = b'{"model": "minimal", "messages": [{"role": "user", "content": "x"}], "extra": '
    return head + b"[" * n + b"]" * n + b"}"


# (route, body: a dict sent as JSON, or bytes sent raw as application/json, expected status, expected code or None)
C, CO, E, OC, OG, OE = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/api/chat", "/api/generate",
                        "/api/embed")
CASES = {
    # ---------------------------------------------------------------- OpenAI chat
    "chat-not-json": (C, b"{not json", 400, "invalid_request_error"),
    "chat-body-a-list": (C, b"[]", 400, None),
    "chat-body-a-string": (C, b'"hi"', 400, None),
    "chat-invalid-utf8": (C, b'{"model": "minimal", "messages": [{"role": "user", "content": "\xff\xfe"}]}', 400, None),
    "chat-no-model": (C, {"messages": U}, 400, None),
    "chat-model-int": (C, {"model": 5, "messages": U}, 400, None),
    "chat-model-empty": (C, {"model": "", "messages": U}, 400, None),
    "chat-unknown-model": (C, {"model": "gpt-4", "messages": U}, 404, "model_not_found"),
    "chat-no-messages": (C, {"model": M}, 400, None),
    "chat-empty-messages": (C, chat(messages=[]), 400, None),
    "chat-messages-a-string": (C, chat(messages="hi"), 400, None),
    "chat-bad-role": (C, chat(messages=[{"role": "wizard", "content": "x"}]), 400, None),
    "chat-content-int": (C, chat(messages=[{"role": "user", "content": 5}]), 400, None),
    "chat-surrogate-content": (C, ('{"model": "minimal", "messages": [{"role": "user", "content": %s}]}' % SURR)
                               .encode(), 400, None),
    "chat-surrogate-content-stream": (C, ('{"model": "minimal", "stream": true, "messages": [{"role": "user", '
                                          '"content": %s}]}' % SURR).encode(), 400, None),
    "chat-surrogate-model": (C, ('{"model": %s, "messages": [{"role": "user", "content": "x"}]}' % SURR).encode(),
                             400, None),
    "chat-surrogate-utf8-bytes": (C, b'{"model": "minimal", "messages": [{"role": "user", "content": "\xed\xa0\x80"}]}',
                                  400, None),
    "chat-surrogate-in-a-key": (C, ('{"model": "minimal", %s: 1, "messages": [{"role": "user", "content": "x"}]}'
                                    % SURR).encode(), 400, None),
    "chat-surrogate-in-stop": (C, ('{"model": "minimal", "stop": [%s], "messages": [{"role": "user", "content": "x"}]}'
                                   % SURR).encode(), 400, None),
    "chat-deep-nesting": (C, deep(100_000), 400, None),
    "chat-max-tokens-true": (C, chat(max_tokens=True), 400, None),
    "chat-max-tokens-string": (C, chat(max_tokens="5"), 400, None),
    "chat-max-tokens-fraction": (C, chat(max_tokens=2.5), 400, None),
    "chat-max-tokens-zero": (C, chat(max_tokens=0), 400, None),
    "chat-max-tokens-negative": (C, chat(max_tokens=-1), 400, None),
    "chat-max-tokens-huge": (C, chat(max_tokens=10**12), 400, "context_length_exceeded"),
    "chat-max-completion-tokens-true": (C, chat(max_completion_tokens=True), 400, None),
    "chat-n-zero": (C, chat(n=0), 400, None),
    "chat-n-negative": (C, chat(n=-3), 400, None),
    "chat-n-huge": (C, chat(n=10_000), 400, None),
    "chat-n-true": (C, chat(n=True), 400, None),
    "chat-temperature-high": (C, chat(temperature=5), 400, None),
    "chat-temperature-negative": (C, chat(temperature=-0.1), 400, None),
    "chat-temperature-huge": (C, chat(temperature=1e308), 400, None),
    "chat-temperature-nan": (C, b'{"model": "minimal", "temperature": NaN, "messages": [{"role": "user", '
                                b'"content": "x"}]}', 400, None),
    "chat-temperature-infinity": (C, b'{"model": "minimal", "temperature": Infinity, "messages": [{"role": "user", '
                                     b'"content": "x"}]}', 400, None),
    "chat-temperature-string": (C, chat(temperature="hot"), 400, None),
    "chat-temperature-true": (C, chat(temperature=True), 400, None),
    "chat-top-p-zero": (C, chat(top_p=0), 400, None),
    "chat-top-p-above-one": (C, chat(top_p=1.5), 400, None),
    "chat-presence-penalty": (C, chat(presence_penalty=3), 400, None),
    "chat-top-logprobs": (C, chat(top_logprobs=50), 400, None),
    "chat-seed-string": (C, chat(seed="abc"), 400, None),
    "chat-stop-empty-string": (C, chat(stop=""), 400, None),
    "chat-stop-empty-in-list": (C, chat(stop=["", "x"]), 400, None),
    "chat-stop-five": (C, chat(stop=["a", "b", "c", "d", "e"]), 400, None),
    "chat-stop-int": (C, chat(stop=5), 400, None),
    "chat-stream-string": (C, chat(stream="yes"), 400, None),
    "chat-stream-int": (C, chat(stream=1), 400, None),
    "chat-logprobs-string": (C, chat(logprobs="x"), 400, None),
    "chat-rag-string": (C, chat(rag="no"), 400, None),
    "chat-response-format-xml": (C, chat(response_format={"type": "xml"}), 400, None),
    "chat-json-schema-without-schema": (C, chat(response_format={"type": "json_schema"}), 400, None),
    "chat-stream-options-a-list": (C, chat(stream=True, stream_options=[1]), 400, None),
    "chat-context-too-long": (C, chat(messages=[{"role": "user", "content": "word " * 80}]), 400,
                              "context_length_exceeded"),
    "chat-image": (C, chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
                   400, "unsupported_parameter"),
    # ----------------------------------------------------------- OpenAI completions
    "completion-no-prompt": (CO, {"model": M}, 400, None),
    "completion-prompt-int": (CO, {"model": M, "prompt": 5}, 400, None),
    "completion-two-prompts": (CO, {"model": M, "prompt": ["a", "b"]}, 400, "unsupported_parameter"),
    "completion-surrogate": (CO, ('{"model": "minimal", "prompt": %s}' % SURR).encode(), 400, None),
    "completion-surrogate-stream": (CO, ('{"model": "minimal", "stream": true, "prompt": %s}' % SURR).encode(), 400,
                                    None),
    "completion-max-tokens-true": (CO, {"model": M, "prompt": "x", "max_tokens": True}, 400, None),
    "completion-n-zero": (CO, {"model": M, "prompt": "x", "n": 0}, 400, None),
    "completion-logprobs-high": (CO, {"model": M, "prompt": "x", "logprobs": 10}, 400, None),
    "completion-echo-string": (CO, {"model": M, "prompt": "x", "echo": "yes"}, 400, None),
    "completion-stop-empty": (CO, {"model": M, "prompt": "x", "stop": [""]}, 400, None),
    "completion-unknown-model": (CO, {"model": "nope", "prompt": "x"}, 404, "model_not_found"),
    # ------------------------------------------------------------ OpenAI embeddings
    "embeddings-no-input": (E, {"model": M}, 400, None),
    "embeddings-empty-list": (E, {"model": M, "input": []}, 400, None),
    "embeddings-token-ids": (E, {"model": M, "input": [1, 2, 3]}, 400, None),
    "embeddings-too-many": (E, {"model": M, "input": ["x"] * 3000}, 400, None),
    "embeddings-surrogate": (E, ('{"model": "minimal", "input": %s}' % SURR).encode(), 400, None),
    "embeddings-surrogate-in-list": (E, ('{"model": "minimal", "input": ["ok", %s]}' % SURR).encode(), 400, None),
    "embeddings-bad-format": (E, {"model": M, "input": "x", "encoding_format": "hex"}, 400, None),
    "embeddings-dimensions-zero": (E, {"model": M, "input": "x", "dimensions": 0}, 400, None),
    "embeddings-dimensions-true": (E, {"model": M, "input": "x", "dimensions": True}, 400, None),
    "embeddings-unknown-model": (E, {"model": "nope", "input": "x"}, 404, "model_not_found"),
    # ------------------------------------------------------------------ Ollama chat
    "ollama-chat-not-json": (OC, b"{not json", 400, None),
    "ollama-chat-no-model": (OC, {"messages": U}, 400, None),
    "ollama-chat-unknown-model": (OC, {"model": "llama3", "messages": U}, 404, "model_not_found"),
    "ollama-chat-bad-role": (OC, {"model": M, "messages": [{"role": "wizard", "content": "x"}]}, 400, None),
    "ollama-chat-content-int": (OC, {"model": M, "messages": [{"role": "user", "content": 5}]}, 400, None),
    "ollama-chat-messages-a-string": (OC, {"model": M, "messages": "hi"}, 400, None),
    "ollama-chat-surrogate-stream": (OC, ('{"model": "minimal", "messages": [{"role": "user", "content": %s}]}'
                                          % SURR).encode(), 400, None),
    "ollama-chat-surrogate-model": (OC, ('{"model": %s, "messages": [{"role": "user", "content": "x"}]}'
                                         % SURR).encode(), 400, None),
    "ollama-chat-temperature-huge": (OC, {"model": M, "messages": U, "options": {"temperature": 1e308}}, 400, None),
    "ollama-chat-temperature-negative": (OC, {"model": M, "messages": U, "options": {"temperature": -1}}, 400, None),
    "ollama-chat-temperature-nan": (OC, b'{"model": "minimal", "messages": [{"role": "user", "content": "x"}], '
                                        b'"options": {"temperature": NaN}}', 400, None),
    "ollama-chat-top-k-negative": (OC, {"model": M, "messages": U, "options": {"top_k": -5}}, 400, None),
    "ollama-chat-top-k-true": (OC, {"model": M, "messages": U, "options": {"top_k": True}}, 400, None),
    "ollama-chat-top-p-high": (OC, {"model": M, "messages": U, "options": {"top_p": 2}}, 400, None),
    "ollama-chat-num-ctx-zero": (OC, {"model": M, "messages": U, "options": {"num_ctx": 0}}, 400, None),
    "ollama-chat-num-predict-low": (OC, {"model": M, "messages": U, "options": {"num_predict": -3}}, 400, None),
    "ollama-chat-num-predict-true": (OC, {"model": M, "messages": U, "options": {"num_predict": True}}, 400, None),
    "ollama-chat-stop-empty": (OC, {"model": M, "messages": U, "options": {"stop": [""]}}, 400, None),
    "ollama-chat-seed-string": (OC, {"model": M, "messages": U, "options": {"seed": "x"}}, 400, None),
    "ollama-chat-options-a-list": (OC, {"model": M, "messages": U, "options": [1]}, 400, None),
    "ollama-chat-stream-string": (OC, {"model": M, "messages": U, "stream": "yes"}, 400, None),
    "ollama-chat-format-xml": (OC, {"model": M, "messages": U, "format": "xml"}, 400, None),
    "ollama-chat-think": (OC, {"model": M, "messages": U, "think": True}, 400, "unsupported_parameter"),
    "ollama-chat-context-too-long": (OC, {"model": M, "messages": [{"role": "user", "content": "word " * 80}]}, 400,
                                     "context_length_exceeded"),
    # -------------------------------------------------------------- Ollama generate
    "ollama-generate-prompt-int": (OG, gen(prompt=5), 400, None),
    "ollama-generate-surrogate": (OG, ('{"model": "minimal", "prompt": %s}' % SURR).encode(), 400, None),
    "ollama-generate-surrogate-system": (OG, ('{"model": "minimal", "prompt": "x", "system": %s}' % SURR).encode(),
                                         400, None),
    "ollama-generate-temperature-huge": (OG, gen(options={"temperature": 1e308}), 400, None),
    "ollama-generate-top-k-negative": (OG, gen(options={"top_k": -5}), 400, None),
    "ollama-generate-raw-string": (OG, gen(raw="yes"), 400, None),
    "ollama-generate-context": (OG, gen(context=[1, 2]), 400, "unsupported_parameter"),
    "ollama-generate-unknown-model": (OG, {"model": "llama3", "prompt": "x"}, 404, "model_not_found"),
    # ----------------------------------------------------------------- Ollama embed
    "ollama-embed-empty-list": (OE, {"model": M, "input": []}, 400, None),
    "ollama-embed-no-input": (OE, {"model": M}, 400, None),
    "ollama-embed-token-ids": (OE, {"model": M, "input": [1]}, 400, None),
    "ollama-embed-surrogate": (OE, ('{"model": "minimal", "input": %s}' % SURR).encode(), 400, None),
    "ollama-embed-truncate-string": (OE, {"model": M, "input": "x", "truncate": "x"}, 400, None),
    "ollama-embed-unknown-model": (OE, {"model": "nope", "input": "x"}, 404, "model_not_found"),
}
# the normal request that must succeed after each bad one, per route
GOOD = {C: chat(max_tokens=4), CO: {"model": M, "prompt": "hello", "max_tokens": 4}, E: {"model": M, "input": "x"},
        OC: {"model": M, "messages": U, "stream": False, "options": {"num_predict": 4}},
        OG: gen(options={"num_predict": 4}), OE: {"model": M, "input": ["x"]}}


def send(client, route: str, body, headers: dict | None = None):
    if isinstance(body, bytes):
        return client.post(route, content=body, headers={"content-type": "application/json", **(headers or {})})
    return client.post(route, json=body, headers=headers)


def assert_api_error(r, status: int, code: str | None) -> None:
    """The error in its API's shape (Ollama's on /api/*, OpenAI's elsewhere: test_serve_routes.assert_error)."""
    assert r.status_code == status, r.text[:500]
    assert r.headers["content-type"].startswith("application/json"), r.headers["content-type"]
    assert_error(r, status, code)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    env = Env(tmp_path_factory.mktemp("bad-inputs"), max_body_bytes=4_000_000)
    with TestClient(env.app(), raise_server_exceptions=False) as c:
        yield c


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_a_4xx_in_the_error_shape(client, name):
    route, body, status, code = CASES[name]
    assert_api_error(send(client, route, body), status, code)
    ok = send(client, route, GOOD[route])
    assert ok.status_code == 200, ok.text[:300]


def test_chunked_body_over_the_limit_is_413(tmp_path):
    env = Env(tmp_path, max_body_bytes=500)
    with TestClient(env.app()) as c:
        def chunks():
            yield b'{"model": "minimal", "messages": [{"role": "user", "content": "'
            for _ in range(20):
                yield b"x" * 100
            yield b'"}]}'

        r = c.post("/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"})
        assert "content-length" not in r.request.headers  # sent chunked: the limit is checked as it arrives
        assert_api_error(r, 413, "request_too_large")
        r = c.post("/v1/chat/completions", content=iter([json.dumps(chat()).encode()]),
                   headers={"content-type": "application/json"})
        assert r.status_code == 200, r.text  # a chunked body under the limit is served


# ------------------------------------------------------------------------------------------ real server (slow)
SLOW = ["chat-not-json", "chat-surrogate-content", "chat-surrogate-content-stream", "chat-surrogate-model",
        "chat-max-tokens-true", "chat-n-huge", "chat-temperature-nan", "chat-stop-empty-in-list",
        "chat-unknown-model", "chat-context-too-long", "completion-surrogate-stream", "embeddings-empty-list",
        "ollama-chat-surrogate-stream", "ollama-chat-temperature-huge", "ollama-chat-top-k-negative",
        "ollama-generate-surrogate", "ollama-embed-empty-list", "ollama-embed-surrogate"]


@pytest.fixture(scope="module")
def real_server(tmp_path_factory):
    """`protege serve` with no CONFIG argument over a built assistant whose config holds its own API key."""
    pytest.importorskip("llama_cpp")
    from protege.config_file import load_config, save_resolved

    home = tmp_path_factory.mktemp("home")
    cfg = load_config(REPO / "configs" / "minimal.yaml", ["serve.api_keys=[key-minimal]"])
    save_resolved(cfg, home / "assistants" / cfg.name)  # a built assistant of that home: no GGUF, the embedded base
    with protege_serve(home, "--parallel", "2", "--n-ctx", "512", "--threads", "1", "--log-level", "warning") as base:
        yield base


@pytest.mark.slow
def test_bad_inputs_against_a_real_server(real_server):
    auth = {"Authorization": "Bearer key-minimal"}
    with httpx.Client(base_url=real_server, timeout=120) as c:
        assert c.post(C, json=chat(max_tokens=4)).status_code == 401  # the YAML's key holds without a CONFIG
        for name in SLOW:
            route, body, status, code = CASES[name]
            if route in (C, OC) and code == "context_length_exceeded":
                body = {**body, "messages": [{"role": "user", "content": "word " * 600}]}
            assert_api_error(send(c, route, body, auth), status, code)
        big = c.post(C, content=iter([b'{"model": "minimal", "messages": [{"role": "user", "content": "',
                                      b"x" * 2_100_000, b'"}]}']), headers={"content-type": "application/json", **auth})
        assert_api_error(big, 413, "request_too_large")
        for route in (C, OC, OE):
            ok = send(c, route, GOOD[route], auth)
            assert ok.status_code == 200, ok.text[:300]
        assert c.get("/health").status_code == 200

"""`trikern serve` against bad input, over raw HTTP: every case is one OpenAI error object with a 4xx
status naming the parameter, and the server keeps serving. Also the API key, the full queue (429),
the body limit (413) and the command line's own errors.

The module's server runs with --api-key, --max-batch 1 (the one-at-a-time engine), --max-queue 0 and
a small --max-body-bytes, so one request at a time is served and a second one is refused
(tests/test_serve_batch.py has bad requests against the batched engine).
"""
from __future__ import annotations

import socket
import subprocess
import sys

import httpx
import openai
import pytest
from serve_util import ENV, Server, metrics, wait_for

MODEL = "trikern-default"
KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {KEY}"}
LIMIT = 4096
USER = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("serve") / "server.log", "--api-key", KEY, "--max-batch", "1",
               "--max-queue", "0",
               "--max-body-bytes", str(LIMIT))
    yield s
    s.stop()
    assert "Traceback" not in s.log(), s.log()  # no input made the server fail


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=120) as c:
        yield c


def chat(**kw):
    return {"model": MODEL, "messages": USER, "max_tokens": 4, **kw}


def completion(**kw):
    return {"model": MODEL, "prompt": "x", "max_tokens": 4, **kw}


LONG_PROMPT = "def f(x):\n    return x\n" * 60  # well over the embedded model's 256-token context

# (route, body, status, param): a body is a dict (sent as JSON) or bytes (sent as they are)
BAD = [
    ("chat", b'{"messages": [', 400, None),
    ("chat", b"\xff\xfe not utf-8", 400, None),
    ("chat", b"[" * 3000, 400, None),  # nesting past the JSON parser's recursion limit
    ("chat", [1, 2], 400, None),
    ("chat", chat(model="gpt-4o"), 404, "model"),
    ("chat", chat(model=7), 400, "model"),
    ("chat", chat(messages=[]), 400, "messages"),
    ("chat", chat(messages="hi"), 400, "messages"),
    ("chat", chat(messages=None), 400, "messages"),
    ("chat", chat(messages=[{"role": "user"}]), 400, "messages"),
    ("chat", chat(messages=[{"role": "wizard", "content": "hi"}]), 400, "messages"),
    ("chat", chat(messages=[{"role": "user", "content": 5}]), 400, "messages"),
    ("chat", chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
     400, "messages"),
    ("chat", chat(messages=[{"role": "user", "content": LONG_PROMPT}]), 400, "messages"),
    ("chat", chat(max_tokens="8"), 400, "max_tokens"),
    ("chat", chat(max_tokens=-1), 400, "max_tokens"),
    ("chat", chat(max_completion_tokens=2.5), 400, "max_completion_tokens"),
    ("chat", chat(temperature="hot"), 400, "temperature"),
    ("chat", chat(temperature=-1), 400, "temperature"),
    ("chat", chat(top_p=0), 400, "top_p"),
    ("chat", chat(top_p=1.5), 400, "top_p"),
    ("chat", chat(top_k=-3), 400, "top_k"),
    ("chat", chat(seed=-1), 400, "seed"),
    ("chat", chat(seed="s"), 400, "seed"),
    ("chat", chat(n=2), 400, "n"),
    ("chat", chat(n=True), 400, "n"),
    ("chat", chat(stream="yes"), 400, "stream"),
    ("chat", chat(stream=True, stream_options={"include_usage": "yes"}), 400, "stream_options.include_usage"),
    ("chat", chat(stop=5), 400, "stop"),
    ("chat", chat(stop=[""]), 400, "stop"),
    ("chat", chat(mode="fast"), 400, "mode"),
    ("chat", chat(mode="fast", stream=True), 400, "mode"),  # refused before the stream starts
    ("chat", chat(block_size=0), 400, "block_size"),
    ("chat", chat(block_size=10**6, mode="spec-quadratic"), 400, "block_size"),
    ("chat", chat(threshold=2), 400, "threshold"),
    ("chat", chat(logprobs=True), 400, "logprobs"),
    ("chat", chat(tools=[{"type": "function", "function": {"name": "f"}}]), 400, "tools"),
    ("chat", chat(response_format={"type": "json_object"}), 400, "response_format"),
    ("chat", chat(chat_template_kwargs="x"), 400, "chat_template_kwargs"),
    ("completion", b'{"prompt": "x", "temperature": NaN}', 400, "temperature"),
    ("completion", completion(prompt=None), 400, "prompt"),
    ("completion", completion(prompt=5), 400, "prompt"),
    ("completion", completion(prompt=[]), 400, "prompt"),
    ("completion", completion(prompt=["a", "b"]), 400, "prompt"),
    ("completion", completion(prompt=[1, 10**9]), 400, "prompt"),
    ("completion", completion(prompt=[1, 2.5]), 400, "prompt"),
    ("completion", completion(prompt=LONG_PROMPT, stream=True), 400, "prompt"),
    ("completion", completion(echo=True), 400, "echo"),
    ("completion", completion(best_of=3), 400, "best_of"),
    ("completion", completion(max_completion_tokens=-1), 200, None),  # a chat-only field: ignored here
]


@pytest.mark.parametrize("route,body,status,param", BAD, ids=[f"{i}-{b[0]}-{b[3]}" for i, b in enumerate(BAD)])
def test_bad_input_is_one_openai_error(http, route, body, status, param):
    path = "/v1/chat/completions" if route == "chat" else "/v1/completions"
    if status == 200:  # a field this route does not know is ignored, as OpenAI does: the request runs
        assert http.post(path, json=body).status_code == 200
        return
    r = http.post(path, content=body) if isinstance(body, bytes) else http.post(path, json=body)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"] and err["type"]
    assert err["param"] == param, err
    assert "Traceback" not in r.text


def test_errors_name_the_problem_and_the_server_keeps_serving(http):
    r = http.post("/v1/chat/completions", json=chat(messages=[{"role": "user", "content": LONG_PROMPT}]))
    assert r.json()["error"]["code"] == "context_length_exceeded" and "context" in r.json()["error"]["message"]
    assert "top_p" in http.post("/v1/completions", json=completion(top_p=2)).json()["error"]["message"]
    assert http.get("/v1/nowhere").status_code == 404
    assert http.get("/v1/chat/completions").status_code == 405
    assert http.get("/v1/models/gpt-4o").status_code == 404
    ok = http.post("/v1/chat/completions", json=chat())
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["role"] == "assistant"


def test_body_over_the_limit_is_413(http):
    big = {"model": MODEL, "prompt": "x" * (2 * LIMIT)}
    r = http.post("/v1/completions", json=big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

    def chunked():  # no Content-Length: the limit holds while reading
        for _ in range(4):
            yield b" " * (LIMIT // 2)

    r = http.post("/v1/completions", content=chunked())
    assert r.status_code == 413
    assert http.post("/v1/completions", json=completion()).status_code == 200


def test_client_gone_mid_body_is_not_a_server_error(server, http):
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode() +
                     b"\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"prompt\": ")
    assert http.post("/v1/completions", json=completion()).status_code == 200
    # (the module's teardown checks the log: no traceback)


def test_api_key_guards_every_route_but_health(server):
    for path in ("/v1/models", "/metrics"):
        assert httpx.get(server.url + path).status_code == 401
        r = httpx.get(server.url + path, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.post(server.url + "/v1/chat/completions", json=chat()).status_code == 401
    assert httpx.get(server.url + "/v1/models", headers={"Authorization": f"Basic {KEY}"}).status_code == 401
    assert httpx.get(server.url + "/health").status_code == 200
    assert httpx.get(server.url + "/v1/models", headers=AUTH).status_code == 200

    good = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)
    assert good.chat.completions.create(model=MODEL, messages=USER, max_tokens=2).choices[0].message.content is not None
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).models.list()


def test_full_queue_is_429_with_retry_after(server, http):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)
    refused = 'trikern_requests_total{route="/v1/completions",status="429"}'
    before = metrics(server.url, AUTH).get(refused, 0)
    # 200 tokens keep the decoder busy for a while; the two refusals below take milliseconds.
    body = {"model": MODEL, "prompt": "import os\n", "max_tokens": 200, "stream": True}
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as h, \
            h.stream("POST", "/v1/completions", json=body) as running:
        assert running.status_code == 200
        lines = running.iter_lines()  # held: a dropped iterator would close the response (a disconnect)
        assert next(lines).startswith("data: ")  # it is decoding now
        r = http.post("/v1/completions", json=completion())
        with pytest.raises(openai.RateLimitError):
            client.completions.create(model=MODEL, prompt="x", max_tokens=2)
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    assert r.json()["error"]["code"] == "queue_full"
    # the streaming client left: its generation stops and the decoder is free again
    wait_for(server.url, lambda m: m["trikern_running"] == 0, headers=AUTH)
    assert http.post("/v1/completions", json=completion()).status_code == 200
    assert metrics(server.url, AUTH)[refused] == before + 2


def trikern_serve(*args):
    return subprocess.run([sys.executable, "-m", "trikern", "serve", *args], capture_output=True, text=True,
                          env=ENV, timeout=300)


def test_command_line_errors_are_one_line(tmp_path):
    assert "--api-key" in trikern_serve("--help").stdout
    for args, word in ((["--max-queue", "-1"], "--max-queue"), (["--port", "70000"], "--port"),
                       (["--mode", "fast"], "--mode"), (["--model", str(tmp_path / "missing")], "missing")):
        r = trikern_serve(*args)
        assert r.returncode == 2 and word in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)

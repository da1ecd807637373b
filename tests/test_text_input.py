"""Text that cannot be encoded as UTF-8 (issue 18 item 6): a lone UTF-16 surrogate, which JSON's
"\\ud800" escape and Python's surrogateescape (command-line bytes that are not UTF-8) both produce, is
one clear error naming the field on every input path -- Python API (prompt, messages, stop,
template_kwargs), server (400 in OpenAI's error shape, and the server keeps serving) and CLI (exit 2,
no traceback) -- never a tokenizer TypeError or a 500."""
import subprocess
import sys

import httpx
import pytest
import torch
from serve_util import ENV, Server

from trikern.tokenizer import StopStrings, TextEncodingError, check_text, check_texts

BAD = "ab\ud800c"  # the surrogate at character 2


def test_check_text_names_the_field_and_the_character():
    for ok in ("", "plain", "naïve 😀 日本"):
        assert check_text(ok, "prompt") is ok
    with pytest.raises(TextEncodingError, match=r"^prompt: lone surrogate U\+D800 at character 2 cannot be "
                                                r"encoded as UTF-8$"):
        check_text(BAD, "prompt")
    # a byte that is not UTF-8, as Python reads it from argv / stdin (surrogateescape)
    argv_text = b"x\xff".decode("utf-8", "surrogateescape")
    with pytest.raises(ValueError, match=r"^message: lone surrogate U\+DCFF at character 1 .* the byte 0xFF"):
        check_text(argv_text, "message")
    with pytest.raises(ValueError, match=r"^messages\[1\]\.content\[0\]\.text: lone surrogate U\+DFFF at character 0"):
        check_texts([{"role": "user", "content": "hi"},
                     {"role": "user", "content": [{"type": "text", "text": "\udfff"}]}], "messages")
    with pytest.raises(ValueError, match=r"^stop\[1\]: lone surrogate"):
        StopStrings(["ok", BAD])
    with pytest.raises(ValueError, match=r"^stop: lone surrogate"):
        StopStrings(BAD)


@pytest.fixture(scope="module")
def model(chat_ckpt):
    import trikern  # noqa: PLC0415

    return trikern.load(chat_ckpt, dtype=torch.float32)


def test_api_refuses_with_the_field_named(model):
    user = {"role": "user", "content": "hi"}
    cases = [
        (lambda: model.generate(BAD, max_new_tokens=2), r"^prompt: lone surrogate U\+D800 at character 2 "),
        (lambda: model.stream(BAD, max_new_tokens=2), r"^prompt: lone surrogate"),  # at the call
        (lambda: model.generate("hi", stop=["\n", BAD], max_new_tokens=2), r"^stop\[1\]: lone surrogate"),
        (lambda: model.chat([user, {"role": "user", "content": BAD}], max_new_tokens=2),
         r"^messages\[1\]\.content: lone surrogate U\+D800 at character 2 "),
        (lambda: model.chat_stream([{"role": "user", "content": [{"type": "text", "text": BAD}]}], max_new_tokens=2),
         r"^messages\[0\]\.content\[0\]\.text: lone surrogate"),
        (lambda: model.chat([{"role": "user\ud800", "content": "hi"}], max_new_tokens=2), r"^messages\[0\]\.role: "),
        (lambda: model.chat([user], stop=BAD, max_new_tokens=2), r"^stop: lone surrogate"),
        (lambda: model.chat([user], template_kwargs={"name": BAD}, max_new_tokens=2),
         r"^template_kwargs\.name: lone surrogate"),
    ]
    for call, pattern in cases:
        with pytest.raises(TextEncodingError, match=pattern):
            call()
    assert model.generate("hi", max_new_tokens=2).token_ids  # the model is unharmed


@pytest.fixture(scope="module")
def server(chat_ckpt, tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("serve-text") / "server.log", "--model", str(chat_ckpt), "--dtype", "float32")
    yield s
    s.stop()
    assert "Traceback" not in s.log(), s.log()


# (route, raw JSON body with the \ud800 escape, the field the message names, param)
RAW = [
    ("completions", '{"prompt": "ab\\ud800c"}', "prompt", "prompt"),
    ("completions", '{"prompt": ["ab\\ud800c"], "stream": true}', "prompt[0]", "prompt"),
    ("completions", '{"prompt": "hi", "stop": "\\ud800"}', "stop", "stop"),
    ("completions", '{"prompt": "hi", "stop": ["x", "\\ud800"]}', "stop[1]", "stop"),
    ("chat/completions", '{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "ab\\ud800c"}]}',
     "messages[1].content", "messages"),
    ("chat/completions", '{"messages": [{"role": "user", "content": [{"type": "text", "text": "\\udc80"}]}], '
     '"stream": true}', "messages[0].content[0].text", "messages"),
    ("chat/completions", '{"messages": [{"role": "user", "content": "hi"}], "stop": ["\\ud800"]}', "stop[0]", "stop"),
    ("chat/completions", '{"messages": [{"role": "user", "content": "hi"}], "chat_template_kwargs": {"x": "\\ud800"}}',
     "chat_template_kwargs.x", "chat_template_kwargs"),
]


@pytest.mark.parametrize("route,body,field,param", RAW, ids=[f"{r[0]}-{r[2]}" for r in RAW])
def test_server_answers_400_naming_the_field(server, route, body, field, param):
    assert "\\ud" in body  # the JSON escape itself goes over the wire, not UTF-8 bytes
    with httpx.Client(base_url=server.url, timeout=120) as http:
        body = body[:-1] + ', "max_tokens": 2}'
        r = http.post(f"/v1/{route}", content=body.encode("ascii"), headers={"content-type": "application/json"})
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["param"] == param and err["type"] == "invalid_request_error", err
        assert err["message"].startswith(f"{field}: lone surrogate U+D"), err
        assert "cannot be encoded as UTF-8" in err["message"]
        good = {"prompt": "hi"} if route == "completions" else {"messages": [{"role": "user", "content": "hi"}]}
        ok = http.post(f"/v1/{route}", json={**good, "max_tokens": 2})  # and the server goes on
        assert ok.status_code == 200, ok.text


def cli(*args: bytes, stdin: bytes = b""):
    return subprocess.Popen([sys.executable.encode(), b"-m", b"trikern", b"generate", b"--dtype", b"float32",
                             b"--max-new-tokens", b"2", *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**ENV, "LC_ALL": "C.UTF-8"})  # stdin: surrogateescape


def test_cli_prints_the_error_and_exits_2(chat_ckpt):
    model = str(chat_ckpt).encode()
    runs = [  # started together: each loads the model once
        (cli(b"--model", model, b"ab\xffc"), b"prompt: lone surrogate U+DCFF at character 2"),
        (cli(b"--model", model, b"-"), b"prompt: lone surrogate U+DCFF at character 1"),
    ]
    runs[1][0].stdin.write(b"x\xff\n")
    for p, expect in runs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 2, err
        assert expect in err and b"the byte 0x" in err and b"Traceback" not in err, err
        assert len(err.decode().strip().splitlines()) == 1, err  # one line

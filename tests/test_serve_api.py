"""`trikern serve` through the official `openai` client: every mode, streaming, the next chat turn's
prefix reuse, concurrency, clients that leave mid-stream or while queued, and /metrics. One real
server (embedded model, CPU) per module.

Answers are compared with the same request run in this process through the Model API: the server
must be a thin layer that changes nothing (greedy, and seeded sampling, are reproducible on CPU).
Both run in fp32. Each reuses the cached prefix of its own previous request, and the server's
requests are not the local model's calls: a reused prefix (its K/V from another pass) rounds a
little differently from a fresh prefill, which in bf16 now and then flips a near-tie token.
"""
from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import torch
from serve_util import metrics, openai_client, serving, wait_for

import trikern
from trikern.decode import MODES, STEP_MODES

MODEL = "trikern-default"
CHAT = [{"role": "system", "content": "You write Python."}, {"role": "user", "content": "def add(a, b):"}]
PROMPT = "import os\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from serving(tmp_path_factory.mktemp("serve") / "server.log", "--dtype", "float32")


@pytest.fixture(scope="module")
def client(server):
    return openai_client(server, timeout=300)


@pytest.fixture(scope="module")
def local():
    return trikern.load(dtype=torch.float32)


def trikern_usage(usage) -> dict:
    return usage.model_extra["trikern"]


def test_models_lists_the_served_model_and_its_modes(client):
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL]
    assert models[0].model_extra["trikern"]["modes"] == list(MODES)
    assert client.models.retrieve(MODEL).id == MODEL


@pytest.mark.parametrize("mode", MODES)
def test_chat_in_every_mode_equals_the_model_api(client, local, mode):
    r = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=8, extra_body={"mode": mode})
    ref = local.chat(CHAT, mode=mode, max_new_tokens=8)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.model == MODEL
    choice = r.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == ref.text
    assert choice.finish_reason == ref.finish_reason
    u = r.usage
    assert (u.prompt_tokens, u.completion_tokens) == (ref.stats["prompt_tokens"], len(ref.token_ids))
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    assert u.prompt_tokens_details.cached_tokens >= 0
    t = trikern_usage(u)
    assert t["mode"] == ref.stats["mode"]
    if mode in STEP_MODES:  # auto picks strategies by measured speed: its schedule varies from run to run
        assert t["forwards"] == ref.stats["forwards"] and t["tokens_per_forward"] == ref.stats["tokens_per_forward"]
        assert {int(k): v for k, v in t["acceptance_lengths"].items()} == ref.stats["acceptance_lengths"]


@pytest.mark.parametrize("mode", MODES)
def test_streamed_completion_in_every_mode_equals_the_model_api(client, local, mode):
    chunks = list(client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, stream=True,
                                            stream_options={"include_usage": True}, extra_body={"mode": mode}))
    ref = local.generate(PROMPT, mode=mode, max_new_tokens=8)
    assert len({c.id for c in chunks}) == 1 and all(c.object == "text_completion" for c in chunks)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == ref.text
    *body, last = chunks
    assert last.choices == [] and last.usage.completion_tokens == len(ref.token_ids)
    assert trikern_usage(last.usage)["mode"] == ref.stats["mode"]
    assert all(c.usage is None for c in body)
    assert [c.choices[0].finish_reason for c in body] == [None] * (len(body) - 1) + [ref.finish_reason]


def test_streamed_chat_opens_with_the_role_and_matches_the_answer(client):
    full = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=10)
    chunks = list(client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=10, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == full.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == full.choices[0].finish_reason
    assert all(c.usage is None for c in chunks)  # no include_usage: no usage chunk


def test_token_id_prompt_stop_strings_and_seeded_sampling(client, local):
    ids = local.tokenizer.encode(PROMPT, add_special_tokens=True)
    by_ids = client.completions.create(model=MODEL, prompt=ids, max_tokens=8)
    assert by_ids.choices[0].text == local.generate(ids, max_new_tokens=8).text

    stopped = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=16, stop=["\n"])
    ref = local.generate(PROMPT, max_new_tokens=16, stop=["\n"])
    assert stopped.choices[0].text == ref.text and "\n" not in ref.text
    assert stopped.choices[0].finish_reason == ref.finish_reason == "stop"

    kw = dict(temperature=0.8, top_p=0.9, seed=3)
    a, b = (client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=12, extra_body={"mode": "spec-linear"},
                                      **kw).choices[0].text for _ in range(2))
    assert a == b == local.generate(PROMPT, mode="spec-linear", max_new_tokens=12, **kw).text


def test_next_chat_turn_reuses_the_prefix_and_answers_the_same(client, local):
    first = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=8)
    turn = [*CHAT, {"role": "assistant", "content": first.choices[0].message.content},
            {"role": "user", "content": "and subtract?"}]
    second = client.chat.completions.create(model=MODEL, messages=turn, max_tokens=8,
                                            extra_body={"mode": "spec-linear"})
    assert second.usage.prompt_tokens_details.cached_tokens > 0
    fresh = local.chat(turn, mode="spec-linear", max_new_tokens=8, reuse_prefix=False)
    assert fresh.stats["cached_tokens"] == 0
    assert second.choices[0].message.content == fresh.text


REQUESTS = [
    ("chat", "ar", "def add(a, b):"),
    ("completion", "spec-quadratic", "import sys\n"),
    ("completion", "diffusion", "class Point:\n"),
    ("chat", "spec-linear", "sort a list"),
]


def run(client, req):
    kind, mode, text = req
    if kind == "chat":
        r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": text}],
                                           max_tokens=12, extra_body={"mode": mode})
        return r.choices[0].message.content, r.usage
    r = client.completions.create(model=MODEL, prompt=text, max_tokens=12, extra_body={"mode": mode})
    return r.choices[0].text, r.usage


def test_concurrent_clients_get_the_answers_of_sequential_ones(client):
    sequential = [run(client, req)[0] for req in REQUESTS]
    with ThreadPoolExecutor(len(REQUESTS)) as pool:
        concurrent = list(pool.map(lambda req: run(client, req), REQUESTS))
    assert [text for text, _ in concurrent] == sequential
    # one decoder: requests that arrived together waited their turn
    assert max(trikern_usage(u)["queue_s"] for _, u in concurrent) > 0.01


def test_client_leaving_mid_stream_stops_its_generation(server, client):
    expected = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8).choices[0].text
    before = metrics(server.url)
    # 200 tokens take seconds on CPU; the client reads two events and hangs up.
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 200, "stream": True}
    with httpx.Client(base_url=server.url, timeout=60) as h, h.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200
        events = [line for line in itertools.islice(r.iter_lines(), 4) if line.startswith("data: ")]
        assert len(events) == 2
    after = wait_for(server.url, lambda m: m["trikern_cancelled_total"] > before["trikern_cancelled_total"]
                     and m["trikern_running"] == 0)
    assert after["trikern_cancelled_total"] == before["trikern_cancelled_total"] + 1
    # the generation stopped at the first text piece after the disconnect, not at its token budget
    assert after["trikern_pieces_after_cancel_total"] - before["trikern_pieces_after_cancel_total"] <= 1
    key = 'trikern_generated_tokens_total{mode="ar"}'
    assert after.get(key, 0) == before.get(key, 0)  # only finished generations count
    # the next request is unaffected
    again = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8)
    assert again.choices[0].text == expected
    assert trikern_usage(again.usage)["queue_s"] < 5


def test_client_leaving_while_queued_frees_its_place(server):
    before = metrics(server.url)
    # the slowest mode here (200 tokens in ~3 s; AR's take under 1 s): still running when the other leaves
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 200, "stream": True, "mode": "spec-quadratic",
            "block_size": 16}
    with httpx.Client(base_url=server.url, timeout=60) as h, h.stream("POST", "/v1/completions", json=body) as r:
        lines = r.iter_lines()  # held: dropping it would close the response
        assert next(lines).startswith("data: ")  # the decoder is busy with this one
        with pytest.raises(httpx.ReadTimeout):  # a second client gives up while waiting in the queue
            httpx.post(server.url + "/v1/completions", json={"prompt": PROMPT, "max_tokens": 8}, timeout=0.3)
        m = wait_for(server.url, lambda m: m["trikern_cancelled_total"] > before["trikern_cancelled_total"])
        assert m["trikern_queue_depth"] == 0 and m["trikern_running"] == 1
    after = wait_for(server.url, lambda m: m["trikern_running"] == 0)
    assert after["trikern_cancelled_total"] == before["trikern_cancelled_total"] + 2


def test_metrics_count_requests_tokens_and_timings(server, client):
    before = metrics(server.url)
    r = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, extra_body={"mode": "spec-quadratic"})
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, top_p=0)
    after = metrics(server.url)

    def delta(key):
        return after.get(key, 0) - before.get(key, 0)

    assert delta('trikern_requests_total{route="/v1/completions",status="200"}') == 1
    assert delta('trikern_requests_total{route="/v1/completions",status="400"}') == 1
    mode = '{mode="spec-quadratic"}'
    assert delta(f"trikern_generated_tokens_total{mode}") == r.usage.completion_tokens
    assert delta(f"trikern_prompt_tokens_total{mode}") == r.usage.prompt_tokens
    assert delta(f"trikern_forwards_total{mode}") == trikern_usage(r.usage)["forwards"]
    assert delta(f"trikern_time_to_first_token_seconds_count{mode}") == 1
    assert delta(f"trikern_decode_tokens_per_second_count{mode}") == 1
    assert delta(f"trikern_tokens_per_forward_sum{mode}") == pytest.approx(trikern_usage(r.usage)["tokens_per_forward"])
    assert after["trikern_queue_depth"] == 0 and after["trikern_running"] == 0

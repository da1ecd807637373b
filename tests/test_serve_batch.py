"""`trikern serve --max-batch 4`: concurrent requests decode together (serve/batch_engine.py), and each
answer is the one the request gets alone -- text, finish_reason, usage -- whatever the others do:
different lengths, budgets, sampling settings and stop strings in one batch, streaming, a client
that leaves mid-stream (its slot goes to the next request), a bad request while a batch runs, the
next turn of a chat finding its own cache region, and the metrics of it all.

A real server (the tiny chat checkpoint, fp32, CPU) through the `openai` client; the references are
the same requests through the Model API in this process with `reuse_prefix=False` (a fresh prefill).
"""
from __future__ import annotations

import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch
from decode_helpers import prompts, run
from serve_util import ENV, metrics, openai_client, serving, wait_for
from util import random_model

import trikern
from trikern.batch import BatchDecoder

MODEL = "chat"


@pytest.fixture(scope="module")
def server(chat_ckpt, tmp_path_factory):
    yield from serving(tmp_path_factory.mktemp("serve-batch") / "server.log", "--model", str(chat_ckpt),
                       "--dtype", "float32", "--max-batch", "4", "--served-model-name", MODEL)


@pytest.fixture(scope="module")
def client(server):
    return openai_client(server, timeout=120)


@pytest.fixture(scope="module")
def local(chat_ckpt):
    return trikern.load(chat_ckpt, dtype=torch.float32)


def ref(local, prompt, **kw):
    return local.generate(prompt, reuse_prefix=False, **kw)


def delta(before, after, key):
    return after.get(key, 0) - before.get(key, 0)


def complete(client, prompt, max_tokens, **kw):
    extra = {k: kw.pop(k) for k in ("mode", "block_size", "top_k", "tree_nodes") if k in kw}
    return client.completions.create(model=MODEL, prompt=prompt, max_tokens=max_tokens, extra_body=extra, **kw)


def stream_in_thread(url, body, out: dict, key):
    """POST a streaming completion and read it to the end in a thread: out[key] = (text, finish time)."""
    def read():
        text = []
        with httpx.Client(base_url=url, timeout=120) as h, h.stream("POST", "/v1/completions", json=body) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    import json  # noqa: PLC0415
                    choices = json.loads(line[6:])["choices"]
                    text += [c["text"] for c in choices]
        out[key] = ("".join(text), time.monotonic())
    t = threading.Thread(target=read)
    t.start()
    return t


# Different prompt lengths and budgets, greedy and seeded sampling (top_p, top_k), a stop string.
MIXED = [("the cat sat on", 120, {}), ("def f(x):", 7, {}), ("one two three four five six seven", 90,
         dict(temperature=0.8, top_p=0.9, seed=3)), ("hello", 60, dict(temperature=1.0, top_k=20, seed=5)),
         ("x", 150, {})]


def test_concurrent_requests_equal_each_alone(server, client, local):
    stop = ref(local, "hello there", max_new_tokens=40).text[6:8]  # a stop string that does occur
    items = MIXED + [("hello there", 40, dict(stop=[stop]))]
    refs = [ref(local, p, max_new_tokens=n, **kw) for p, n, kw in items]
    assert refs[-1].finish_reason == "stop" and stop not in refs[-1].text
    before = metrics(server.url)
    with ThreadPoolExecutor(len(items)) as pool:
        outs = list(pool.map(lambda it: complete(client, it[0], it[1], **it[2]), items))
    after = metrics(server.url)
    for r, o in zip(refs, outs):
        assert o.choices[0].text == r.text
        assert o.choices[0].finish_reason == r.finish_reason
        assert (o.usage.prompt_tokens, o.usage.completion_tokens) == (r.stats["prompt_tokens"], len(r.token_ids))
        assert o.usage.model_extra["trikern"]["mode"] == "ar"
    # They decoded together: steps carried several sequences, the tokens were counted as they came.
    steps = delta(before, after, "trikern_batch_size_count")
    assert steps > 0 and delta(before, after, "trikern_batch_size_sum") > 1.5 * steps
    assert delta(before, after, 'trikern_batch_size_bucket{le="1"}') < steps
    assert delta(before, after, 'trikern_batch_tokens_total{mode="ar"}') >= sum(len(r.token_ids) for r in refs)
    assert delta(before, after, 'trikern_generated_tokens_total{mode="ar"}') == sum(len(r.token_ids) for r in refs)
    assert delta(before, after, "trikern_batch_prefill_tokens_total") > 0
    # ... and by batch size: every token once, and time spent at several users at once
    by_size = {k: delta(before, after, k) for k in after if k.startswith("trikern_batch_step_tokens_total{")}
    assert sum(by_size.values()) == delta(before, after, 'trikern_batch_tokens_total{mode="ar"}')
    seconds = {k.split('"')[1]: delta(before, after, k) for k in after if k.startswith("trikern_batch_step_seconds_total{")}
    assert all(v >= 0 for v in seconds.values()) and any(v > 0 for n, v in seconds.items() if int(n) >= 2)
    assert after["trikern_running"] == 0 and after["trikern_queue_depth"] == 0


@pytest.mark.parametrize("mode,block_size", [("spec-linear", 4), ("spec-quadratic", 3), ("diffusion", 4)])
def test_every_batched_mode_equals_alone(client, local, mode, block_size):
    items = [("the cat sat on", 30), ("def f(x):", 9), ("one two three four", 45)]
    refs = [ref(local, p, max_new_tokens=n, mode=mode, block_size=block_size) for p, n in items]
    with ThreadPoolExecutor(len(items)) as pool:
        outs = list(pool.map(lambda it: complete(client, it[0], it[1], mode=mode, block_size=block_size), items))
    for r, o in zip(refs, outs):
        t = o.usage.model_extra["trikern"]
        assert o.choices[0].text == r.text and t["mode"] == mode
        assert t["forwards"] == r.stats["forwards"]
        if mode != "diffusion":
            assert {int(k): v for k, v in t["acceptance_lengths"].items()} == r.stats["acceptance_lengths"]


def test_streams_in_one_batch_equal_their_answers(client, local):
    items = [("the cat sat on", 50), ("def f(x):", 12), ("x", 80)]
    refs = [ref(local, p, max_new_tokens=n) for p, n in items]

    def streamed(it):
        chunks = list(client.completions.create(model=MODEL, prompt=it[0], max_tokens=it[1], stream=True,
                                                stream_options={"include_usage": True}))
        return chunks

    with ThreadPoolExecutor(len(items) + 1) as pool:
        plain = pool.submit(complete, client, "hello", 30)
        outs = list(pool.map(streamed, items))
    assert plain.result().choices[0].text == ref(local, "hello", max_new_tokens=30).text
    for r, chunks in zip(refs, outs):
        *body, last = chunks
        assert "".join(c.choices[0].text for c in body) == r.text
        assert len(body) > 2 and body[-1].choices[0].finish_reason == r.finish_reason
        assert last.usage.completion_tokens == len(r.token_ids)


def test_client_leaving_frees_its_slot_for_the_queue(server, local):
    """Four long streams fill the batch, a fifth request queues; one stream's client hangs up after two
    events: the queued request takes its slot and finishes while the other three still decode."""
    before = metrics(server.url)
    # No EOS before 300; as long as the context allows (480), so that the streams outlast the queued
    # request's arrival on a loaded machine (under `make test` at 300 they once ended first).
    long = [("the cat sat on", 480), ("one two three four", 480), ("def f(x):", 480)]
    done: dict = {}
    threads = [stream_in_thread(server.url, {"prompt": p, "max_tokens": n, "stream": True}, done, i)
               for i, (p, n) in enumerate(long)]
    body = {"prompt": "a b c", "max_tokens": 480, "stream": True}
    with httpx.Client(base_url=server.url, timeout=60) as h, h.stream("POST", "/v1/completions", json=body) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")
        wait_for(server.url, lambda m: m["trikern_running"] == 4)
        queued = {}
        t_q = threading.Thread(target=lambda: queued.setdefault(
            "r", httpx.post(server.url + "/v1/completions", json={"prompt": "x", "max_tokens": 20}, timeout=120)))
        t_q.start()
        m = wait_for(server.url, lambda m: m["trikern_queue_depth"] == 1)
        assert m["trikern_queue_depth"] == 1 and m["trikern_running"] == 4  # waiting for a slot
    t_q.join()
    t_answered = time.monotonic()
    for t in threads:
        t.join()
    assert queued["r"].status_code == 200
    assert queued["r"].json()["choices"][0]["text"] == ref(local, "x", max_new_tokens=20).text
    assert all(done[i][1] > t_answered for i in done)  # it did not wait for the batch to drain
    for i, (p, n) in enumerate(long):
        assert done[i][0] == ref(local, p, max_new_tokens=n).text
    after = wait_for(server.url, lambda m: m["trikern_running"] == 0)
    assert delta(before, after, "trikern_cancelled_total") == 1
    assert delta(before, after, "trikern_pieces_after_cancel_total") <= 1


def test_bad_requests_during_a_batch_are_4xx_and_it_goes_on(server, client, local):
    done: dict = {}
    t = stream_in_thread(server.url, {"prompt": "the cat sat on", "max_tokens": 480, "stream": True}, done, 0)
    wait_for(server.url, lambda m: m["trikern_running"] == 1)
    bad = [(dict(top_p=0), "top_p"), (dict(mode="fast"), "mode"), (dict(tree_nodes=3), "tree_nodes"),
           (dict(prompt="word " * 600), "prompt"), (dict(stop=[""]), "stop"), (dict(max_tokens=-1), "max_tokens")]
    answered = []
    for extra, param in bad:
        r = httpx.post(server.url + "/v1/completions", json={"prompt": "hi", "max_tokens": 4, **extra}, timeout=60)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
        answered.append(time.monotonic())
    t.join()
    assert answered[0] < done[0][1]  # refused while the batch decoded, not after it
    assert done[0][0] == ref(local, "the cat sat on", max_new_tokens=480).text
    assert complete(client, "hello", 5).choices[0].text == ref(local, "hello", max_new_tokens=5).text


def test_next_turn_prefills_only_its_new_tokens(server, client, local):
    tok = local.tokenizer
    first = tok.encode("the first turn of a conversation about cats")
    r1 = complete(client, first, 12)
    done1 = ref(local, first, max_new_tokens=12)
    assert r1.choices[0].text == done1.text
    second = first + done1.token_ids + tok.encode(" and now about dogs")
    before = metrics(server.url)
    r2 = complete(client, second, 12)
    after = metrics(server.url)
    cached = len(first) + len(done1.token_ids) - 1  # all but the last token generated: it was never fed
    assert r2.usage.prompt_tokens_details.cached_tokens == cached
    assert delta(before, after, "trikern_batch_prefill_tokens_total") == len(second) - cached
    assert r2.choices[0].text == ref(local, second, max_new_tokens=12).text


def test_next_chat_turn_in_another_mode_reuses_the_prefix(client, local):
    chat = [{"role": "user", "content": "tell me about the cat"}]
    a = client.chat.completions.create(model=MODEL, messages=chat, max_tokens=10)
    turn = [*chat, {"role": "assistant", "content": a.choices[0].message.content},
            {"role": "user", "content": "and the dog?"}]
    b = client.chat.completions.create(model=MODEL, messages=turn, max_tokens=10,
                                       extra_body={"mode": "spec-linear", "block_size": 4})
    # the prefixes kept by the AR batch went over to the spec-linear one
    assert b.usage.prompt_tokens_details.cached_tokens >= len(local.chat_prompt(chat))
    assert b.choices[0].message.content == local.chat(turn, mode="spec-linear", block_size=4, max_new_tokens=10,
                                                      reuse_prefix=False).text


def test_auto_requests_batch_together(server, client, local):
    """auto is batched as a mode of its own (trikern/batch/auto.py): lossless, so greedy text is AR's."""
    alone = complete(client, "the cat sat on", 12, mode="auto")
    assert alone.usage.model_extra["trikern"]["mode"] == "auto"
    assert alone.choices[0].text == ref(local, "the cat sat on", max_new_tokens=12, mode="auto").text
    done: dict = {}
    t = stream_in_thread(server.url, {"prompt": "one two three four", "max_tokens": 300, "stream": True,
                                      "mode": "auto"}, done, 0)
    wait_for(server.url, lambda m: m["trikern_running"] == 1)
    joined = complete(client, "def f(x):", 12, mode="auto")
    assert 0 not in done  # it joined the running batch
    t.join()
    assert joined.usage.model_extra["trikern"]["mode"] == "auto"
    assert joined.choices[0].text == ref(local, "def f(x):", max_new_tokens=12, mode="ar").text
    assert done[0][0] == ref(local, "one two three four", max_new_tokens=300, mode="ar").text


def test_another_mode_waits_for_the_batch_to_drain(server, client, local):
    """One (mode, block size) per batch, first come first served: a spec-linear request arriving while an
    AR batch runs starts when it has drained, and an AR request behind it waits for it too."""
    done: dict = {}
    t = stream_in_thread(server.url, {"prompt": "the cat sat on", "max_tokens": 300, "stream": True}, done, 0)
    wait_for(server.url, lambda m: m["trikern_running"] == 1)
    def timed(*a, **kw):
        return complete(client, *a, **kw), time.monotonic()

    with ThreadPoolExecutor(2) as pool:
        spec = pool.submit(timed, "def f(x):", 20, mode="spec-linear", block_size=4)
        wait_for(server.url, lambda m: m["trikern_queue_depth"] == 1)
        ar = pool.submit(timed, "a b c", 5)  # could join the AR batch, but comes after the spec-linear one
        (spec, t_spec), (ar, t_ar) = spec.result(), ar.result()
    t.join()
    assert done[0][1] < t_spec < t_ar
    assert spec.choices[0].text == ref(local, "def f(x):", max_new_tokens=20, mode="spec-linear", block_size=4).text
    assert ar.choices[0].text == ref(local, "a b c", max_new_tokens=5).text
    assert done[0][0] == ref(local, "the cat sat on", max_new_tokens=300).text


def test_draft_trees_run_alone(client, local):
    r = complete(client, "the cat sat on", 12, mode="spec-linear", block_size=4, tree_nodes=3)
    t = r.usage.model_extra["trikern"]
    assert t["tree_nodes"] == 3
    assert r.choices[0].text == ref(local, "the cat sat on", max_new_tokens=12, mode="spec-linear", block_size=4,
                                    tree_nodes=3).text


def test_no_cuda_graphs_serves_batched_and_alone(chat_ckpt, tmp_path, local):
    """`--no-cuda-graphs` (vLLM's --enforce-eager) reaches both paths: concurrent requests batch, a tree
    request runs alone, each answer the one it gets alone. (On a CPU nothing is graphed either way:
    this checks that the setting rides every request without refusing one.)"""
    from serve_util import Server

    s = Server(tmp_path / "server.log", "--model", str(chat_ckpt), "--dtype", "float32", "--max-batch", "2",
               "--served-model-name", MODEL, "--no-cuda-graphs")
    try:
        c = openai_client(s, timeout=120)
        items = [("the cat sat on", 20, {}), ("def f(x):", 9, {}), ("hello", 12, dict(mode="spec-linear",
                 block_size=4, tree_nodes=3))]
        with ThreadPoolExecutor(len(items)) as pool:
            outs = list(pool.map(lambda it: complete(c, it[0], it[1], **it[2]), items))
        for (p, n, kw), o in zip(items, outs):
            assert o.choices[0].text == ref(local, p, max_new_tokens=n, **kw).text
    finally:
        s.stop()
    assert "Traceback" not in s.log(), s.log()


def test_batch_decoder_reuses_a_kept_prefix_in_any_mode():
    """BatchDecoder(reuse_prefix=True): a prompt extending a finished sequence's prompt + output goes to
    its region and prefills only the rest; a decoder of another mode adopts the kept prefixes."""
    m = random_model(seed=4, backend="cpu")
    p, other = prompts(2, 160, seed=9, lengths=(9, 6))
    dec = BatchDecoder(m, 2, "ar", reuse_prefix=True)
    a = dec.add(p, max_new_tokens=8)
    dec.add(other, max_new_tokens=5)
    list(dec.run())
    assert sorted(dec.kept) == [0, 1] and dec.kept[0] == (p + a.tokens)[:len(p) + len(a.tokens) - 1]
    p2 = p + a.tokens + [7, 8, 9]
    fed = dec.prefill_tokens
    c = dec.add(p2, max_new_tokens=8)
    list(dec.run())
    assert c.stats.cached_tokens == len(p) + len(a.tokens) - 1 and dec.prefill_tokens - fed == 4
    assert c.tokens == run(m, p2, "ar", max_new_tokens=8)[0]
    spec = BatchDecoder(m, 2, "spec-linear", 4, reuse_prefix=True)
    spec.adopt(dec)
    p3 = p2 + c.tokens + [3]
    d = spec.add(p3, max_new_tokens=8, block_size=4)
    list(spec.run())
    assert d.stats.cached_tokens == len(p2) + len(c.tokens) - 1
    assert d.tokens == run(m, p3, "spec-linear", max_new_tokens=8, block_size=4)[0]
    with pytest.raises(ValueError, match="reuse_prefix=1"):
        BatchDecoder(m, 2, reuse_prefix=1)


def test_max_batch_option_is_checked():
    r = subprocess.run([sys.executable, "-m", "trikern", "serve", "--max-batch", "0"], capture_output=True, text=True,
                       env=ENV, timeout=120)
    assert r.returncode == 2 and "--max-batch" in r.stderr and "Traceback" not in r.stderr

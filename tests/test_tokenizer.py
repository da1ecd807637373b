"""Tokenizer, chat templates (vs HF transformers), streaming detokenization and stop strings.

Tokenizers are trained here on a few KB of mixed-script text, so multi-byte characters really are
split across tokens: a byte-level BPE (GPT-2 / Qwen style) and a Metaspace BPE with byte fallback
(Llama / Mistral style).
"""
from __future__ import annotations

import json
import random
from datetime import datetime

import pytest
from tokenizers import Tokenizer as BackendTokenizer
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from trikern.tokenizer import (
    ChatTemplateError,
    IncrementalDetokenizer,
    StopStrings,
    Tokenizer,
    TokenizerError,
    render_chat_template,
)

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>", "<|mask|>"]
FFFD = "\ufffd"

LINES = [
    "The quick brown fox jumps over the lazy dog while the cat watches.",
    "Un café crème, s'il vous plaît: naïve façade, déjà vu, Ærøskøbing, Straße, Ångström.",
    "机器学习是人工智能的一个分支。我们今天学习中文分词和字节对编码。",
    "日本語のテキストも少し含めます。東京は大きな都市です。",
    "Emoji time 😀🎉👍🏽 and a family 👨\u200d👩\u200d👧 plus flags 🇫🇷🇯🇵 and math ∑∫√≈≠.",
    "Numbers 12345 67890, code `def f(x): return x ** 2`, and symbols #@$%^&*().",
    "Ελληνικά γράμματα και русский текст для проверки многобайтовых символов.",
]
CORPUS = [f"{line} {i}" for i in range(6) for line in LINES]
TEXTS = LINES + ["mixed 中文 and café 😀 then END", "  leading spaces\nand\ttabs  ", "", "a"]

CHATML_THINK = """{% for message in messages %}
{% if message.role == 'system' %}
<|im_start|>system
{{ message.content }}
{% if tools %}
# Tools
{% for tool in tools %}
{{ tool | tojson }}
{% endfor %}
{% endif %}
<|im_end|>
{% elif message.role == 'assistant' %}
<|im_start|>assistant
{% if message.reasoning_content is defined %}
<think>
{{ message.reasoning_content | trim }}
</think>

{% endif %}
{{ message.content }}<|im_end|>
{% else %}
<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endif %}
{% endfor %}
{% if add_generation_prompt %}
<|im_start|>assistant
{% if enable_thinking is defined and enable_thinking is false %}
<think>

</think>

{% endif %}
{% endif %}"""

LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

ALTERNATE_MSG = "Conversation roles must alternate user/assistant/user/assistant/..."
MISTRAL_RAISE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('" + ALTERNATE_MSG + "') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}"
)

# loop controls, namespace, the {% generation %} tag and whitespace control together
CONTROLS = """{%- set ns = namespace(last_user=-1) %}
{%- for m in messages %}
    {%- if m.role == 'user' %}{% set ns.last_user = loop.index0 %}{% endif %}
{%- endfor %}
{% for m in messages %}
    {% if m.role == 'system' %}{% continue %}{% endif %}
    {% if loop.index0 > 6 %}{% break %}{% endif %}
    [{{ loop.index0 }}{{ '*' if loop.index0 == ns.last_user else '' }}] {{ m.role | upper }}:
    {% if m.role == 'assistant' %}
{% generation %}{{ m.content }}{{ eos_token }}{% endgeneration %}
    {% else %}
{{ m.content }}
    {% endif %}
{% endfor %}
{% if add_generation_prompt %}[next] ASSISTANT:{% endif %}"""

CONVERSATIONS = [
    [{"role": "user", "content": "Bonjour, ça va? 你好 😀"}],
    [
        {"role": "system", "content": "Tu es un assistant « utile »."},
        {"role": "user", "content": "What is 2+2?"},
        # the older field name: templates read `reasoning_content`, HF aliases it
        {"role": "assistant", "content": "4", "reasoning": "  2+2 is 4, trivially.  "},
        {"role": "user", "content": "  and 中文?  "},
    ],
    [  # None-valued keys are dropped before rendering, as HF does
        {"role": "user", "content": "Quel temps?", "name": None},
        {"role": "assistant", "content": None,
         "tool_calls": [{"type": "function", "function": {"name": "météo", "arguments": {"ville": "Paris"}}}]},
        {"role": "tool", "content": "22°C"},
    ],
]
TOOLS = [{"type": "function", "function": {"name": "météo", "description": "Donne la météo 🌦",
                                            "parameters": {"z": 1, "a": [1, 2]}}}]


def _train_byte_level() -> str:
    tok = BackendTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer=trainer)
    return tok.to_str()


def _train_metaspace_byte_fallback() -> str:
    tok = BackendTokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    # a small alphabet leaves CJK and emoji to the byte-fallback tokens
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"], limit_alphabet=60,
                                  show_progress=False)
    tok.train_from_iterator(CORPUS, trainer=trainer)
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    first = max(vocab.values()) + 1
    vocab.update({f"<0x{b:02X}>": first + b for b in range(256)})
    return json.dumps(spec)


@pytest.fixture(scope="module")
def byte_level_json() -> str:
    return _train_byte_level()


@pytest.fixture(scope="module")
def metaspace_json() -> str:
    return _train_metaspace_byte_fallback()


BASE_CONFIG = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": None, "eos_token": "<|im_end|>",
               "pad_token": "<|endoftext|>", "chat_template": CHATML_THINK}


def make_folder(path, tokenizer_json: str, config: dict | None = None, jinja: str | None = None,
                post_processor=None):
    path.mkdir(parents=True, exist_ok=True)
    if post_processor is not None:
        spec = json.loads(tokenizer_json)
        spec["post_processor"] = json.loads(post_processor.__getstate__())
        tokenizer_json = json.dumps(spec)
    (path / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
    if config is not None:
        (path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    if jinja is not None:
        (path / "chat_template.jinja").write_text(jinja, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory, byte_level_json):
    return make_folder(tmp_path_factory.mktemp("bl"), byte_level_json, BASE_CONFIG)


@pytest.fixture(scope="module")
def tok(folder) -> Tokenizer:
    return Tokenizer.from_dir(folder, eos_token_ids=[3, 2])


@pytest.fixture(scope="module")
def ms_tok(tmp_path_factory, metaspace_json) -> Tokenizer:
    path = make_folder(tmp_path_factory.mktemp("ms"), metaspace_json,
                       {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True})
    return Tokenizer.from_dir(path)


def hf_tokenizer(path):
    from transformers import AutoTokenizer  # test-only reference

    return AutoTokenizer.from_pretrained(str(path))


# ---------------------------------------------------------------------------------------------
# encode / decode
# ---------------------------------------------------------------------------------------------
def test_round_trip_byte_level(tok):
    for text in TEXTS:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
    # the vocabulary is small enough that multi-byte characters are really split across tokens
    split = [i for i in tok.encode(LINES[2] + LINES[4]) if FFFD in tok.decode([i])]
    assert split


def test_round_trip_metaspace_byte_fallback(ms_tok):
    for text in TEXTS:
        if not text.startswith(" "):  # Metaspace decoding drops one leading space by design
            assert ms_tok.decode(ms_tok.encode(text)) == text
    assert any(ms_tok.decode([i]) == FFFD for i in ms_tok.encode(LINES[2]))


def test_special_tokens_and_ids(tok):
    ids = tok.encode("<|im_start|>user\nhi<|im_end|><think>x</think><|mask|>")
    for s in SPECIALS[1:]:
        assert tok.token_id(s) in ids
    assert tok.decode(ids, skip_special_tokens=True) == "user\nhix"
    assert tok.eos_token == "<|im_end|>" and tok.bos_token is None
    assert tok.eos_token_ids == tuple(sorted({tok.token_id("<|im_end|>"), 3, 2}))
    assert tok.token_id("no such token") is None
    assert tok.vocab_size == 700


def test_legacy_special_tokens_map(tmp_path, byte_level_json):
    path = make_folder(tmp_path, byte_level_json, {"eos_token": None})
    (path / "special_tokens_map.json").write_text(json.dumps(
        {"eos_token": {"content": "<|im_end|>", "special": True}, "pad_token": "<|endoftext|>"}), encoding="utf-8")
    tok = Tokenizer.from_dir(path)
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_ids == (tok.token_id("<|im_end|>"),)
    assert tok.special_tokens == {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}


def test_encode_decode_match_hf(tmp_path, byte_level_json, metaspace_json):
    bos_first = processors.TemplateProcessing(single="<|endoftext|> $A", pair="<|endoftext|> $A $B",
                                              special_tokens=[("<|endoftext|>", 0)])
    bos_config = {**BASE_CONFIG, "bos_token": {"__type": "AddedToken", "content": "<|endoftext|>", "special": True}}
    cases = [  # the post-processor of tokenizer.json decides, not the config's add_bos_token (HF 5)
        ("plain", byte_level_json, BASE_CONFIG, None),
        ("post_processor", byte_level_json, bos_config, bos_first),
        ("post_processor_wins", byte_level_json, {**bos_config, "add_bos_token": False}, bos_first),
        ("metaspace", metaspace_json, {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>",
                                       "eos_token": "</s>", "unk_token": "<unk>"}, None),
    ]
    added_bos = 0
    for name, spec, config, post in cases:
        path = make_folder(tmp_path / name, spec, config, post_processor=post)
        ours, hf = Tokenizer.from_dir(path), hf_tokenizer(path)
        for text in TEXTS:
            for special in (False, True):
                ids = ours.encode(text, add_special_tokens=special)
                assert ids == hf.encode(text, add_special_tokens=special), (name, text, special)
                for skip in (False, True):
                    assert ours.decode(ids, skip_special_tokens=skip) == hf.decode(
                        ids, skip_special_tokens=skip, clean_up_tokenization_spaces=False), (name, text)
            added_bos += ours.encode(text, add_special_tokens=True)[:1] == [ours.bos_token_id]
    assert added_bos == 2 * len(TEXTS)  # exactly the two post-processor cases prepend bos


def test_config_flags_without_post_processor(tmp_path, byte_level_json):
    # tokenizer.json without a post-processor: the config's add_bos_token / add_eos_token are honoured
    config = {**BASE_CONFIG, "bos_token": "<|endoftext|>", "add_bos_token": True, "add_eos_token": True}
    tok = Tokenizer.from_dir(make_folder(tmp_path, byte_level_json, config))
    plain = tok.encode("café 中文")
    assert tok.encode("café 中文", add_special_tokens=True) == [tok.token_id("<|endoftext|>"), *plain,
                                                             tok.token_id("<|im_end|>")]
    no_bos = {**BASE_CONFIG, "add_bos_token": True}  # no bos token defined: nothing to add
    assert Tokenizer.from_dir(make_folder(tmp_path / "nb", byte_level_json, no_bos)).encode(
        "x", add_special_tokens=True) == tok.encode("x")


# ---------------------------------------------------------------------------------------------
# chat templates: identical to HF
# ---------------------------------------------------------------------------------------------
def _hf_render(hf, messages, **kw):
    return hf.apply_chat_template(messages, tokenize=False, **kw)


@pytest.mark.parametrize("template,config_extra", [
    (CHATML_THINK, {}),
    (LLAMA3, {"bos_token": "<|endoftext|>"}),
    (MISTRAL_RAISE, {"bos_token": "<|endoftext|>"}),
    (CONTROLS, {}),
])
def test_chat_template_matches_hf(tmp_path, byte_level_json, template, config_extra):
    path = make_folder(tmp_path, byte_level_json, {**BASE_CONFIG, **config_extra, "chat_template": template})
    ours, hf = Tokenizer.from_dir(path), hf_tokenizer(path)
    conversations = CONVERSATIONS
    if template == MISTRAL_RAISE:
        conversations = [CONVERSATIONS[0], [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                                            {"role": "user", "content": "ç 中"}]]
    rendered = set()
    for messages in conversations:
        for gen in (False, True):
            for extra in ({}, {"enable_thinking": False}, {"enable_thinking": True}):
                text = ours.apply_chat_template(messages, add_generation_prompt=gen, **extra)
                assert text == _hf_render(hf, messages, add_generation_prompt=gen, **extra)
                rendered.add(text)
        with_tools = ours.apply_chat_template(messages, tools=TOOLS)
        assert with_tools == _hf_render(hf, messages, tools=TOOLS, add_generation_prompt=True)
    # the conversation changes the text, and so does add_generation_prompt where the template reads it
    assert len(rendered) >= (2 if template == MISTRAL_RAISE else 4)


def test_chatml_template_content(tok):
    on = tok.apply_chat_template(CONVERSATIONS[1], add_generation_prompt=True)
    off = tok.apply_chat_template(CONVERSATIONS[1], add_generation_prompt=False)
    assert on == off + "<|im_start|>assistant\n"
    assert "<think>\n2+2 is 4, trivially.\n</think>\n\n4<|im_end|>" in on
    no_think = tok.apply_chat_template(CONVERSATIONS[0], enable_thinking=False)
    assert no_think.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    tools = tok.apply_chat_template(CONVERSATIONS[1], tools=TOOLS)
    assert json.dumps(TOOLS[0], ensure_ascii=False) in tools  # tojson: no escaping, key order kept
    ids = tok.encode(on)
    assert ids.count(tok.token_id("<|im_start|>")) == 5 and tok.decode(ids) == on


def test_raise_exception_gives_chat_template_error(tmp_path, byte_level_json):
    path = make_folder(tmp_path, byte_level_json, {**BASE_CONFIG, "bos_token": "<|endoftext|>",
                                                   "chat_template": MISTRAL_RAISE})
    bad = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(ChatTemplateError) as err:
        Tokenizer.from_dir(path).apply_chat_template(bad)
    assert ALTERNATE_MSG in str(err.value) and "tokenizer_config.json" in str(err.value)
    from jinja2 import TemplateError

    with pytest.raises(TemplateError, match="must alternate"):  # HF rejects the same conversation
        _hf_render(hf_tokenizer(path), bad)


def test_strftime_now_and_variables():
    text = render_chat_template("{{ strftime_now('%Y') }}|{{ bos_token }}|{{ documents }}|{{ x }}",
                                [{"role": "user", "content": "hi"}], special_tokens={"bos_token": "<s>"}, x=3)
    year = datetime.now().year
    assert text in {f"{y}|<s>|None|3" for y in (year, year + 1)}


def test_chat_template_jinja_takes_precedence(tmp_path, byte_level_json):
    jinja = "FILE{% for m in messages %}[{{ m.content }}]{% endfor %}"
    path = make_folder(tmp_path, byte_level_json, BASE_CONFIG, jinja=jinja)
    msgs = CONVERSATIONS[0]
    text = Tokenizer.from_dir(path).apply_chat_template(msgs)
    assert text == "FILE[" + msgs[0]["content"] + "]"
    assert text == _hf_render(hf_tokenizer(path), msgs, add_generation_prompt=True)


def test_additional_chat_templates_folder(tmp_path, byte_level_json):
    path = make_folder(tmp_path, byte_level_json, BASE_CONFIG, jinja="D{{ messages[0].content }}")
    (path / "additional_chat_templates").mkdir()
    (path / "additional_chat_templates" / "tool_use.jinja").write_text("T{{ tools[0].type }}", encoding="utf-8")
    ours, hf = Tokenizer.from_dir(path), hf_tokenizer(path)
    msgs = [{"role": "user", "content": "ü"}]
    assert ours.apply_chat_template(msgs) == "Dü" == _hf_render(hf, msgs)
    assert ours.apply_chat_template(msgs, tools=TOOLS) == "Tfunction" == _hf_render(hf, msgs, tools=TOOLS)


def test_list_form_chat_template(tmp_path, byte_level_json):
    listed = [{"name": "default", "template": "D{{ messages[0].content }}"},
              {"name": "tool_use", "template": "T{{ tools | length }}{{ messages[0].content }}"}]
    path = make_folder(tmp_path, byte_level_json, {**BASE_CONFIG, "chat_template": listed})
    ours, hf = Tokenizer.from_dir(path), hf_tokenizer(path)
    msgs = [{"role": "user", "content": "é"}]
    assert ours.apply_chat_template(msgs) == "Dé" == _hf_render(hf, msgs)
    assert ours.apply_chat_template(msgs, tools=TOOLS) == "T1é" == _hf_render(hf, msgs, tools=TOOLS)
    assert ours.apply_chat_template(msgs, template_name="tool_use", tools=[]) == "T0é"
    with pytest.raises(ChatTemplateError, match=r"no chat template named 'nope'; available: \['default', 'tool_use'\]"):
        ours.apply_chat_template(msgs, template_name="nope")

    no_default = make_folder(tmp_path / "nd", byte_level_json, {**BASE_CONFIG, "chat_template": listed[1:]})
    with pytest.raises(ChatTemplateError, match="none named 'default'"):
        Tokenizer.from_dir(no_default).apply_chat_template(msgs)


def test_no_chat_template_names_files(tmp_path, byte_level_json):
    config = {k: v for k, v in BASE_CONFIG.items() if k != "chat_template"}
    path = make_folder(tmp_path, byte_level_json, config)
    with pytest.raises(ChatTemplateError) as err:
        Tokenizer.from_dir(path).apply_chat_template(CONVERSATIONS[0])
    msg = str(err.value)
    assert "no chat template found" in msg and "chat_template.jinja" in msg and "tokenizer_config.json" in msg


@pytest.mark.parametrize("messages,fragment", [
    ("hello", "messages must be a list of dicts"),
    ([], "messages is empty"),
    ([{"role": "user", "content": "a"}, "b"], r"messages\[1\] must be a dict"),
    ([{"content": "a"}], r"messages\[0\]\['role'\] must be a non-empty string, got None"),
    ([{"role": "user", "content": "a"}, {"role": "assistant"}], r"messages\[1\] \(role 'assistant'\) has no 'content'"),
    ([{"role": "user", "content": 5}], r"messages\[0\]\['content'\] must be a string or a list"),
])
def test_bad_messages(tok, messages, fragment):
    with pytest.raises(ValueError, match=fragment):
        tok.apply_chat_template(messages)


def test_bad_templates(tmp_path, byte_level_json):
    path = make_folder(tmp_path, byte_level_json, {**BASE_CONFIG, "chat_template": "{% for m in messages %}"})
    with pytest.raises(ChatTemplateError, match=r"tokenizer_config.json field 'chat_template'.*syntax error at line 1"):
        Tokenizer.from_dir(path).apply_chat_template(CONVERSATIONS[0])
    with pytest.raises(ChatTemplateError, match="rendering the chat template from <string> failed"):
        render_chat_template("{{ messages[0].content.nope() }}", CONVERSATIONS[0])
    with pytest.raises(ChatTemplateError, match="raised an error: boom"):
        render_chat_template("{{ raise_exception('boom') }}", CONVERSATIONS[0])
    with pytest.raises(ValueError, match=r"tools\[0\] must be a JSON-schema dict"):
        render_chat_template("x", CONVERSATIONS[0], tools=[print])


# ---------------------------------------------------------------------------------------------
# loading errors
# ---------------------------------------------------------------------------------------------
def test_loading_errors(tmp_path, byte_level_json):
    with pytest.raises(TokenizerError, match="not a directory"):
        Tokenizer.from_dir(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TokenizerError, match="no tokenizer.json"):
        Tokenizer.from_dir(tmp_path / "empty")
    corrupt = make_folder(tmp_path / "corrupt", byte_level_json[: len(byte_level_json) // 2])
    with pytest.raises(TokenizerError, match=r"corrupt/tokenizer.json: cannot load"):
        Tokenizer.from_dir(corrupt)
    bad_json = make_folder(tmp_path / "badcfg", byte_level_json)
    (bad_json / "tokenizer_config.json").write_text('{"eos_token": ', encoding="utf-8")
    with pytest.raises(TokenizerError, match=r"tokenizer_config.json: invalid JSON at line 1"):
        Tokenizer.from_dir(bad_json)
    bad_utf8 = make_folder(tmp_path / "utf8", byte_level_json, BASE_CONFIG)
    (bad_utf8 / "chat_template.jinja").write_bytes(b"{{ x }}\xff")
    with pytest.raises(TokenizerError, match=r"utf8/chat_template.jinja: cannot read"):
        Tokenizer.from_dir(bad_utf8)
    cases = [
        ({"eos_token": 11}, r"field 'eos_token': expected a token string or an object"),
        ({"eos_token": "<|nope|>"}, r"field 'eos_token' is '<\|nope\|>', which is not in tokenizer.json"),
        ({"chat_template": [{"name": "x"}]}, r"field 'chat_template'\[0\]: expected an object with 'name'"),
        ({"chat_template": 3}, r"field 'chat_template': expected a string or a list"),
    ]
    for i, (config, fragment) in enumerate(cases):
        with pytest.raises(TokenizerError, match=fragment):
            Tokenizer.from_dir(make_folder(tmp_path / f"c{i}", byte_level_json, config))
    with pytest.raises(TokenizerError, match=r"eos_token_ids\[1\] must be a non-negative int, got -1"):
        Tokenizer.from_dir(make_folder(tmp_path / "e", byte_level_json, BASE_CONFIG), eos_token_ids=[2, -1])


def test_bad_ids(tok):
    with pytest.raises(TokenizerError, match=r"token ids\[1\] = 700: not a token id \(the tokenizer has ids 0..699\)"):
        tok.decode([1, 700])
    with pytest.raises(TokenizerError, match=r"token ids\[0\] = 'a'"):
        IncrementalDetokenizer(tok).feed(["a"])
    with pytest.raises(TokenizerError, match=r"token ids\[0\] = 1.5"):
        tok.decode([1.5])
    import numpy as np
    import torch

    ids = tok.encode("café 中文")
    detok = tok.detokenizer()
    text = detok.feed(np.int64(ids[0])) + detok.feed(torch.tensor(ids[1:])) + detok.flush()
    assert text == tok.decode(np.array(ids)) == "café 中文"
    with pytest.raises(TypeError, match="text must be a str"):
        tok.encode(b"bytes")


# ---------------------------------------------------------------------------------------------
# streaming detokenization
# ---------------------------------------------------------------------------------------------
def _stream(tokenizer, ids, chunks, **kw):
    detok = IncrementalDetokenizer(tokenizer, **kw)
    pieces, i = [], 0
    for n in chunks:
        pieces.append(detok.feed(ids[i:i + n]))
        i += n
    assert i == len(ids)
    pieces.append(detok.flush())
    return pieces


def _chunkings(n, seed):
    rng = random.Random(seed)
    yield [1] * n
    for _ in range(3):
        sizes = []
        while sum(sizes) < n:
            sizes.append(min(rng.randint(1, 4), n - sum(sizes)))
        yield sizes


@pytest.mark.parametrize("which", ["byte_level", "metaspace"])
def test_stream_multibyte_text(tok, ms_tok, which):
    tokenizer = tok if which == "byte_level" else ms_tok
    for seed, text in enumerate(TEXTS):
        ids = tokenizer.encode(text)
        full = tokenizer.decode(ids)
        for chunks in _chunkings(len(ids), seed):
            pieces = _stream(tokenizer, ids, chunks)
            assert "".join(pieces) == full
            assert not any(FFFD in p for p in pieces), (text, chunks, pieces)
    # one token at a time really does hold back: some fed token produced no text
    ids = tokenizer.encode(LINES[2])
    assert "" in _stream(tokenizer, ids, [1] * len(ids))[:-1]


def test_stream_keeps_word_spaces_metaspace(ms_tok):
    sentence = "The quick brown fox jumps over the lazy dog"
    ids = ms_tok.encode(sentence)
    pieces = _stream(ms_tok, ids, [1] * len(ids))
    assert "".join(pieces) == sentence
    # word-initial tokens stream with their space although a lone decode of them loses it
    spaced = [k for k in range(1, len(ids)) if pieces[k].startswith(" ")]
    assert len(spaced) >= 3 and all(ms_tok.decode([ids[k]]) == pieces[k][1:] for k in spaced)
    # with the prompt as context the first generated word keeps its leading space
    prompt, gen = ids[:spaced[0]], ids[spaced[0]:]
    detok = ms_tok.detokenizer(context_ids=prompt)
    text = "".join(detok.feed(i) for i in gen) + detok.flush()
    assert text == sentence[len(ms_tok.decode(prompt)):] and text.startswith(" ")


def test_stream_random_ids_and_special_tokens(tok, ms_tok):
    rng = random.Random(0)
    for tokenizer in (tok, ms_tok):
        for seed in range(4):
            ids = [rng.randrange(tokenizer.vocab_size) for _ in range(60)]  # arbitrary, often invalid UTF-8
            for skip in (False, True):
                for chunks in _chunkings(len(ids), seed):
                    pieces = _stream(tokenizer, ids, chunks, skip_special_tokens=skip)
                    assert "".join(pieces) == tokenizer.decode(ids, skip_special_tokens=skip)


def test_stream_flush_incomplete_character(tok):
    ids = tok.encode("中")
    assert len(ids) > 1  # split across byte tokens
    detok = tok.detokenizer()
    assert detok.feed(ids[:-1]) == ""
    tail = detok.flush()
    assert tail == tok.decode(ids[:-1]) and tail.endswith(FFFD)
    assert detok.token_ids == ids[:-1]


def test_stream_long_generation(tok):
    ids = tok.encode(" ".join(LINES * 3))
    detok = tok.detokenizer()
    text = "".join(detok.feed(i) for i in ids) + detok.flush()
    assert text == tok.decode(ids)
    assert len(detok._ids) < 40  # the decode window stays short


# ---------------------------------------------------------------------------------------------
# stop strings
# ---------------------------------------------------------------------------------------------
def _run_stops(stops, pieces):
    s = StopStrings(stops)
    out = [s.feed(p) for p in pieces]
    out.append(s.flush())
    return out, s


def test_stop_split_across_pieces():
    out, s = _run_stops(["END"], ["hello E", "ND world"])
    assert out == ["hello ", "", ""] and s.stopped and s.matched == "END"
    out, s = _run_stops("END", ["abc", "E", "N", "D", "more"])
    assert "".join(out) == "abc" and out[1:4] == ["", "", ""] and s.matched == "END"


def test_stop_false_start_is_released():
    out, s = _run_stops(["END"], ["E", "N", "x", "ENE", "ND"])
    assert "".join(out) == "ENxEN" and s.stopped
    assert out[:3] == ["", "", "ENx"]


def test_stop_at_start_and_inside_one_piece():
    out, s = _run_stops(["<stop>"], ["<stop>after"])
    assert out == ["", ""] and s.stopped
    out, s = _run_stops(["\n\n"], ["one\n\ntwo"])
    assert out[0] == "one" and s.matched == "\n\n"
    assert s.feed("ignored") == ""


def test_no_stop():
    pieces = ["Un café ", "中文 E", "N", "", "😀 fin E"]
    out, s = _run_stops(["END", "STOP"], pieces)
    assert "".join(out) == "".join(pieces) and not s.stopped and s.matched is None
    assert out[-1] == "E"  # held back until the stream ended
    out, s = _run_stops(None, pieces)
    assert out[:-1] == pieces and out[-1] == ""


def test_multiple_stops_earliest_wins():
    out, s = _run_stops(["STOP", "ST", "xyz"], ["abc xy", "z ST", "OP"])
    assert "".join(out) == "abc " and s.matched == "xyz"
    out, s = _run_stops(["world", "lo w"], ["hello world"])
    assert out[0] == "hel" and s.matched == "lo w"
    # overlapping prefixes: the longest possible start is held back
    s = StopStrings(["abcd", "bce"])
    assert s.feed("xabc") == "x" and s.feed("e") == "a" and s.matched == "bce"


@pytest.mark.parametrize("stop,fragment", [
    ([""], r"stop\[0\] is empty"),
    (["ok", ""], r"stop\[1\] is empty"),
    (["ok", 3], r"stop\[1\] must be a string, got int"),
    (5, "stop must be a string or a list of strings"),
])
def test_bad_stop_strings(stop, fragment):
    with pytest.raises(ValueError, match=fragment):
        StopStrings(stop)


def test_stream_then_stop_on_real_tokens(tok):
    text = "mixed 中文 and café 😀 then END and more"
    ids = tok.encode(text)
    detok, stops, out = tok.detokenizer(), StopStrings(["END"]), []
    for i in ids:
        out.append(stops.feed(detok.feed(i)))
        if stops.stopped:
            break
    assert "".join(out) == "mixed 中文 and café 😀 then " and stops.stopped

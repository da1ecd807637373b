"""Text in and out of the model: tokenizer, chat template, streaming detokenization, stop strings.

- `Tokenizer` wraps a `tokenizers.Tokenizer` loaded from a checkpoint folder's `tokenizer.json`, plus the
  special tokens and chat template(s) of `tokenizer_config.json` / `chat_template.jinja`. It needs no
  `transformers` at run time, yet encodes, decodes and renders chat templates the way HF does.
- `render_chat_template` renders a jinja2 chat template in the same sandboxed environment HF uses
  (trim_blocks, lstrip_blocks, loopcontrols, `raise_exception`, `strftime_now`, a non-escaping `tojson`),
  so prompts are byte-identical to what the model was trained and evaluated with.
- `IncrementalDetokenizer` turns a stream of token ids into text pieces that never split a multi-byte
  character and that concatenate to the full decode.
- `StopStrings` cuts a stream of text pieces before the first stop string, holding back any tail that
  could still become one.
"""
from __future__ import annotations

import functools
import json
import operator
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer as _BackendTokenizer

# The named special tokens HF exposes to chat templates (its `special_tokens_map`), in HF's order.
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
CHAT_TEMPLATE_DIR = "additional_chat_templates"
# Names under which a message's reasoning arrives; HF copies it to all of them so any template finds it.
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")
_REPLACEMENT_CHAR = "\ufffd"
# Tokens of context decoded in front of a stream so that the first new token gets its leading space right.
_CONTEXT_TOKENS = 6


class TokenizerError(ValueError):
    """A tokenizer folder or token id trikern cannot use; the message names the file, field or index."""


class ChatTemplateError(ValueError):
    """A missing, malformed or failing chat template; the message names the template's source."""


class _TemplateRaised(ChatTemplateError):
    """Raised by the template's own `raise_exception(...)`; re-raised with the template's source."""


class TextEncodingError(ValueError):
    """Input text that cannot be encoded as UTF-8 (a lone UTF-16 surrogate); the message names the field."""


# ---------------------------------------------------------------------------------------------
# Input text
# ---------------------------------------------------------------------------------------------
def check_text(text: str, field: str) -> str:
    """`text` unchanged if it encodes as UTF-8, else one `TextEncodingError` naming `field` and the first
    bad character. A Python str fails only on a lone surrogate (U+D800..U+DFFF): JSON's "\\ud800" escape,
    or an undecodable byte that Python read with surrogateescape (command line, some stdin)."""
    if not isinstance(text, str) or text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        cp = ord(text[e.start])
        hint = ""
        if 0xDC80 <= cp <= 0xDCFF:  # surrogateescape's stand-in for a byte that is not UTF-8
            hint = f" (it stands for the byte 0x{cp - 0xDC00:02X} of input that is not UTF-8)"
        raise TextEncodingError(f"{field}: lone surrogate U+{cp:04X} at character {e.start} cannot be encoded "
                                f"as UTF-8{hint}") from None
    return text


def check_texts(value, field: str):
    """`check_text` on every string inside JSON-like `value` (dicts, lists, tuples), naming each by its path
    (`messages[1].content[0].text`); `value` is returned unchanged."""
    if isinstance(value, str):
        check_text(value, field)
    elif isinstance(value, Mapping):
        for k, v in value.items():
            name = f"{field}.{k}" if isinstance(k, str) and k.isidentifier() else f"{field}[{k!r}]"
            if isinstance(k, str):
                check_text(k, f"{field} key {k!r}")
            check_texts(v, name)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_texts(v, f"{field}[{i}]")
    return value


# ---------------------------------------------------------------------------------------------
# Loading helpers
# ---------------------------------------------------------------------------------------------
def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise TokenizerError(f"{path}: cannot read: {e}") from None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise TokenizerError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    if not isinstance(data, dict):
        raise TokenizerError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _token_string(value, where: str) -> str | None:
    """A special token given as a string, an AddedToken dict ({"content": ...}) or null."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    raise TokenizerError(f"{where}: expected a token string or an object with a 'content' string, got {value!r}")


def _templates_from_config(value, where: str) -> dict[str, str]:
    """`chat_template` of tokenizer_config.json: a string, or a list of {name, template} (HF's multi-template form)."""
    if value is None:
        return {}
    if isinstance(value, str):
        return {"default": value}
    if isinstance(value, list):
        templates = {}
        for i, entry in enumerate(value):
            if not (isinstance(entry, Mapping) and isinstance(entry.get("name"), str)
                    and isinstance(entry.get("template"), str)):
                raise TokenizerError(f"{where}[{i}]: expected an object with 'name' and 'template' strings, got {entry!r}")
            templates[entry["name"]] = entry["template"]
        return templates
    raise TokenizerError(f"{where}: expected a string or a list of {{name, template}} objects, got {type(value).__name__}")


# ---------------------------------------------------------------------------------------------
# Chat template rendering
# ---------------------------------------------------------------------------------------------
class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text for HF's training masks; rendering
    only needs the body, but without the tag such templates would not even compile."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller):
        return caller()


def _raise_exception(message):
    raise _TemplateRaised(str(message))


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # jinja's own tojson HTML-escapes and sorts keys; templates expect plain JSON in the given key order
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


@functools.lru_cache(maxsize=1)
def _environment() -> ImmutableSandboxedEnvironment:
    # Templates are untrusted code from model repos: sandboxed, and unable to mutate the inputs.
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


@functools.lru_cache(maxsize=16)
def _compile(template: str, source: str) -> jinja2.Template:
    try:
        return _environment().from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise ChatTemplateError(f"chat template from {source}: syntax error at line {e.lineno}: {e.message}") from None


def _plain(value):
    """A copy of JSON-like data made of plain dicts / lists, so the template sees no foreign objects."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def normalize_messages(messages) -> list[dict]:
    """Validate a conversation and return the copy a template sees (None-valued keys dropped, reasoning
    aliased under every name templates read it by -- both as HF does)."""
    if not isinstance(messages, (list, tuple)):
        raise ValueError(f"messages must be a list of dicts with 'role' and 'content', got {type(messages).__name__}")
    if not messages:
        raise ValueError("messages is empty: a conversation needs at least one message")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ValueError(f"messages[{i}] must be a dict with 'role' and 'content', got {type(message).__name__}")
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise ValueError(f"messages[{i}]['role'] must be a non-empty string, got {role!r}")
        if "content" not in message and not message.get("tool_calls"):
            raise ValueError(f"messages[{i}] (role {role!r}) has no 'content'")
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list, tuple)):
            raise ValueError(
                f"messages[{i}]['content'] must be a string or a list of content blocks, got {type(content).__name__}"
            )
        check_texts(message, f"messages[{i}]")  # role, content and any other text the template may render
        plain = {k: _plain(v) for k, v in message.items() if v is not None}
        reasoning = next((plain[k] for k in _REASONING_FIELDS if k in plain), None)
        if reasoning is not None:
            plain = {"thinking": reasoning, **plain, "reasoning_content": reasoning}
        out.append(plain)
    return out


def render_chat_template(
    template: str,
    messages,
    *,
    add_generation_prompt: bool = True,
    tools=None,
    special_tokens: Mapping[str, str] | None = None,
    source: str = "<string>",
    **extra,
) -> str:
    """Render `template` over `messages` exactly as HF's `apply_chat_template(..., tokenize=False)`.

    `special_tokens` (bos_token, eos_token, ...) are template variables; `extra` (e.g. enable_thinking)
    overrides them. `source` names the template's origin in errors.
    """
    chat = normalize_messages(messages)
    if tools is not None:
        if not isinstance(tools, (list, tuple)):
            raise ValueError(f"tools must be a list of JSON-schema dicts, got {type(tools).__name__}")
        for i, tool in enumerate(tools):
            if not isinstance(tool, Mapping):
                raise ValueError(f"tools[{i}] must be a JSON-schema dict, got {type(tool).__name__}")
        tools = _plain(check_texts(tools, "tools"))
    for k, v in extra.items():
        check_texts(v, k)
    variables = {**(special_tokens or {}), **{k: _plain(v) for k, v in extra.items()}}
    variables.setdefault("documents", None)  # HF always defines it
    compiled = _compile(template, source)
    try:
        return compiled.render(messages=chat, tools=tools, add_generation_prompt=add_generation_prompt, **variables)
    except _TemplateRaised as e:
        raise ChatTemplateError(f"chat template from {source} raised an error: {e}") from None
    except ChatTemplateError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure inside untrusted template code
        raise ChatTemplateError(f"rendering the chat template from {source} failed: {type(e).__name__}: {e}") from e


# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------
class Tokenizer:
    """`tokenizers.Tokenizer` plus the special tokens and chat templates of a checkpoint folder."""

    def __init__(
        self,
        backend: _BackendTokenizer,
        config: Mapping | None = None,
        chat_templates: Mapping[str, str] | None = None,
        eos_token_ids: Iterable[int] = (),
        source: str = "<memory>",
        template_sources: Mapping[str, str] | None = None,
        searched: Sequence[str] = (),
    ):
        self._tok = backend
        self.source = source
        # ids may have gaps (added tokens placed anywhere), so the valid range is up to the largest id
        self._n_ids = max(backend.get_vocab(with_added_tokens=True).values(), default=-1) + 1
        config = dict(config or {})
        self.special_tokens: dict[str, str] = {}
        for key in SPECIAL_TOKEN_KEYS:
            value = _token_string(config.get(key), f"{source}: {CONFIG_FILE} field '{key}'")
            if value is not None:
                self.special_tokens[key] = value
        for key in ("bos_token", "eos_token"):
            tok = self.special_tokens.get(key)
            if tok is not None and self._tok.token_to_id(tok) is None:
                raise TokenizerError(f"{source}: {CONFIG_FILE} field '{key}' is {tok!r}, which is not in {TOKENIZER_FILE}")
        # tokenizer.json's post-processor decides what add_special_tokens adds (as in HF 5, which ignores
        # the config's add_bos_token / add_eos_token when tokenizer.json exists). Without a post-processor
        # the config's flags are honoured (as HF 4 did) rather than silently dropped.
        self._own_post_processor = self._tok.post_processor is None
        self.add_bos_token = bool(config.get("add_bos_token", False)) and self.bos_token_id is not None
        self.add_eos_token = bool(config.get("add_eos_token", False)) and self._eos_id is not None
        self.chat_templates: dict[str, str] = dict(chat_templates or {})
        self._template_sources = dict(template_sources or {})
        self._searched = list(searched)  # where from_dir looked for a chat template, for the error
        extra = []
        for i, t in enumerate(eos_token_ids):
            if isinstance(t, bool) or not isinstance(t, int) or t < 0:
                raise TokenizerError(f"eos_token_ids[{i}] must be a non-negative int, got {t!r}")
            extra.append(t)
        self._eos_ids = tuple(sorted(set(extra) | ({self._eos_id} if self._eos_id is not None else set())))

    @classmethod
    def from_dir(cls, path, eos_token_ids: Iterable[int] = ()) -> "Tokenizer":
        """Load from a checkpoint folder. `eos_token_ids` (e.g. `ModelConfig.eos_token_ids`) join the
        tokenizer's own eos token as stop ids."""
        folder = Path(path)
        if not folder.is_dir():
            raise TokenizerError(f"{folder}: not a directory (expected a checkpoint folder with {TOKENIZER_FILE})")
        tok_file = folder / TOKENIZER_FILE
        if not tok_file.is_file():
            raise TokenizerError(f"{folder}: no {TOKENIZER_FILE} (trikern reads the fast-tokenizer file only)")
        try:
            backend = _BackendTokenizer.from_file(str(tok_file))
        except Exception as e:  # noqa: BLE001 - the Rust loader raises a bare Exception
            raise TokenizerError(f"{tok_file}: cannot load: {e}") from None
        config = {}
        if (folder / CONFIG_FILE).is_file():
            config = _read_json(folder / CONFIG_FILE)
        if (folder / SPECIAL_TOKENS_MAP_FILE).is_file():  # legacy file: fills tokens the config lacks
            for key, value in _read_json(folder / SPECIAL_TOKENS_MAP_FILE).items():
                if key in SPECIAL_TOKEN_KEYS and config.get(key) is None:
                    config[key] = value

        # As in HF: template files, when present, replace tokenizer_config.json's chat_template entirely.
        templates, sources = {}, {}
        jinja_file = folder / CHAT_TEMPLATE_FILE
        if jinja_file.is_file():
            templates["default"], sources["default"] = _read_text(jinja_file), str(jinja_file)
        extra_dir = folder / CHAT_TEMPLATE_DIR
        if extra_dir.is_dir():
            for f in sorted(extra_dir.glob("*.jinja")):
                name = f.name.removesuffix(".jinja")
                templates[name], sources[name] = _read_text(f), str(f)
        if not templates:
            where = f"{folder / CONFIG_FILE} field 'chat_template'"
            templates = _templates_from_config(config.get("chat_template"), where)
            sources = {name: where + ("" if name == "default" and isinstance(config.get("chat_template"), str)
                                      else f" [{name!r}]") for name in templates}
        searched = [str(jinja_file), str(extra_dir / "*.jinja"), f"{folder / CONFIG_FILE} ('chat_template')"]
        return cls(backend, config, templates, eos_token_ids, source=str(folder), template_sources=sources,
                   searched=searched)

    # -- vocabulary ------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """One past the largest token id, added tokens included (the model's vocabulary may be padded larger)."""
        return self._n_ids

    def token_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    @property
    def bos_token(self) -> str | None:
        return self.special_tokens.get("bos_token")

    @property
    def eos_token(self) -> str | None:
        return self.special_tokens.get("eos_token")

    @property
    def bos_token_id(self) -> int | None:
        return None if self.bos_token is None else self._tok.token_to_id(self.bos_token)

    @property
    def _eos_id(self) -> int | None:
        return None if self.eos_token is None else self._tok.token_to_id(self.eos_token)

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """Ids that end generation: the config's eos token plus those given by the model config."""
        return self._eos_ids

    # -- encode / decode -------------------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`. Chat prompts already contain their special tokens: keep the default False.
        With True, bos/eos are added the way HF's fast tokenizer adds them for this folder."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        check_text(text, "text")  # the backend's own error is a bare TypeError
        if not add_special_tokens:
            return self._tok.encode(text, add_special_tokens=False).ids
        if not self._own_post_processor:
            return self._tok.encode(text, add_special_tokens=True).ids
        ids = self._tok.encode(text, add_special_tokens=False).ids
        if self.add_bos_token:
            ids = [self.bos_token_id, *ids]
        if self.add_eos_token:
            ids = [*ids, self._eos_id]
        return ids

    def check_ids(self, ids, what: str = "token ids") -> list[int]:
        """`ids` as a list of ints, each a valid id of this tokenizer; otherwise one error naming the index."""
        out = []
        n = self.vocab_size
        for i, t in enumerate(ids):
            try:  # numpy integers and one-element integer tensors are ids too
                t_int = None if isinstance(t, bool) else operator.index(t)
            except TypeError:
                t_int = None
            if t_int is None or not 0 <= t_int < n:
                raise TokenizerError(f"{what}[{i}] = {t!r}: not a token id (the tokenizer has ids 0..{n - 1})")
            out.append(t_int)
        return out

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self._tok.decode(self.check_ids(ids), skip_special_tokens=skip_special_tokens)

    @functools.cached_property
    def byte_fallback_ids(self) -> frozenset[int]:
        """Ids of the `<0xNN>` byte tokens when the decoder has ByteFallback (it decodes a whole run of
        them at once, so a stream must not cut a run), else empty."""
        decoder = self._tok.decoder
        if decoder is None or b'"ByteFallback"' not in decoder.__getstate__():
            return frozenset()
        ids = (self._tok.token_to_id(f"<0x{b:02X}>") for b in range(256))
        return frozenset(i for i in ids if i is not None)

    def detokenizer(self, skip_special_tokens: bool = False, context_ids: Sequence[int] = ()) -> "IncrementalDetokenizer":
        return IncrementalDetokenizer(self, skip_special_tokens=skip_special_tokens, context_ids=context_ids)

    # -- chat ------------------------------------------------------------------------------
    def _pick_template(self, name: str | None, tools) -> str:
        # HF's choice: `name` if given, else 'tool_use' when tools are passed and it exists, else 'default'
        if not self.chat_templates:
            searched = ", ".join(self._searched) or "none (tokenizer built in memory)"
            raise ChatTemplateError(f"{self.source}: no chat template found; searched: {searched}")
        if name is None:
            if tools is not None and "tool_use" in self.chat_templates:
                name = "tool_use"
            elif "default" in self.chat_templates:
                name = "default"
            else:
                raise ChatTemplateError(
                    f"{self.source}: several chat templates and none named 'default'; pass template_name= one of "
                    f"{sorted(self.chat_templates)}")
        elif name not in self.chat_templates:
            raise ChatTemplateError(
                f"{self.source}: no chat template named {name!r}; available: {sorted(self.chat_templates)}")
        return name

    def chat_template(self, name: str | None = None, tools=None) -> str:
        """The template text `apply_chat_template` would use."""
        return self.chat_templates[self._pick_template(name, tools)]

    def apply_chat_template(self, messages, add_generation_prompt: bool = True, tools=None,
                            template_name: str | None = None, **extra) -> str:
        """The prompt text for `messages` (encode it with add_special_tokens=False). `extra` reaches the
        template as variables, e.g. `enable_thinking=False`."""
        name = self._pick_template(template_name, tools)
        return render_chat_template(
            self.chat_templates[name], messages, add_generation_prompt=add_generation_prompt, tools=tools,
            special_tokens=self.special_tokens, source=self._template_sources.get(name, f"{self.source} [{name!r}]"),
            **extra,
        )


# ---------------------------------------------------------------------------------------------
# Streaming
# ---------------------------------------------------------------------------------------------
class IncrementalDetokenizer:
    """Token ids in, text pieces out, never a partial character.

    The text of new tokens is the decode of a short window (some already-emitted tokens plus the new
    ones) minus the decode of the already-emitted part. Decoding with context gets word-initial spaces
    (Metaspace) right. Text is held back (until later tokens arrive, or `flush()`) while it may still
    change: when it ends in U+FFFD (an incomplete UTF-8 sequence of a byte-level BPE) or the last token is
    a byte-fallback `<0xNN>` (the decoder turns a run of them into text as a whole). Without `context_ids`, the
    pieces concatenate to `tokenizer.decode(all fed ids)`; with them (e.g. the prompt), the pieces are the
    text the fed ids add after the context.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = False, context_ids: Sequence[int] = ()):
        self._tokenizer = tokenizer
        self._skip = skip_special_tokens
        self._byte_ids = tokenizer.byte_fallback_ids
        context = tokenizer.check_ids(list(context_ids)[-_CONTEXT_TOKENS:], "context_ids")
        self._ids: list[int] = context
        self._prefix = 0  # window start: tokens before it are emitted and no longer needed as context
        self._read = len(context)  # tokens before it are emitted
        self.token_ids: list[int] = []

    def _decode(self, ids) -> str:
        return self._tokenizer._tok.decode(ids, skip_special_tokens=self._skip)

    def _advance(self, force: bool) -> str:
        prefix_text = self._decode(self._ids[self._prefix:self._read])
        text = self._decode(self._ids[self._prefix:])
        incomplete = not force and (text.endswith(_REPLACEMENT_CHAR) or self._ids[-1] in self._byte_ids)
        if len(text) <= len(prefix_text) or incomplete:
            if force:
                self._prefix = self._read = len(self._ids)
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        # the window grows only while text is held back; trim the emitted past that is not context
        if self._prefix > _CONTEXT_TOKENS * 4:
            del self._ids[:self._prefix]
            self._read -= self._prefix
            self._prefix = 0
        return text[len(prefix_text):]

    def feed(self, ids) -> str:
        """Add one token id or a list of them; return the text that is now complete (maybe '')."""
        if not isinstance(ids, (list, tuple)):
            try:
                ids = [operator.index(ids)]
            except TypeError:
                ids = list(ids)  # an iterable of ids (e.g. a 1-D tensor)
        ids = self._tokenizer.check_ids(ids)
        if not ids:
            return ""
        self._ids.extend(ids)
        self.token_ids.extend(ids)
        return self._advance(force=False)

    def flush(self) -> str:
        """Everything still held back (an incomplete character decodes to U+FFFD, as in `decode`)."""
        return self._advance(force=True)


class StopStrings:
    """Cut a text stream before the first occurrence of any stop string.

    `feed(piece)` returns the text that is safe to emit now: text that cannot be the start of a stop
    string is released; a tail that matches the beginning of one is held back. When a stop string
    completes, everything before it is released, the stop string and what follows are dropped, and
    `stopped` / `matched` are set (later pieces are ignored). `flush()` releases the held tail when the
    stream ends without a stop.
    """

    def __init__(self, stop=None):
        if stop is None:
            stop = ()
        elif isinstance(stop, str):
            check_text(stop, "stop")
            stop = (stop,)
        elif not isinstance(stop, (list, tuple)):
            raise ValueError(f"stop must be a string or a list of strings, got {type(stop).__name__}")
        for i, s in enumerate(stop):
            if not isinstance(s, str):
                raise ValueError(f"stop[{i}] must be a string, got {type(s).__name__}")
            if not s:
                raise ValueError(f"stop[{i}] is empty: stop strings must be non-empty")
            check_text(s, f"stop[{i}]")
        self.stops: tuple[str, ...] = tuple(dict.fromkeys(stop))
        self._held = ""
        self.stopped = False
        self.matched: str | None = None

    def _held_tail(self, text: str) -> int:
        """Length of the longest suffix of `text` that is a proper prefix of some stop string."""
        longest = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(text)), longest, -1):
                if text.endswith(s[:n]):
                    longest = n
                    break
        return longest

    def feed(self, piece: str) -> str:
        if not isinstance(piece, str):
            raise TypeError(f"piece must be a str, got {type(piece).__name__}")
        if self.stopped:
            return ""
        text = self._held + piece
        hits = [(pos, i) for i, s in enumerate(self.stops) if (pos := text.find(s)) >= 0]
        if hits:
            pos, i = min(hits)
            self.stopped, self.matched, self._held = True, self.stops[i], ""
            return text[:pos]
        keep = self._held_tail(text)
        self._held = text[len(text) - keep:]
        return text[:len(text) - keep]

    def flush(self) -> str:
        out, self._held = ("" if self.stopped else self._held), ""
        return out

"""OpenAI request bodies -> `Work`, and results -> OpenAI response objects.

Checks here are only what the Model cannot know: JSON shapes (the body is an object, `n` is 1,
content parts are text), OpenAI field names (`max_tokens` -> `max_new_tokens`) and the OpenAI features
this server does not have (logprobs, tools, penalties: refused, not silently ignored). Value ranges and
types of the generation options are left to the Model, whose ValueError names the option; `client_error`
turns it into a 400 that names the request field. Unknown fields are ignored, as OpenAI does. Text
that cannot be encoded as UTF-8 (a lone surrogate, which JSON's "\\ud800" escape allows) is refused
here, before the request is queued, with a 400 naming its JSON path (messages[1].content[0].text).
"""
from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass

from ..decode import ContextLengthError
from ..tokenizer import ChatTemplateError, TextEncodingError, check_text, check_texts
from .engine import Work

# Request field -> Model option, passed through as given; the Model checks type and range.
OPTION_FIELDS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "seed": "seed",
                 "block_size": "block_size", "threshold": "threshold", "tree_nodes": "tree_nodes"}
# OpenAI features without an implementation here: accepted only at their "off" value.
UNSUPPORTED = {
    "logprobs": (None, False), "top_logprobs": (None, 0), "echo": (None, False), "suffix": (None,),
    "best_of": (None, 1), "presence_penalty": (None, 0), "frequency_penalty": (None, 0),
    "logit_bias": (None, {}), "tools": (None, []), "functions": (None, []), "tool_choice": (None, "none"),
    "function_call": (None, "none"),
}
# Fields a Model error may name (after renaming), reported as the error's `param`.
REQUEST_FIELDS = {*OPTION_FIELDS, "mode", "stop", "messages", "prompt", "max_tokens", "max_completion_tokens",
                  "chat_template_kwargs"}
ROLES = ("system", "developer", "user", "assistant", "tool")


class APIError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error", headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class Request:
    """A parsed request: what to run, and how to answer."""
    kind: str  # "chat" | "completion"
    work: Work
    model: str
    stream: bool
    include_usage: bool
    max_tokens_field: str  # the field the client used for the budget, to name it in errors


def short(v, limit: int = 80) -> str:
    """repr(v), cut: an error message must not echo a megabyte the client sent."""
    r = repr(v)
    return r if len(r) <= limit else r[:limit] + "..."


def _check_type(body: dict, name: str, types, what: str):
    v = body.get(name)
    if v is not None and (not isinstance(v, types) or (isinstance(v, bool) and bool not in _as_tuple(types))):
        raise APIError(400, f"{name}={short(v)}: expected {what}, got {type(v).__name__}", param=name)
    return v


def _text(value, field: str, param: str):
    """`value` with every string in it checked to encode as UTF-8 (JSON's "\\ud800" escape decodes to a lone
    surrogate, which no tokenizer takes): else a 400 naming `field` (e.g. messages[1].content)."""
    try:
        return check_texts(value, field)
    except TextEncodingError as e:
        raise APIError(400, str(e), param=param) from None


def _as_tuple(t):
    return t if isinstance(t, tuple) else (t,)


def _is_off(v, allowed) -> bool:
    # bools apart from numbers: `best_of: true` is not `best_of: 1`
    return v is None or any(v == a and isinstance(v, bool) == isinstance(a, bool) for a in allowed)


def _common(body, kind: str, served_model: str, default_mode: str, default_max_tokens: int):
    if not isinstance(body, dict):
        raise APIError(400, f"the request body must be a JSON object, got {type(body).__name__}")
    model = _check_type(body, "model", str, "a model id (string)")
    if model is not None and model != served_model:
        raise APIError(404, f"model {short(model)} does not exist: this server serves {served_model!r} "
                       "(GET /v1/models)", param="model", code="model_not_found")
    n = _check_type(body, "n", int, "an integer")
    if n is not None and n != 1:
        raise APIError(400, f"n={n}: only n=1 is supported (one decoder, one sequence per request)", param="n")
    for name, allowed in UNSUPPORTED.items():
        if not _is_off(body.get(name), allowed):
            raise APIError(400, f"{name} is not supported by this server", param=name, code="unsupported_parameter")
    fmt = body.get("response_format")
    if fmt is not None and fmt != {"type": "text"}:
        raise APIError(400, "response_format: only {'type': 'text'} is supported", param="response_format",
                       code="unsupported_parameter")
    stream = bool(_check_type(body, "stream", bool, "true or false"))
    opts = _check_type(body, "stream_options", dict, "an object")
    include_usage = opts.get("include_usage") if opts is not None else None
    if include_usage is not None and not isinstance(include_usage, bool):
        raise APIError(400, f"stream_options.include_usage={short(include_usage)}: expected true or false",
                       param="stream_options.include_usage")
    include_usage = bool(include_usage) and stream  # usage rides on the stream; a JSON answer always has it

    mt_field = "max_completion_tokens" if kind == "chat" and body.get("max_completion_tokens") is not None \
        else "max_tokens"
    max_tokens = body.get(mt_field)
    options = {"max_new_tokens": default_max_tokens if max_tokens is None else max_tokens}
    for field, option in OPTION_FIELDS.items():
        if body.get(field) is not None:  # null means "not given", as in OpenAI
            options[option] = body[field]
    mode = body.get("mode")
    stop = _text(body.get("stop"), "stop", "stop")  # its shape is the Model's to check
    return Request(kind, Work(None, None, default_mode if mode is None else mode, stop, options),
                   model or served_model, stream, include_usage, mt_field)


def _text_content(content, i: int, role: str) -> str:
    """A message's content as one string (OpenAI allows a list of text parts)."""
    if isinstance(content, str):
        return _text(content, f"messages[{i}].content", "messages")
    if content is None and role == "assistant":  # an assistant turn that only called tools
        return ""
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise APIError(400, f"messages[{i}].content[{j}]: only text parts "
                               f"({{'type': 'text', 'text': ...}}) are supported", param="messages")
            texts.append(_text(part["text"], f"messages[{i}].content[{j}].text", "messages"))
        return "\n".join(texts)
    raise APIError(400, f"messages[{i}].content: expected a string or a list of text parts, "
                   f"got {type(content).__name__}", param="messages")


def parse_chat(body, served_model: str, default_mode: str, default_max_tokens: int) -> Request:
    req = _common(body, "chat", served_model, default_mode, default_max_tokens)
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise APIError(400, f"messages: expected a list of messages, got {type(messages).__name__}",
                       param="messages")
    if not messages:
        raise APIError(400, "messages is empty: a conversation needs at least one message", param="messages")
    chat = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise APIError(400, f"messages[{i}]: expected an object with role and content, got {type(msg).__name__}",
                           param="messages")
        role = msg.get("role")
        if role not in ROLES:
            raise APIError(400, f"messages[{i}].role={short(role)}: expected one of {', '.join(ROLES)}",
                           param="messages")
        # "developer" is OpenAI's newer name for the system role; templates know "system".
        chat.append({"role": "system" if role == "developer" else role,
                     "content": _text_content(msg.get("content"), i, role)})
    req.work.messages = chat
    req.work.template_kwargs = _text(_check_type(body, "chat_template_kwargs", dict, "an object"),
                                     "chat_template_kwargs", "chat_template_kwargs")
    return req


def parse_completion(body, served_model: str, default_mode: str, default_max_tokens: int) -> Request:
    req = _common(body, "completion", served_model, default_mode, default_max_tokens)
    prompt = body.get("prompt")
    field = "prompt"
    # OpenAI's batch forms (a list of strings, a list of token lists) are accepted with one element.
    if isinstance(prompt, list) and prompt and all(isinstance(p, (str, list)) for p in prompt):
        if len(prompt) != 1:
            raise APIError(400, f"prompt is a batch of {len(prompt)}: only one prompt per request is supported",
                           param="prompt")
        prompt, field = prompt[0], "prompt[0]"
    if isinstance(prompt, list):
        if not prompt:
            raise APIError(400, "prompt is an empty list: expected text or a list of token ids", param="prompt")
    elif not isinstance(prompt, str):
        raise APIError(400, f"prompt: expected text or a list of token ids, got {type(prompt).__name__}",
                       param="prompt")
    else:
        _text(prompt, field, "prompt")
    req.work.prompt = prompt
    return req


_LEADING_NAME = re.compile(r"^([A-Za-z_]+)")


def client_error(e: Exception, req: Request) -> APIError:
    """The Model's ValueError for a request -> a 400 naming the request field (the Model's messages start
    with the option's name: `top_p=0: expected ...`, `stop[0] is empty`, `messages[1]['role'] ...`)."""
    prompt_field = "messages" if req.kind == "chat" else "prompt"
    if isinstance(e, ContextLengthError):
        return APIError(400, str(e), param=prompt_field, code="context_length_exceeded")
    msg = str(e)
    if len(msg) > 1000:  # Model messages quote the bad value, which the client may have made huge
        msg = msg[:1000] + "..."
    if isinstance(e, ChatTemplateError):
        return APIError(400, msg, param="messages")
    m = _LEADING_NAME.match(msg)
    name = m.group(1) if m else None
    renames = {"max_new_tokens": req.max_tokens_field, "template_kwargs": "chat_template_kwargs",
               "prompt": prompt_field}
    if name in renames:
        msg = renames[name] + msg[len(name):]
        name = renames[name]
    return APIError(400, msg, param=name if name in REQUEST_FIELDS else None)


# -- responses ---------------------------------------------------------------------------
# Stats keys reported under usage.trikern when the Model provides them.
TRIKERN_USAGE = ("mode", "forwards", "prefill_forwards", "tokens_per_forward", "acceptance_lengths",
                 "mean_acceptance_length", "tokens_per_second", "prefill_tokens_per_second", "prefill_s",
                 "decode_s", "strategies", "switches", "tree_nodes")


def new_id(kind: str) -> str:
    return ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex


def usage(result, queue_s: float) -> dict:
    s = result.stats
    prompt = int(s.get("prompt_tokens", 0))
    completion = len(result.token_ids)
    extra = {k: s[k] for k in TRIKERN_USAGE if k in s}
    extra["queue_s"] = round(queue_s, 6)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            # Prefix reuse reports how much of the prompt came from the cache; 0 until the Model does it.
            "prompt_tokens_details": {"cached_tokens": int(s.get("cached_tokens", 0))},
            "trikern": extra}


def completion_body(req: Request, rid: str, created: int, result, queue_s: float) -> dict:
    if req.kind == "chat":
        choice = {"index": 0, "message": {"role": "assistant", "content": result.text}, "logprobs": None,
                  "finish_reason": result.finish_reason}
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": result.text, "logprobs": None, "finish_reason": result.finish_reason}
        obj = "text_completion"
    return {"id": rid, "object": obj, "created": created, "model": req.model, "choices": [choice],
            "usage": usage(result, queue_s)}


def chunk(req: Request, rid: str, created: int, *, text: str | None = None, first: bool = False,
          finish_reason: str | None = None, usage_: dict | None = None, final_usage: bool = False) -> dict:
    """One streamed event. `final_usage`: the usage-only chunk (no choices) of stream_options.include_usage."""
    if req.kind == "chat":
        obj = "chat.completion.chunk"
        delta = {}
        if first:
            delta["role"] = "assistant"
        if text is not None or first:
            delta["content"] = text or ""
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
    else:
        obj = "text_completion"
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
    out = {"id": rid, "object": obj, "created": created, "model": req.model,
           "choices": [] if final_usage else [choice]}
    if req.include_usage:  # OpenAI: null on every chunk but the last
        out["usage"] = usage_ if final_usage else None
    return out


def now() -> int:
    return int(time.time())

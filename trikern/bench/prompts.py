"""The prompt set of `trikern bench`: a JSONL file, one prompt per line.

Each line is a JSON object with either `"prompt"` (raw text, no chat template) or `"messages"`
(a chat, rendered with the checkpoint's chat template), plus optional `"id"` and `"kind"` (code,
prose, table, ...: results are also broken down by kind). Blank lines are skipped.

The shipped set (`prompts.jsonl`) was written for the bench and is not taken from any training
data: the embedded model was trained on the Python standard library, so every prompt here is
held out, and its kinds deliberately go beyond code (prose, tables, chat), where acceptance drops.
Kinds are interleaved, so `--limit N` keeps a mix.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path


class PromptError(ValueError):
    """A prompt file that cannot be used; the message names the file and the line."""


@dataclass(frozen=True)
class Prompt:
    id: str
    kind: str
    prompt: str | None = None  # raw text
    messages: tuple | None = None  # chat messages (dicts), rendered with the chat template

    def token_ids(self, model) -> list[int]:
        """Token ids for a `trikern.api.Model` (chat template applied for `messages`)."""
        if self.messages is not None:
            return model.chat_prompt([dict(m) for m in self.messages])
        return model._encode(self.prompt)


def default_path():
    # importlib.resources rather than __file__: works for wheels and editable installs alike.
    return resources.files(__package__) / "prompts.jsonl"


def load_prompts(path=None, limit: int | None = None) -> list[Prompt]:
    """The prompts of `path` (default: the shipped set), at most `limit` of them."""
    src = default_path() if path is None else Path(path)
    name = "the shipped prompt set" if path is None else str(path)
    if path is not None and not src.is_file():
        raise PromptError(f"--prompts {path}: file not found")
    text = src.read_text(encoding="utf-8")
    out: list[Prompt] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        out.append(_parse(line, f"{name}:{n}", len(out)))
    if not out:
        raise PromptError(f"--prompts {name}: no prompts in the file")
    ids = [p.id for p in out]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise PromptError(f"--prompts {name}: duplicate prompt id(s) {', '.join(dup)}")
    return out[:limit] if limit else out


def _parse(line: str, where: str, index: int) -> Prompt:
    try:
        d = json.loads(line)
    except json.JSONDecodeError as e:
        raise PromptError(f"{where}: not valid JSON ({e.msg})") from None
    if not isinstance(d, dict):
        raise PromptError(f"{where}: expected a JSON object with \"prompt\" or \"messages\"")
    has_p, has_m = "prompt" in d, "messages" in d
    if has_p == has_m:
        raise PromptError(f"{where}: needs exactly one of \"prompt\" (text) or \"messages\" (a chat)")
    pid = str(d.get("id", f"prompt-{index}"))
    kind = str(d.get("kind", "unknown"))
    if has_p:
        if not isinstance(d["prompt"], str) or not d["prompt"]:
            raise PromptError(f"{where}: \"prompt\" must be a non-empty string")
        return Prompt(pid, kind, prompt=d["prompt"])
    msgs = d["messages"]
    ok = isinstance(msgs, list) and msgs and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in msgs)
    if not ok:
        raise PromptError(f"{where}: \"messages\" must be a non-empty list of {{\"role\", \"content\"}} strings")
    return Prompt(pid, kind, messages=tuple(tuple(sorted(m.items())) for m in msgs))

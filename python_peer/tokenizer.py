"""The tokenizer and chat template of an exported model, without transformers.

``tokenizer.json`` is read by the ``tokenizers`` library; the chat template is rendered with jinja2 in
a sandbox, with the same settings and helpers as transformers uses, so prompts are byte-identical.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from python_peer.core.manifest import Manifest

from .errors import PeerError, TemplateError

__all__ = ["ModelTokenizer", "StreamDecoder", "TemplateError"]


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


class ModelTokenizer:
    """Encodes prompts (through the chat template when there is one) and decodes generated ids."""

    def __init__(self, model_dir: str | Path, manifest: Manifest) -> None:
        from tokenizers import Tokenizer

        model_dir = Path(model_dir)
        info = manifest.tokenizer
        try:
            self.tokenizer = Tokenizer.from_file(str(model_dir / str(info.get("file", "tokenizer.json"))))
        except Exception as exc:
            raise PeerError(f"cannot read the tokenizer of {model_dir}: {exc}") from exc
        self.eos_token_ids = frozenset(int(i) for i in info.get("eos_token_ids", []))
        self.special_tokens: dict[str, str] = dict(info.get("special_tokens", {}))
        template_file = info.get("chat_template_file")
        self.chat_template: str | None = None
        if template_file:
            self.chat_template = (model_dir / str(template_file)).read_text(encoding="utf-8")

    def encode(self, text: str) -> list[int]:
        ids: list[int] = self.tokenizer.encode(text, add_special_tokens=False).ids
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        text: str = self.tokenizer.decode(list(ids), skip_special_tokens=True)
        return text

    def render_chat(self, messages: Iterable[dict[str, Any]], *, add_generation_prompt: bool = True) -> str:
        """The prompt text for ``messages`` ([{"role": ..., "content": ...}]) through the chat template."""
        if self.chat_template is None:
            raise TemplateError("this model has no chat template: send a plain prompt instead")
        from jinja2 import TemplateError as JinjaTemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
        )
        env.filters["tojson"] = lambda value, indent=None: json.dumps(
            value, ensure_ascii=False, indent=indent
        )
        env.globals["raise_exception"] = _raise_exception
        try:
            return env.from_string(self.chat_template).render(
                messages=list(messages), add_generation_prompt=add_generation_prompt, **self.special_tokens
            )
        except JinjaTemplateError as exc:
            raise TemplateError(f"the chat template failed: {exc}") from exc


class StreamDecoder:
    """Turns a growing list of token ids into text pieces, holding back incomplete UTF-8 sequences."""

    def __init__(self, tokenizer: ModelTokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.emitted = ""

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        piece = text[len(self.emitted) :] if text.startswith(self.emitted) else ""
        self.emitted = text
        return piece

    @property
    def text(self) -> str:
        return self.tokenizer.decode(self.ids)

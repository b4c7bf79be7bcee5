"""Tokenising texts and token arrays with the model's own tokenizer.json (Hugging Face `tokenizers`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer

Input = str | Sequence[int]


class InputError(ValueError):
    """An input the model cannot take; `index` says which one."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(message)
        self.index = index


class TextTokenizer:
    """Turns request inputs into token ids, truncated to the model's max length.

    Texts get the model's special tokens (e.g. [CLS] ... [SEP]); token arrays are taken as the content
    of a text and get the same special tokens around them, so both forms embed alike.
    """

    def __init__(self, path: Path, max_length: int) -> None:
        self._tok = Tokenizer.from_file(str(path))
        # tokenizer.json files often carry a fixed padding/truncation (MiniLM's pads to 128): we batch
        # and pad ourselves, and truncate at the model's real max length.
        self._tok.no_padding()
        self._tok.enable_truncation(max_length)
        self.max_length = max_length
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self.prefix, self.suffix = self._special_tokens_around_content()

    def _special_tokens_around_content(self) -> tuple[list[int], list[int]]:
        content = self._tok.encode("hello", add_special_tokens=False).ids
        full = self._tok.encode("hello").ids
        for start in range(len(full) - len(content) + 1):
            if full[start : start + len(content)] == content:
                return full[:start], full[start + len(content) :]
        return [], []

    def token_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def encode(self, inputs: Sequence[Input]) -> list[list[int]]:
        """Token ids per input, in order. Raises InputError for token ids outside the vocabulary."""
        texts = [(i, x) for i, x in enumerate(inputs) if isinstance(x, str)]
        out: list[list[int] | None] = [None] * len(inputs)
        if texts:
            for (i, _), enc in zip(texts, self._tok.encode_batch([t for _, t in texts]), strict=True):
                out[i] = enc.ids
        room = self.max_length - len(self.prefix) - len(self.suffix)
        for i, x in enumerate(inputs):
            if out[i] is None:
                ids = list(x)
                bad = next((t for t in ids if not 0 <= t < self.vocab_size), None)
                if bad is not None:
                    raise InputError(
                        i, f"input[{i}] holds token id {bad}, outside the vocabulary (0-{self.vocab_size - 1})"
                    )
                out[i] = self.prefix + ids[:room] + self.suffix
        return out  # type: ignore[return-value]

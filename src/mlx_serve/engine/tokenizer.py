"""Tokenising texts, sentence pairs and token arrays with the model's own tokenizer.json."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer

from mlx_serve.engine.batching import Seq

Input = str | Sequence[int]


class InputError(ValueError):
    """An input the model cannot take; `index` says which one."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(message)
        self.index = index


def too_long(index: int, tokens: int, limit: int, at_least: bool = False) -> InputError:
    count = f"more than {limit}" if at_least else str(tokens)
    return InputError(
        index,
        f"input[{index}] has {count} tokens, over the model's maximum of {limit}; "
        "shorten it or allow truncation (truncate: true)",
    )


# A first cut of a long text, in characters per token of the model's maximum length: generous, since a
# token may stand for many characters; a cut that proves too short is lengthened (see `bounded`), up to
# the cap, past which no text is tokenized whatever it holds.
CHARS_PER_TOKEN = 12
MAX_CHARS_PER_TOKEN = 256


class TextTokenizer:
    """Request inputs -> token sequences, truncated to the model's max length unless told not to.

    Texts get the model's special tokens (e.g. [CLS] ... [SEP], or a closing <|endoftext|>); token arrays
    are taken as the content of a text and get the same special tokens around them.
    """

    def __init__(self, path: Path, max_length: int) -> None:
        # tokenizer.json files often carry a fixed padding/truncation (MiniLM's pads to 128): we batch
        # and pad ourselves, and truncate at the model's real max length.
        self._full = Tokenizer.from_file(str(path))
        self._full.no_padding()
        self._full.no_truncation()
        self._cut = Tokenizer.from_file(str(path))
        self._cut.no_padding()
        self._cut.enable_truncation(max_length, strategy="longest_first")
        self.max_length = max_length
        self.vocab_size = self._full.get_vocab_size(with_added_tokens=True)
        self.prefix, self.suffix = self._special_tokens_around_content()

    def _special_tokens_around_content(self) -> tuple[list[int], list[int]]:
        content = self._full.encode("hello", add_special_tokens=False).ids
        full = self._full.encode("hello").ids
        for start in range(len(full) - len(content) + 1):
            if full[start : start + len(content)] == content:
                return full[:start], full[start + len(content) :]
        return [], []

    def bounded(self, text: str) -> str:
        """A prefix of `text` that truncates to exactly what the whole text does, without tokenizing the
        whole text: an 8 MB string then costs what its first few thousand characters cost.

        The prefix is long enough when it holds more than `max_length` tokens and the word it cuts
        through starts after them (words are tokenized on their own, so the tokens before it are the
        whole text's). Otherwise it is lengthened fourfold, up to `MAX_CHARS_PER_TOKEN` characters per
        token: only a text that averages more (a run of a million spaces, one giant word) is cut short."""
        need = self.max_length
        cut, cap = need * CHARS_PER_TOKEN, need * MAX_CHARS_PER_TOKEN
        while cut < len(text):
            if cut >= cap:
                return text[:cap]
            enc = self._full.encode(text[:cut], add_special_tokens=False)
            words = enc.word_ids
            last_kept, cut_word = (words[need - 1], words[-1]) if len(words) > need else (None, None)
            if last_kept is not None and cut_word is not None and last_kept < cut_word:
                return text[:cut]
            cut = min(cut * 4, cap)
        return text

    def token_id(self, token: str) -> int | None:
        return self._full.token_to_id(token)

    def raw(self, text: str) -> list[int]:
        """Ids without special tokens or truncation (for prompts assembled by hand)."""
        return self._full.encode(text, add_special_tokens=False).ids

    def encode(self, inputs: Sequence[Input], truncate: bool = True) -> list[Seq]:
        """One sequence per input, in order. Raises InputError for bad token ids, or (without truncation)
        for an input over the max length."""
        out: list[Seq | None] = [None] * len(inputs)
        texts = [(i, x, self.bounded(x)) for i, x in enumerate(inputs) if isinstance(x, str)]
        if texts:
            tok = self._cut if truncate else self._full
            # One text: `encode`, since encode_batch hands even one text to a thread pool.
            cuts = [c for _, _, c in texts]
            encodings = [tok.encode(cuts[0])] if len(cuts) == 1 else tok.encode_batch(cuts)
            for (i, text, cut), enc in zip(texts, encodings, strict=True):
                if len(enc.ids) > self.max_length:
                    raise too_long(i, len(enc.ids), self.max_length, at_least=cut is not text)
                out[i] = Seq(enc.ids)
        room = self.max_length - len(self.prefix) - len(self.suffix)
        for i, x in enumerate(inputs):
            if out[i] is None:
                ids = list(x)
                bad = next((t for t in ids if not 0 <= t < self.vocab_size), None)
                if bad is not None:
                    raise InputError(
                        i, f"input[{i}] holds token id {bad}, outside the vocabulary (0-{self.vocab_size - 1})"
                    )
                if len(ids) > room and not truncate:
                    raise too_long(i, len(ids) + len(self.prefix) + len(self.suffix), self.max_length)
                out[i] = Seq(self.prefix + ids[:room] + self.suffix)
        return out  # type: ignore[return-value]

    def encode_pairs(self, pairs: Sequence[tuple[str, str]], truncate: bool = True) -> list[Seq]:
        """Sentence pairs with segment ids, as cross-encoders take them ([CLS] a [SEP] b [SEP])."""
        tok = self._cut if truncate else self._full
        cut = [(self.bounded(a), self.bounded(b)) for a, b in pairs]
        seqs = []
        for i, (enc, whole, part) in enumerate(zip(tok.encode_batch(cut), pairs, cut, strict=True)):
            if len(enc.ids) > self.max_length:
                raise too_long(i, len(enc.ids), self.max_length, at_least=part != whole)
            seqs.append(Seq(enc.ids, enc.type_ids))
        return seqs

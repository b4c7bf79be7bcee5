"""Tokenising texts, sentence pairs and token arrays with the model's own tokenizer.json."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer

from mlx_serve.core.errors import InputTooLong, InvalidInput
from mlx_serve.core.types import (
    Input,
    Truncation,
)
from mlx_serve.engine.batching import Seq


def too_long(index: int, tokens: int, limit: int, at_least: bool = False, chars: int | None = None) -> InputTooLong:
    """`at_least`: only the input's start was tokenized (a long text is never read whole), so the count is a
    floor; its length in characters says how much longer it is."""
    count = f"more than {tokens}" if at_least else str(tokens)
    size = f" ({chars:,} characters)" if at_least and chars is not None else ""
    return InputTooLong(
        f"has {count} tokens{size}, over the model's maximum of {limit}; shorten it or allow truncation",
        index=index,
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

    def offsets(
        self, index: int, text: str, special_tokens: bool = True
    ) -> tuple[list[int], list[tuple[int, int]], list[bool]]:
        """Ids, character offsets and which ids are special tokens, for TEI's /tokenize; an input over the
        model's maximum length is an error, as there (an answer is bounded by it)."""
        part = self.bounded(text)
        enc = self._full.encode(part, add_special_tokens=special_tokens)
        if len(enc.ids) > self.max_length:
            raise too_long(index, len(enc.ids), self.max_length, at_least=part is not text, chars=len(text))
        return list(enc.ids), [tuple(o) for o in enc.offsets], [bool(m) for m in enc.special_tokens_mask]

    def token_text(self, token_id: int) -> str:
        return self._full.id_to_token(token_id) or ""

    def decode(self, index: int, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        bad = next((t for t in ids if not 0 <= t < self.vocab_size), None)
        if bad is not None:
            raise InvalidInput(f"holds token id {bad}, outside the vocabulary (0-{self.vocab_size - 1})", index=index)
        return self._full.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_id(self, token: str) -> int | None:
        return self._full.token_to_id(token)

    def raw(self, text: str) -> list[int]:
        """Ids without special tokens or truncation (for prompts assembled by hand)."""
        return self._full.encode(text, add_special_tokens=False).ids

    def encode(self, inputs: Sequence[Input], truncate: bool | Truncation = True) -> list[Seq]:
        """One sequence per input, in order. Raises InputError for bad token ids, or (without truncation)
        for an input over the max length.

        Token arrays are the content of a text and get the model's special tokens around them, unless they
        already hold them (an array made by the model's own tokenizer with its defaults)."""
        cut = Truncation.of(truncate)
        limit = min(cut.max_tokens or self.max_length, self.max_length)
        out: list[Seq | None] = [None] * len(inputs)
        texts = [(i, x) for i, x in enumerate(inputs) if isinstance(x, str)]
        if texts and cut.side == "end" and limit == self.max_length:
            self._encode_texts(texts, cut.enabled, out)
        for i, x in texts:  # the other cuts: the text's content ids, cut below as an array's are
            if out[i] is None:
                part = self.bounded(x) if cut.side == "end" else x[-self.max_length * MAX_CHARS_PER_TOKEN :]
                out[i] = self._framed(i, self.raw(part), cut, limit, at_least=part != x)
        for i, x in enumerate(inputs):
            if out[i] is None:
                ids = list(x)
                bad = next((t for t in ids if not 0 <= t < self.vocab_size), None)
                if bad is not None:
                    raise InvalidInput(
                        f"holds token id {bad}, outside the vocabulary (0-{self.vocab_size - 1})", index=i
                    )
                if self._is_framed(ids):
                    ids = ids[len(self.prefix) : len(ids) - len(self.suffix)]
                out[i] = self._framed(i, ids, cut, limit)
        return out  # type: ignore[return-value]

    def _encode_texts(self, texts: list[tuple[int, str]], truncate: bool, out: list[Seq | None]) -> None:
        tok = self._cut if truncate else self._full
        cuts = [self.bounded(x) for _, x in texts]
        # One text: `encode`, since encode_batch hands even one text to a thread pool.
        encodings = [tok.encode(cuts[0])] if len(cuts) == 1 else tok.encode_batch(cuts)
        for (i, text), part, enc in zip(texts, cuts, encodings, strict=True):
            if len(enc.ids) > self.max_length:
                raise too_long(i, len(enc.ids), self.max_length, at_least=part is not text, chars=len(text))
            out[i] = Seq(enc.ids)

    def _is_framed(self, ids: list[int]) -> bool:
        ends = len(self.prefix) + len(self.suffix)
        return (
            ends > 0
            and len(ids) >= ends
            and ids[: len(self.prefix)] == self.prefix
            and ids[len(ids) - len(self.suffix) :] == self.suffix
        )

    def _framed(self, index: int, content: list[int], cut: Truncation, limit: int, at_least: bool = False) -> Seq:
        """Content ids within the model's special tokens, cut to `limit` tokens in all."""
        room = max(limit - len(self.prefix) - len(self.suffix), 1)
        if len(content) > room:
            if not cut.enabled:
                raise too_long(index, len(content) + len(self.prefix) + len(self.suffix), limit, at_least)
            content = content[:room] if cut.side == "end" else content[len(content) - room :]
        return Seq(self.prefix + content + self.suffix)

    def head(self, text: str, max_tokens: int) -> str:
        """The start of `text` that holds its first `max_tokens` tokens (Cohere's `max_tokens_per_doc`)."""
        part = self.bounded(text)
        offsets = self._full.encode(part, add_special_tokens=False).offsets
        return text if len(offsets) <= max_tokens else text[: offsets[max_tokens - 1][1]]

    def encode_pairs(self, pairs: Sequence[tuple[str, str]], truncate: bool | Truncation = True) -> list[Seq]:
        """Sentence pairs with segment ids, as cross-encoders take them ([CLS] a [SEP] b [SEP]); a pair over
        the length is cut longest-first, as sentence-transformers' CrossEncoder does."""
        tok = self._cut if Truncation.of(truncate).enabled else self._full
        cut = [(self.bounded(a), self.bounded(b)) for a, b in pairs]
        seqs = []
        for i, (enc, whole, part) in enumerate(zip(tok.encode_batch(cut), pairs, cut, strict=True)):
            if len(enc.ids) > self.max_length:
                raise too_long(
                    i, len(enc.ids), self.max_length, at_least=part != whole, chars=len(whole[0]) + len(whole[1])
                )
            seqs.append(Seq(enc.ids, enc.type_ids))
        return seqs

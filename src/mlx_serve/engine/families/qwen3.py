"""Qwen3 (Qwen3-Embedding-*, Qwen3-Reranker-*): causal decoders through mlx-lm (decoder.py), as their model
cards run them.

- Embedding: last-token pooling unless the sentence-transformers files say otherwise, L2 normalisation;
  queries carry an instruction, `Instruct: {task}\\nQuery:{query}`, documents none.
- Reranker: the card's prompt around `<Instruct>: ...\\n<Query>: ...\\n<Document>: ...`; the score is
  P("yes") from a softmax over the last position's "no" and "yes" logits (reranker.py: the raw score is
  their difference, whose sigmoid that is).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import mlx.core as mx

from mlx_serve.core.types import Truncation
from mlx_serve.engine.batching import BatchRunner, Seq
from mlx_serve.engine.embedder import Embedder
from mlx_serve.engine.families import Family, LoadContext, UnsupportedArchitecture
from mlx_serve.engine.families.decoder import DecoderStack, convert
from mlx_serve.engine.loader import max_seq_length
from mlx_serve.engine.pooling import pool
from mlx_serve.engine.reranker import Reranker
from mlx_serve.engine.tokenizer import TextTokenizer, too_long

QUERY_TEMPLATE = "Instruct: {instruction}\nQuery:{text}"
DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
RERANKER_MAX_LENGTH = 8192  # Qwen3-Reranker's model card
PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


class Qwen3Reranker(Reranker):
    def __init__(
        self,
        name: str,
        tokenizer: TextTokenizer,
        stack: DecoderStack,
        streams: Sequence[mx.Stream],
        default_instruction: str = DEFAULT_INSTRUCTION,
    ) -> None:
        no, yes = tokenizer.token_id("no"), tokenizer.token_id("yes")
        if no is None or yes is None:
            raise UnsupportedArchitecture(
                f"{name}: the tokenizer has no single 'yes'/'no' tokens, so it is not a Qwen3 reranker"
            )
        self.stack = stack
        self.answer_ids = [no, yes]
        self.default_instruction = default_instruction
        self.prefix = tokenizer.raw(PREFIX)
        self.suffix = tokenizer.raw(SUFFIX)
        runner = BatchRunner(self._head, pad_id=stack.pad_id, padding_side="right", streams=streams)
        super().__init__(name, tokenizer, runner, stack.arrays)

    def _head(self, ids: mx.array, type_ids: mx.array, mask: mx.array, padded: bool) -> mx.array:
        last = pool(self.stack(ids, mask, padded), mask, "last")
        logits = self.stack.token_logits(last, self.answer_ids).astype(mx.float32)
        return logits[:, 1:] - logits[:, :1]  # log-odds of "yes"

    def tokenize(
        self, query: str, documents: Sequence[str], instruction: str | None, truncate: bool | Truncation
    ) -> list[Seq]:
        # As the model card: the middle is truncated so that the prefix and suffix always survive.
        cut = Truncation.of(truncate)
        limit = min(cut.max_tokens or self.max_length, self.max_length)
        room = limit - len(self.prefix) - len(self.suffix)
        task = instruction or self.default_instruction
        seqs = []
        for i, doc in enumerate(documents):
            text = f"<Instruct>: {task}\n<Query>: {query}\n<Document>: {doc}"
            part = self.tokenizer.bounded(text)
            middle = self.tokenizer.raw(part)
            if len(middle) > room and not cut.enabled:
                count = len(middle) + len(self.prefix) + len(self.suffix)
                raise too_long(i, count, limit, at_least=part is not text)
            seqs.append(Seq(self.prefix + middle[:room] + self.suffix))
        return seqs


def _check(config: dict[str, Any], type: str) -> None:
    archs = config.get("architectures") or []
    if type == "reranker" and not any(a.endswith("ForCausalLM") for a in archs):
        name = archs[0] if archs else "qwen3"
        raise UnsupportedArchitecture(f"{name} has no language-model head: it cannot rerank as Qwen3-Reranker does")


def _load(ctx: LoadContext) -> Any:
    stack = DecoderStack.load(ctx.path, ctx.dtype)
    mx.eval(stack.arrays())
    tokenizer_file = ctx.path / "tokenizer.json"
    if ctx.type == "reranker":
        limit = min(RERANKER_MAX_LENGTH, int(ctx.config.get("max_position_embeddings", RERANKER_MAX_LENGTH)))
        return Qwen3Reranker(
            ctx.name, TextTokenizer(tokenizer_file, limit), stack, ctx.streams, ctx.instruction or DEFAULT_INSTRUCTION
        )
    return Embedder(
        ctx.name,
        stack,
        TextTokenizer(tokenizer_file, max_seq_length(ctx.path, ctx.config)),
        ctx.layout,
        int(ctx.config["hidden_size"]),
        stack.pad_id,
        stack.arrays,
        ctx.streams,
        query_template=QUERY_TEMPLATE,
        default_instruction=ctx.instruction or DEFAULT_INSTRUCTION,
    )


FAMILY = Family(
    name="qwen3",
    model_types=frozenset({"qwen3"}),
    described="Qwen3 (Qwen3-Embedding-*, Qwen3-Reranker-*)",
    load=_load,
    check=_check,
    convert=convert,
    default_pooling="last",
    quantizable=True,
    types=frozenset({"embedding", "reranker"}),
)

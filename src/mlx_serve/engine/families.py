"""The model families this server runs, told from a folder's config.json; and one sentence for any other.

A model the server cannot run faithfully is refused when it is pulled, never served approximately: a
decoder run as the wrong architecture, or without the attention its config asks for, gives vectors at
cosine -0.16 to the real ones with status 200.
"""

from __future__ import annotations

from typing import Any

ENCODERS = {"bert", "roberta", "xlm-roberta", "mpnet", "modernbert"}  # engine/bert.py, engine/modernbert.py
DECODERS = {"qwen3"}  # causal, through mlx-lm (engine/decoder.py)
BIDIRECTIONAL = {"gemma3_text"}  # decoder weights run as an encoder (engine/gemma3.py)
SUPPORTED = (
    "BERT (all-MiniLM-L6-v2, bge-*-en-v1.5, e5-*-v2, ms-marco cross-encoders), "
    "XLM-RoBERTa and RoBERTa (bge-m3, multilingual-e5-*, paraphrase-multilingual-*, bge-reranker-v2-m3, "
    "bge-reranker-base/large), MPNet (all-mpnet-base-v2, multi-qa-mpnet-base-*), "
    "ModernBERT (gte-modernbert-base, modernbert-embed-base, gte-reranker-modernbert-base), "
    "Qwen3 (Qwen3-Embedding-*, Qwen3-Reranker-*), and Gemma3 text encoders with bidirectional attention "
    "(EmbeddingGemma)"
)
WHY_NOT = {
    "nomic_bert": "NomicBERT (nomic-embed-text) runs code of its own from the Hugging Face Hub "
    "(trust_remote_code), with no reference implementation in transformers to check a port against",
}


class UnsupportedArchitecture(ValueError):
    pass


def family(config: dict[str, Any]) -> str:
    return str(config.get("model_type", ""))


def check(config: dict[str, Any], type: str) -> None:
    """Raise UnsupportedArchitecture, in one sentence, unless this server runs the model as `type`."""
    kind = family(config)
    archs = ", ".join(config.get("architectures") or []) or kind or "unknown"
    if kind in ENCODERS or kind in DECODERS:
        return
    if kind in BIDIRECTIONAL:
        if not config.get("use_bidirectional_attention"):
            raise UnsupportedArchitecture(
                f"{archs} is a causal Gemma3 language model, not an embedding model this server runs "
                "(EmbeddingGemma's config sets use_bidirectional_attention)"
            )
        if type != "embedding":
            raise UnsupportedArchitecture(f"{archs} (a Gemma3 encoder) embeds; it does not rerank")
        return
    reason = WHY_NOT.get(kind, "is not an architecture this server runs")
    raise UnsupportedArchitecture(
        f"{archs} (model_type {kind or 'missing'!r}): {reason}. This server runs {SUPPORTED}."
    )

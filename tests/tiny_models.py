"""Tiny models with random weights in the real Hugging Face layout (config.json, model.safetensors,
tokenizer.json), written by transformers itself, for loading through mlx-serve's real loading code."""

from __future__ import annotations

import json
from pathlib import Path

CORPUS = [
    "The capital of China is Beijing.",
    "Gravity is a force that attracts two bodies towards each other.",
    "What is the capital of China?",
    "Explain gravity",
    "Given a web search query, retrieve relevant passages that answer the query",
    "Judge whether the Document meets the requirements based on the Query and the Instruct provided.",
    'Note that the answer can only be "yes" or "no".',
    "system user assistant Instruct Query Document",
    "Grüße aus Köln, ça va? 日本語 emoji 🚀",
] * 4
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]


def qwen_tokenizer(path: Path, append_eos: bool) -> None:
    """Byte-level BPE like Qwen's, with its chat special tokens and "yes"/"no" as whole tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=QWEN_SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer)
    tok.add_tokens(["yes", "no"])
    if append_eos:  # Qwen3-Embedding's tokenizer appends <|endoftext|> to every text
        eos = tok.token_to_id("<|endoftext|>")
        tok.post_processor = processors.TemplateProcessing(
            single="$A <|endoftext|>",
            pair="$A <|endoftext|> $B <|endoftext|>",
            special_tokens=[("<|endoftext|>", eos)],
        )
    tok.save(str(path / "tokenizer.json"))


def qwen3(path: Path, kind: str, seed: int = 0, tie: bool = True) -> Path:
    """kind: "embedding" (saved as the bare Qwen3Model, with sentence-transformers files) or "reranker"
    (a Qwen3ForCausalLM)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3Model

    path.mkdir(parents=True, exist_ok=True)
    qwen_tokenizer(path, append_eos=kind == "embedding")
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(path / "tokenizer.json")).get_vocab_size()
    config = Qwen3Config(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        tie_word_embeddings=tie,
        torch_dtype="float32",
        architectures=["Qwen3ForCausalLM"],
        eos_token_id=0,
        pad_token_id=0,
    )
    model = _randomized((Qwen3Model if kind == "embedding" else Qwen3ForCausalLM)(config), seed)
    model.save_pretrained(path, safe_serialization=True)
    config_data = json.loads((path / "config.json").read_text())
    config_data["architectures"] = ["Qwen3ForCausalLM"]
    (path / "config.json").write_text(json.dumps(config_data))
    if kind == "embedding":
        (path / "modules.json").write_text(
            json.dumps(
                [
                    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                    {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
                ]
            )
        )
        (path / "1_Pooling").mkdir(exist_ok=True)
        (path / "1_Pooling" / "config.json").write_text(
            json.dumps({"word_embedding_dimension": 64, "pooling_mode_lasttoken": True, "include_prompt": True})
        )
        (path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 128}))
    return path


def bert_cross_encoder(path: Path, seed: int = 0) -> Path:
    """A BertForSequenceClassification with one label, and a WordPiece tokenizer that encodes pairs."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertForSequenceClassification

    path.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(CORPUS, trainers.WordPieceTrainer(vocab_size=300, special_tokens=specials))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    tok.save(str(path / "tokenizer.json"))
    config = BertConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=1,
        pad_token_id=0,
    )
    model = _randomized(BertForSequenceClassification(config), seed)
    model.save_pretrained(path, safe_serialization=True)
    return path


def _randomized(model, seed: int):
    """Random weights of a realistic scale (so that scores are not all 0.5), the same for a seed."""
    import torch

    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model.eval()

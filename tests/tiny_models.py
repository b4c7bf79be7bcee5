"""Tiny models with random weights in the real Hugging Face layout (config.json, model.safetensors,
tokenizer.json), written by transformers itself, for loading through mlx-serve's real loading code."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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


def bert_cross_encoder(
    path: Path, seed: int = 0, labels: tuple[str, ...] = (), problem_type: str | None = None
) -> Path:
    """A BertForSequenceClassification with one label (a cross-encoder), or with `labels` (a classifier;
    `problem_type` "multi_label_classification" for sigmoids), and a WordPiece tokenizer that encodes pairs."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertForSequenceClassification

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
    config = tiny_bert_config(vocab_size=tok.get_vocab_size(), num_labels=len(labels) or 1)
    if labels:
        config.id2label = dict(enumerate(labels))
        config.label2id = {label: i for i, label in enumerate(labels)}
    if problem_type:
        config.problem_type = problem_type
    model = _randomized(BertForSequenceClassification(config), seed)
    model.save_pretrained(path, safe_serialization=True)
    return path


def tiny_bert_config(**overrides: Any) -> Any:
    """The BERT every tiny BERT-family model here has: vocabulary 300, 32 wide, 2 layers of 4 heads, 128
    positions."""
    from transformers import BertConfig

    base = {
        "vocab_size": 300,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "max_position_embeddings": 128,
        "pad_token_id": 0,
    }
    return BertConfig(**{**base, **overrides})


def _randomized(model, seed: int):
    """Random weights of a realistic scale (so that scores are not all 0.5), the same for a seed."""
    import torch

    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model.eval()


def wordpiece_tokenizer(path: Path, specials: list[str], single: str, pair: str, max_length: int) -> dict[str, int]:
    """A WordPiece tokenizer.json with these special tokens (their ids: their order), framing texts as
    `single`/`pair` say; and the tokenizer_config.json transformers needs to load it. Returns the ids."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    unk = next(t for t in specials if "unk" in t.lower())
    tok = Tokenizer(models.WordPiece(unk_token=unk))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(CORPUS, trainers.WordPieceTrainer(vocab_size=300, special_tokens=specials))
    ids = {t: tok.token_to_id(t) for t in specials}
    used = [t for t in specials if t in single or t in pair]
    tok.post_processor = processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=[(t, ids[t]) for t in used]
    )
    tok.save(str(path / "tokenizer.json"))
    named = {"pad_token": "pad", "unk_token": "unk", "bos_token": "bos", "eos_token": "eos", "cls_token": "cls"}
    config: dict = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_length}
    for key, word in named.items():
        match = next((t for t in specials if word in t.lower()), None)
        if match is not None:
            config[key] = match
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return ids


def sentence_transformers_files(
    path: Path,
    hidden: int,
    pooling: str | list[str],
    normalize: bool = True,
    dense: list[tuple[int, int]] = (),  # type: ignore[assignment]
    prompts: dict[str, str] | None = None,
    max_seq_length: int = 64,
    seed: int = 0,
) -> None:
    """modules.json and each module's folder, as sentence-transformers saves them; Dense weights random."""
    import torch
    from safetensors.torch import save_file

    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]
    pool_dir = path / "1_Pooling"
    pool_dir.mkdir(exist_ok=True)
    pool_config = {"embedding_dimension": hidden, "pooling_mode": pooling, "include_prompt": True}
    (pool_dir / "config.json").write_text(json.dumps(pool_config))
    modules.append({"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"})
    torch.manual_seed(seed)
    for i, (n_in, n_out) in enumerate(dense):
        folder = path / f"{len(modules)}_Dense"
        folder.mkdir(exist_ok=True)
        config = {
            "in_features": n_in,
            "out_features": n_out,
            "bias": i == 0,
            "activation_function": "torch.nn.modules.linear.Identity" if i else "torch.nn.modules.activation.Tanh",
        }
        (folder / "config.json").write_text(json.dumps(config))
        weights = {"linear.weight": torch.randn(n_out, n_in) * 0.2}
        if config["bias"]:
            weights["linear.bias"] = torch.randn(n_out) * 0.2
        save_file(weights, str(folder / "model.safetensors"))
        modules.append(
            {
                "idx": len(modules),
                "name": str(len(modules)),
                "path": folder.name,
                "type": "sentence_transformers.models.Dense",
            }
        )
    if normalize:  # an empty folder of its own, as sentence-transformers saves it
        folder = f"{len(modules)}_Normalize"
        (path / folder).mkdir(exist_ok=True)
        modules.append(
            {
                "idx": len(modules),
                "name": str(len(modules)),
                "path": folder,
                "type": "sentence_transformers.models.Normalize",
            }
        )
    (path / "modules.json").write_text(json.dumps(modules))
    (path / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": max_seq_length, "do_lower_case": False})
    )
    if prompts is not None:
        st = {"prompts": prompts, "default_prompt_name": None, "similarity_fn_name": "cosine"}
        (path / "config_sentence_transformers.json").write_text(json.dumps(st))


ROBERTA_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # ids 0-4: <pad> is 1, as in RoBERTa


def xlm_roberta(path: Path, kind: str, seed: int = 0, labels: int = 1, prompts: dict[str, str] | None = None) -> Path:
    """kind: "embedding" (an XLMRobertaModel with sentence-transformers files, mean pooling, like
    multilingual-e5) or "reranker" (XLMRobertaForSequenceClassification, like bge-reranker-v2-m3)."""
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification, XLMRobertaModel

    path.mkdir(parents=True, exist_ok=True)
    ids = wordpiece_tokenizer(path, ROBERTA_SPECIALS, "<s> $A </s>", "<s> $A </s> </s> $B </s>", 128)
    config = XLMRobertaConfig(
        vocab_size=300,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=130,  # 128 positions after the padding id's
        type_vocab_size=1,
        pad_token_id=ids["<pad>"],
        bos_token_id=ids["<s>"],
        eos_token_id=ids["</s>"],
        num_labels=labels,
    )
    cls = XLMRobertaModel if kind == "embedding" else XLMRobertaForSequenceClassification
    _randomized(cls(config), seed).save_pretrained(path, safe_serialization=True)
    if kind == "embedding":
        sentence_transformers_files(path, 32, "mean", prompts=prompts, max_seq_length=100)
    return path


def mpnet(path: Path, seed: int = 0) -> Path:
    """An MPNetModel (all-mpnet-base-v2's architecture) with weighted-mean pooling and two Dense modules,
    so that every sentence-transformers module this server reads is exercised."""
    from transformers import MPNetConfig, MPNetModel

    path.mkdir(parents=True, exist_ok=True)
    ids = wordpiece_tokenizer(path, ROBERTA_SPECIALS, "<s> $A </s>", "<s> $A </s> </s> $B </s>", 128)
    config = MPNetConfig(
        vocab_size=300,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=514,
        pad_token_id=ids["<pad>"],
        bos_token_id=ids["<s>"],
        eos_token_id=ids["</s>"],
    )
    _randomized(MPNetModel(config), seed).save_pretrained(path, safe_serialization=True)
    sentence_transformers_files(path, 32, "weightedmean", dense=[(32, 24), (24, 16)], max_seq_length=200, seed=seed)
    return path


EMBEDDING_GEMMA_PROMPTS = {
    "query": "task: search result | query: ",
    "document": "title: none | text: ",
    "Clustering": "task: clustering | query: ",
}


def embedding_gemma(path: Path, seed: int = 0) -> Path:
    """A Gemma3 text model in EmbeddingGemma's layout: bidirectional attention, local layers with a small
    sliding window, mean pooling, two Dense modules, Normalize, its task prompts."""
    from transformers import Gemma3TextConfig, Gemma3TextModel

    path.mkdir(parents=True, exist_ok=True)
    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    ids = wordpiece_tokenizer(path, specials, "<bos> $A <eos>", "<bos> $A <eos> $B <eos>", 256)
    config = Gemma3TextConfig(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=16,
        sliding_window=4,  # small, so that texts are longer than the window
        layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
        use_bidirectional_attention=True,
        query_pre_attn_scalar=16,
        max_position_embeddings=256,
        pad_token_id=ids["<pad>"],
        bos_token_id=ids["<bos>"],
        eos_token_id=ids["<eos>"],
    )
    _randomized(Gemma3TextModel(config), seed).save_pretrained(path, safe_serialization=True)
    sentence_transformers_files(
        path, 64, "mean", dense=[(64, 96), (96, 64)], prompts=EMBEDDING_GEMMA_PROMPTS, max_seq_length=200, seed=seed
    )
    return path


BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def bert(path: Path, seed: int = 0) -> Path:
    """A BertModel in all-MiniLM-L6-v2's layout (mean pooling, Normalize) at a fraction of its size:
    vocabulary 300, 32 wide, 2 layers of 4 heads, 128 positions."""
    from transformers import BertModel

    path.mkdir(parents=True, exist_ok=True)
    wordpiece_tokenizer(path, BERT_SPECIALS, "[CLS] $A [SEP]", "[CLS] $A [SEP] $B:1 [SEP]:1", 128)
    config = tiny_bert_config()
    _randomized(BertModel(config), seed).save_pretrained(path, safe_serialization=True)
    sentence_transformers_files(path, 32, "mean", max_seq_length=128)
    return path


def modernbert(path: Path, kind: str, seed: int = 0) -> Path:
    """kind: "embedding" (a ModernBertModel with sentence-transformers files, CLS pooling like
    gte-modernbert-base) or "reranker" (ModernBertForSequenceClassification). Local layers see 2 tokens
    either way, so that texts are longer than their window."""
    from transformers import ModernBertConfig, ModernBertForSequenceClassification, ModernBertModel

    path.mkdir(parents=True, exist_ok=True)
    ids = wordpiece_tokenizer(path, BERT_SPECIALS, "[CLS] $A [SEP]", "[CLS] $A [SEP] $B [SEP]", 256)
    config = ModernBertConfig(
        vocab_size=300,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=64,
        local_attention=4,
        global_attn_every_n_layers=2,
        max_position_embeddings=256,
        pad_token_id=ids["[PAD]"],
        bos_token_id=ids["[CLS]"],
        eos_token_id=ids["[SEP]"],
        cls_token_id=ids["[CLS]"],
        sep_token_id=ids["[SEP]"],
        num_labels=1,
    )
    cls = ModernBertModel if kind == "embedding" else ModernBertForSequenceClassification
    _randomized(cls(config), seed).save_pretrained(path, safe_serialization=True)
    if kind == "embedding":
        sentence_transformers_files(path, 32, "cls", max_seq_length=200)
    return path


def splade(path: Path, seed: int = 0, pooling: str = "max", activation: str = "relu", legacy: bool = True) -> Path:
    """A BertForMaskedLM saved by sentence-transformers as a SparseEncoder (MLM transformer +
    SpladePooling), as naver's and opensearch's SPLADE models are: `legacy` writes the MLMTransformer
    module, else the newer Transformer with transformer_task fill-mask. Query and document prompts."""
    from sentence_transformers import SparseEncoder
    from sentence_transformers.sparse_encoder.modules import MLMTransformer, SpladePooling
    from transformers import BertForMaskedLM

    source = path.with_name(path.name + "-mlm")
    source.mkdir(parents=True, exist_ok=True)
    wordpiece_tokenizer(source, BERT_SPECIALS, "[CLS] $A [SEP]", "[CLS] $A [SEP] $B:1 [SEP]:1", 128)
    config = tiny_bert_config()
    _randomized(BertForMaskedLM(config), seed).save_pretrained(source)
    if legacy:
        transformer = MLMTransformer(str(source))
    else:
        from sentence_transformers.base.modules import Transformer

        transformer = Transformer(str(source), transformer_task="fill-mask")
    encoder = SparseEncoder(
        modules=[transformer, SpladePooling(pooling, activation)],
        prompts={"query": "query: ", "document": "passage: "},
    )
    encoder.save(str(path))
    return path


def bge_m3(path: Path, seed: int = 0, heads: tuple[str, ...] = ("sparse", "colbert")) -> Path:
    """An XLMRobertaModel in BGE-M3's layout: cls pooling and Normalize (sentence-transformers' files), and
    FlagEmbedding's heads beside the weights as PyTorch pickles: sparse_linear.pt (D -> 1) and
    colbert_linear.pt (D -> D)."""
    import torch

    xlm_roberta(path, "embedding", seed=seed)
    sentence_transformers_files(path, 32, "cls", max_seq_length=100)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": 100,
        "bos_token": "<s>",
        "cls_token": "<s>",
        "eos_token": "</s>",
        "sep_token": "</s>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "mask_token": "<mask>",
    }
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    from transformers import AutoTokenizer, XLMRobertaModel

    torch.manual_seed(seed + 1000)
    for head, width in (("sparse", 1), ("colbert", 32)):
        if head in heads:
            linear = torch.nn.Linear(32, width)
            with torch.no_grad():
                linear.weight.normal_(0, 0.3)
                linear.bias.normal_(0, 0.1)
                if head == "sparse":  # centred on the corpus's tokens: about half of them weigh above 0
                    tokens = AutoTokenizer.from_pretrained(path)(CORPUS[:9], padding=True, return_tensors="pt")
                    hidden = XLMRobertaModel.from_pretrained(path).eval()(**tokens).last_hidden_state
                    values = linear(hidden[tokens["attention_mask"].bool()]).flatten().unique().sort().values
                    # Zero halfway between two tokens' values, never at one: a weight a rounding away from
                    # zero would make "the same non-zero ids" a coin toss.
                    middle = len(values) // 2
                    linear.bias -= (values[middle - 1] + values[middle]) / 2
            torch.save(linear.state_dict(), path / f"{head}_linear.pt")
    return path


def scaled(folder: Path, dest: Path, factor: float, layer: int = 0) -> Path:
    """The model with one layer's feed-forward output scaled: the residual stream passes float16's 65504
    there (as trained models' activations do, tiny random ones never), before the LayerNorm; float32 and
    the LayerNorm after it are untroubled."""
    import shutil

    import numpy
    from safetensors.numpy import load_file, save_file

    shutil.copytree(folder, dest)
    weights_file = next(dest.glob("*.safetensors"))
    weights = load_file(weights_file)
    key = next(k for k in weights if f"layer.{layer}.output.dense.weight" in k)
    weights[key] = weights[key] * numpy.float32(factor)
    save_file(weights, weights_file, metadata={"format": "pt"})
    return dest

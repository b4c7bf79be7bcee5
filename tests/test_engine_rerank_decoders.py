"""Decoder embeddings and rerankers against transformers on PyTorch, on tiny random models in the real
Hugging Face layout, loaded through mlx-serve's real loading code; in float32 and in the half precisions
a GPU runs them in (MLX runs those on a CPU too), against the float32 reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mlx_serve.engine import load_model
from mlx_serve.engine.families.qwen3 import DEFAULT_INSTRUCTION
from mlx_serve.engine.families.qwen3 import PREFIX as QWEN3_PREFIX
from mlx_serve.engine.families.qwen3 import QUERY_TEMPLATE as QWEN3_QUERY_TEMPLATE
from mlx_serve.engine.families.qwen3 import SUFFIX as QWEN3_SUFFIX

from . import tiny_models

TEXTS = [
    "The capital of China is Beijing.",
    "Explain gravity",
    "a",
    "Grüße aus Köln 🚀 " * 5,
    "Gravity is a force that attracts two bodies towards each other. " * 3,
]


# How far a half-precision run may be from the float32 reference: float16 keeps 11 bits of mantissa,
# bfloat16 8.
TOLERANCE = {"float32": 1e-4, "float16": 3e-3, "bfloat16": 2e-2}
DTYPES = pytest.mark.parametrize("dtype", list(TOLERANCE))


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {
        "qwen3-embedding": tiny_models.qwen3(root / "qwen3-embedding", "embedding", seed=1),
        "qwen3-reranker": tiny_models.qwen3(root / "qwen3-reranker", "reranker", seed=2),
        "qwen3-reranker-untied": tiny_models.qwen3(root / "qwen3-reranker-untied", "reranker", seed=3, tie=False),
        "cross-encoder": tiny_models.bert_cross_encoder(root / "cross-encoder", seed=4),
    }


def hf_tokenizer(path: Path):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path / "tokenizer.json"))


@DTYPES
def test_qwen3_embeddings_match_transformers(models, dtype) -> None:
    import torch
    from transformers import Qwen3Model

    path = models["qwen3-embedding"]
    ours = load_model("e", path, type="embedding", dtype=dtype)
    # Queries carry the instruction, as the model card writes them.
    query = QWEN3_QUERY_TEMPLATE.format(instruction=DEFAULT_INSTRUCTION, text="What is the capital of China?")
    got = np.concatenate(
        [
            ours.embed(TEXTS, 4096).vectors,
            ours.embed(["What is the capital of China?"], 4096, DEFAULT_INSTRUCTION).vectors,
        ]
    )

    ref_model = Qwen3Model.from_pretrained(path, torch_dtype=torch.float32).eval()
    tok = hf_tokenizer(path)
    expected = []
    for text in [*TEXTS, query]:
        ids = tok.encode(text).ids
        assert ids[-1] == tok.token_to_id("<|endoftext|>")  # the tokenizer appends it, as Qwen3-Embedding's does
        with torch.no_grad():
            hidden = ref_model(torch.tensor([ids])).last_hidden_state[0, -1]
        expected.append(torch.nn.functional.normalize(hidden, dim=-1).numpy())
    np.testing.assert_allclose(got, np.stack(expected), atol=TOLERANCE[dtype])
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)  # normalised in float32


@DTYPES
def test_a_padded_batch_equals_each_text_alone(models, dtype) -> None:
    for name, kind in (("qwen3-embedding", "embedding"), ("cross-encoder", "reranker"), ("qwen3-reranker", "reranker")):
        model = load_model(name, models[name], type=kind, dtype=dtype)
        if kind == "embedding":
            together = model.embed(TEXTS, 1 << 20).vectors
            alone = np.stack([model.embed([t], 1 << 20).vectors[0] for t in TEXTS])
        else:
            together = model.rerank("What is the capital of China?", TEXTS, 1 << 20)
            alone = np.array([model.rerank("What is the capital of China?", [t], 1 << 20)[0] for t in TEXTS])
        np.testing.assert_allclose(together, alone, atol=1e-5 if dtype == "float32" else 1e-3, err_msg=name)


@DTYPES
@pytest.mark.parametrize("name", ["qwen3-reranker", "qwen3-reranker-untied"])
def test_qwen3_reranker_p_yes_matches_transformers(models, name, dtype) -> None:
    import torch
    from transformers import Qwen3ForCausalLM

    path = models[name]
    ours = load_model(name, path, type="reranker", dtype=dtype)
    query = "What is the capital of China?"
    got = ours.rerank(query, TEXTS, 4096)

    ref_model = Qwen3ForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()
    tok = hf_tokenizer(path)
    no, yes = tok.token_to_id("no"), tok.token_to_id("yes")
    expected = []
    for doc in TEXTS:
        text = f"<Instruct>: {DEFAULT_INSTRUCTION}\n<Query>: {query}\n<Document>: {doc}"
        ids = [
            *tok.encode(QWEN3_PREFIX, add_special_tokens=False).ids,
            *tok.encode(text, add_special_tokens=False).ids,
            *tok.encode(QWEN3_SUFFIX, add_special_tokens=False).ids,
        ]
        with torch.no_grad():
            logits = ref_model(torch.tensor([ids])).logits[0, -1]
        expected.append(torch.softmax(torch.stack([logits[no], logits[yes]]), dim=0)[1].item())
    np.testing.assert_allclose(got, expected, atol=TOLERANCE[dtype])
    assert np.ptp(got) > 1e-3, "scores should differ between documents"


def test_qwen3_reranker_instruction_changes_scores(models) -> None:
    ours = load_model("r", models["qwen3-reranker"], type="reranker")
    default = ours.rerank("q", TEXTS, 4096)
    custom = ours.rerank("q", TEXTS, 4096, instruction="Find recipes")
    assert not np.allclose(default, custom)


@DTYPES
def test_cross_encoder_matches_bert_for_sequence_classification(models, dtype) -> None:
    import torch
    from transformers import BertForSequenceClassification

    path = models["cross-encoder"]
    ours = load_model("ce", path, type="reranker", dtype=dtype)
    query = "What is the capital of China?"
    got = ours.rerank(query, TEXTS, 4096)

    ref = BertForSequenceClassification.from_pretrained(path).eval()
    tok = hf_tokenizer(path)
    expected = []
    for doc in TEXTS:
        enc = tok.encode(query, doc)
        with torch.no_grad():
            logit = ref(input_ids=torch.tensor([enc.ids]), token_type_ids=torch.tensor([enc.type_ids])).logits[0, 0]
        expected.append(torch.sigmoid(logit).item())
    np.testing.assert_allclose(got, expected, atol=TOLERANCE[dtype])


def test_truncation_off_names_the_input_and_its_length(models) -> None:
    from mlx_serve.core.errors import InvalidInput

    model = load_model("e", models["qwen3-embedding"], type="embedding")
    long_text = "gravity " * 400
    assert model.embed(["short", long_text], 4096).token_counts[1] == model.max_length
    with pytest.raises(InvalidInput) as err:
        model.embed(["short", long_text], 4096, truncate=False)
    assert err.value.index == 1 and "input[1]" in str(err.value) and str(model.max_length) in str(err.value)

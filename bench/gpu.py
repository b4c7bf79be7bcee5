"""mlx-serve on a GPU against its peers on the same GPU, in one run (see README: Performance on a GPU).

Models have random weights in the real shapes (all-MiniLM-L6-v2 with its real tokenizer, Qwen3-Embedding-
0.6B, Qwen3-Reranker-0.6B, a MiniLM-shaped BERT cross-encoder), built here with transformers and pulled
into a store as a user would. Measured, 16 clients x 32 texts x ~150 tokens unless said otherwise:
- the engine in-process (budgets 4096 and 16384) and, for Qwen3, a bare mlx-lm forward pass;
- the server over HTTP (float and base64; varied lengths; 64 concurrent single-text clients against the
  same 64 requests in a row; one short text), its memory afterwards (nvidia-smi and MLX's own), and its
  exit (code, and no SIGABRT in the log);
- rerankers over HTTP (pairs/s, errors) and their peers;
- the peers: sentence-transformers fp16 and fp32 (embeddings, CrossEncoder) and transformers with the
  Qwen3-Reranker model card's recipe, in a process of their own.

- the peak under a burst with max_inflight_bytes (auto) and without (0), and the first pass of varied
  lengths with warm_shapes and without, in the same run (`memory`);
- in-process, the bound kept by splitting batches against MLX's memory limit, and neither (`bound`);
- what building the shapes leaves resident (`residue`).

Usage: python3 bench/gpu.py build|engine|server|memory|bound|residue|peers|all [--dir DIR] [--out FILE] [--quick]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]
WORDS = [
    "model",
    "server",
    "embedding",
    "vector",
    "search",
    "query",
    "document",
    "rank",
    "local",
    "machine",
    "memory",
    "batch",
    "token",
    "cosine",
    "latency",
    "throughput",
    "apple",
    "silicon",
    "linux",
    "python",
    "request",
    "response",
    "cache",
    "gravity",
    "capital",
    "china",
    "beijing",
]
MINILM_FILES = [
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
    "modules.json",
    "sentence_bert_config.json",
    "1_Pooling/config.json",
]
RESULTS: dict = {}


def log(*parts: object) -> None:
    print(*parts, flush=True)


def record(section: str, key: str, value: object) -> None:
    RESULTS.setdefault(section, {})[key] = value
    log(f"  {section} / {key}: {value}")


def texts_of(n: int, words: int, seed: int, vary: bool = False) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        count = rng.randint(max(4, words // 8), words * 2) if vary else words
        out.append(" ".join(rng.choice(WORDS) for _ in range(count)) + ".")
    return out


# -- models ---------------------------------------------------------------------------------------
ONLY: set[str] = set()  # --only: the models to build, pull and measure (empty: all)


def wanted(name: str) -> bool:
    return not ONLY or name in ONLY


def build(models: Path, minilm_files: Path, tiny: bool) -> None:
    """Random weights in the real shapes, in the Hugging Face and sentence-transformers layouts."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    torch.manual_seed(0)
    models.mkdir(parents=True, exist_ok=True)
    config = BertConfig.from_pretrained(minilm_files)
    for name, cls in (("minilm", BertModel), ("minilm-ce", BertForSequenceClassification)):
        path = models / name
        if (path / "model.safetensors").exists() or not wanted(name):
            continue
        labels = {"num_labels": 1, "id2label": {0: "LABEL_0"}, "label2id": {"LABEL_0": 0}}
        cfg = BertConfig.from_dict({**config.to_dict(), **labels})
        model = cls(cfg).eval()
        model.save_pretrained(path, safe_serialization=True)
        for file in MINILM_FILES:
            # The cross-encoder keeps the config save_pretrained wrote (num_labels=1): MiniLM's own has no
            # num_labels, which means two, and sentence-transformers' CrossEncoder then refuses the weights.
            not_for_ce = ("config.json", "modules.json", "sentence_bert_config.json", "1_Pooling/config.json")
            if name == "minilm-ce" and file in not_for_ce:
                continue
            if (minilm_files / file).exists():
                (path / file).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(minilm_files / file, path / file)
    for name, kind in (("qwen3-emb", "embedding"), ("qwen3-rr", "reranker")):
        path = models / name
        if (path / "model.safetensors").exists() or any(path.glob("model-*.safetensors")) or not wanted(name):
            continue
        qwen3_06b(path, kind, tiny)


def qwen3_06b(path: Path, kind: str, tiny: bool = False) -> None:
    """Qwen3-0.6B's shape (Qwen3-Embedding-0.6B / Qwen3-Reranker-0.6B), bfloat16 as the real checkpoints.
    `tiny`: two small layers, to try this script on a CPU."""
    import torch
    from tests import tiny_models
    from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3Model

    path.mkdir(parents=True, exist_ok=True)
    tiny_models.qwen_tokenizer(path, append_eos=kind == "embedding")
    config = Qwen3Config(
        vocab_size=151669,
        hidden_size=1024,
        intermediate_size=3072,
        num_hidden_layers=2 if tiny else 28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        tie_word_embeddings=True,
        torch_dtype="bfloat16",
        architectures=["Qwen3ForCausalLM"],
        eos_token_id=0,
        pad_token_id=0,
    )
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = (Qwen3Model if kind == "embedding" else Qwen3ForCausalLM)(config).to(torch.bfloat16).eval()
    model.save_pretrained(path, safe_serialization=True)
    data = json.loads((path / "config.json").read_text())
    data["architectures"] = ["Qwen3ForCausalLM"]
    (path / "config.json").write_text(json.dumps(data))
    if kind == "embedding":
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ]
        (path / "modules.json").write_text(json.dumps(modules))
        (path / "1_Pooling").mkdir(exist_ok=True)
        pooling = {"word_embedding_dimension": 1024, "pooling_mode_lasttoken": True, "include_prompt": True}
        (path / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
        (path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 8192}))


def pull_all(models: Path, home: Path) -> None:
    env = {**os.environ, "HOME": str(home)}
    for name in ("minilm", "minilm-ce", "qwen3-emb", "qwen3-rr"):
        if (home / ".mlx-serve" / "models" / name / "mlx-serve.json").exists() or not wanted(name):
            continue
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "mlx_serve", "pull", str(models / name), "--name", name], env=env, check=True
        )
        log(f"pulled {name} in {time.perf_counter() - started:.1f} s")


# -- the engine in-process ----------------------------------------------------------------------
def timed(fn: Callable[[], object], repeats: int = 3, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def engine(home: Path, quick: bool) -> None:
    import mlx.core as mx

    from mlx_serve.engine import load_model

    store = home / ".mlx-serve" / "models"
    n = 64 if quick else 512
    for name, words in (("minilm", 150), ("qwen3-emb", 30)):
        model = load_model(name, store / name, type="embedding")
        texts = texts_of(n, words, seed=1)
        seqs = model.tokenize(texts)
        tokens = sum(len(s) for s in seqs)
        record("engine", f"{name} mean tokens per text", round(tokens / n, 1))
        for budget in (4096, 16384):
            seconds = timed(lambda m=model, b=budget, s=seqs: m.run(s, b))
            record("engine", f"{name} tokens/s budget {budget}", round(tokens / seconds))
        one = model.tokenize(["what is the capital of france?"])
        record("engine", f"{name} one short text ms", round(timed(lambda m=model, o=one: m.run(o, 4096), 20) * 1000, 2))
        mx.reset_peak_memory()
        model.run(seqs, 4096)
        record("engine", f"{name} peak GB (budget 4096)", round(mx.get_peak_memory() / 1e9, 2))
        if name == "qwen3-emb":
            bare_qwen3(store / name, model, quick)
        del model
        mx.clear_cache()


def bare_qwen3(path: Path, ours: object, quick: bool) -> None:
    """A bare mlx-lm forward pass on equal-length random ids (no padding, causal), against ours on the
    same shapes: what the engine leaves on the table."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.utils import load_model as mlx_lm_load

    from mlx_serve.engine.batching import Seq
    from mlx_serve.engine.families.decoder import _classes_for_any_checkpoint
    from mlx_serve.engine.loader import compute_dtype

    model, _ = mlx_lm_load(path, get_model_classes=_classes_for_any_checkpoint)
    stored = next(v for _, v in tree_flatten(model.parameters())).dtype
    model.set_dtype(compute_dtype("auto", stored))  # ours runs in this dtype too
    for rows, length in ((4, 64),) if quick else ((16, 512), (32, 256), (64, 256)):
        ids = mx.random.randint(5, 400, (rows, length))

        def bare(ids: mx.array = ids) -> None:
            mx.eval(model.model(ids))

        seconds = timed(bare)
        record("engine", f"qwen3 bare mlx-lm {rows}x{length} tokens/s", round(rows * length / seconds))
        seqs = [Seq(list(map(int, row))) for row in ids.tolist()]
        seconds = timed(lambda s=seqs, b=rows * length: ours.run(s, b))
        record("engine", f"qwen3 ours {rows}x{length} tokens/s", round(rows * length / seconds))


# -- the server over HTTP -------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_connections = threading.local()


def post(url: str, path: str, body: dict) -> dict:
    """One request on this thread's kept-alive connection, as the OpenAI and Cohere SDKs (httpx) send them."""
    host, port = url.removeprefix("http://").split(":")
    conn = getattr(_connections, "conn", None)
    if conn is None or getattr(_connections, "url", None) != url:
        conn = _connections.conn = http.client.HTTPConnection(host, int(port), timeout=600)
        _connections.url = url
    data = json.dumps(body).encode()
    try:
        conn.request("POST", path, data, {"Content-Type": "application/json"})
        resp = conn.getresponse()
    except (OSError, http.client.HTTPException):
        _connections.conn = None
        raise
    payload = resp.read()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {payload[:200]!r}")
    return json.loads(payload)


def batches_run(url: str) -> float:
    """How many batches the server has run (from /metrics)."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("mlx_serve_batch_requests_count"):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def metric_value(url: str, name: str) -> float | None:
    """One unlabelled metric's value from /metrics (None: not there)."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
    return None


def gpu_memory_mb(pid: int) -> int | None:
    """What nvidia-smi says the process (or its children) holds."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
    except OSError:
        return None
    import psutil

    pids = {pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))}
    used = [int(line.split(",")[1]) for line in out.strip().splitlines() if line and int(line.split(",")[0]) in pids]
    return sum(used) if used else None


class Server:
    def __init__(self, home: Path, preload: list[str], env: dict | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = home / f"server-{self.port}.log"
        args = [sys.executable, "-m", "mlx_serve", "start", "--foreground", "--port", str(self.port)]
        args += [f"--preload={name}" for name in preload]
        full_env = {
            **os.environ,
            "HOME": str(home),
            "MLX_SERVE_LOG_FORMAT": "json",
            "MLX_SERVE_LOG_LEVEL": "warning",
            **(env or {}),
        }
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(args, env=full_env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while True:
            try:  # /ready, not /health: ready once the preloads are done (a first pass must not time a load)
                urllib.request.urlopen(f"{self.url}/ready", timeout=2).read()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"server did not start: {self.log.read_text()[-3000:]}") from None
                time.sleep(0.5)

    def health(self) -> dict:
        with urllib.request.urlopen(f"{self.url}/health", timeout=10) as resp:
            return json.load(resp)

    def stop(self) -> dict:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=120)
        text = self.log.read_text()
        return {
            "master_exit": code,
            # gunicorn's master logs a worker's non-zero exit ("exited with code") or its signal ("was sent")
            "worker_failed": "exited with code" in text or "was sent" in text,
            "sigabrt": "SIGABRT" in text or "terminate called" in text,
        }


_pools: dict[int, ThreadPoolExecutor] = {}


def _client_chunk(url: str, path: str, bodies: list[dict], threads: int) -> tuple[int, int]:
    """In a client process: send `bodies` from `threads` threads, which keep their connections from one
    call to the next (as an SDK's connection pool does); (tokens, errors)."""
    errors = 0

    def one(body: dict) -> int:
        nonlocal errors
        try:
            return post(url, path, body)["usage"]["total_tokens"]
        except Exception:
            errors += 1
            return 0

    pool = _pools.setdefault(threads, ThreadPoolExecutor(threads))
    return sum(pool.map(one, bodies)), errors


class Load:
    """Clients in processes of their own (16 of them, forked once), so that the load generator's own
    Python (JSON, HTTP, one GIL) is never what limits the measurement."""

    def __init__(self, processes: int = 16) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.processes = processes
        self.pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("fork"))
        list(self.pool.map(abs, range(processes * 4)))  # every process started

    def run(self, url: str, path: str, bodies: list[dict], concurrency: int) -> tuple[float, int, int]:
        """Send `bodies` from `concurrency` concurrent clients; (seconds, tokens, errors)."""
        groups = min(concurrency, self.processes)
        chunks = [bodies[i::groups] for i in range(groups)]
        threads = max(1, concurrency // groups)
        start = time.perf_counter()
        results = list(self.pool.map(_client_chunk, [url] * groups, [path] * groups, chunks, [threads] * groups))
        seconds = time.perf_counter() - start
        return seconds, sum(t for t, _ in results), sum(e for _, e in results)

    def close(self) -> None:
        self.pool.shutdown()


def server(home: Path, quick: bool) -> None:
    load = Load()
    try:
        _server(home, quick, load.run)
    finally:
        load.close()


def _server(home: Path, quick: bool, clients: Callable[[str, str, list[dict], int], tuple[float, int, int]]) -> None:
    rounds = 2 if quick else 8
    for name, words in (("minilm", 150), ("qwen3-emb", 30)):
        srv = Server(home, [name])
        try:
            url = srv.url
            for fmt in ("float", "base64"):
                bodies = [
                    {"model": name, "input": texts_of(32, words, seed=100 * r + c), "encoding_format": fmt}
                    for r in range(rounds)
                    for c in range(16)
                ]
                clients(url, "/v1/embeddings", bodies[:16], 16)  # warm up
                seconds, tokens, errors = clients(url, "/v1/embeddings", bodies, 16)
                record("server", f"{name} 16x32 {fmt} tokens/s", round(tokens / seconds))
                record("server", f"{name} 16x32 {fmt} errors", errors)
            varied = [
                {"model": name, "input": texts_of(32, words, seed=7000 + i, vary=True), "encoding_format": "base64"}
                for i in range(16 * rounds)
            ]
            clients(url, "/v1/embeddings", varied[:16], 16)
            seconds, tokens, errors = clients(url, "/v1/embeddings", varied, 16)
            record("server", f"{name} varied lengths base64 tokens/s", round(tokens / seconds))
            singles = [{"model": name, "input": [t], "encoding_format": "base64"} for t in texts_of(64, 12, seed=9)]
            clients(url, "/v1/embeddings", singles, 64)  # every batch shape of this test seen once (graphs built)
            in_a_row = statistics.median(clients(url, "/v1/embeddings", singles, 1)[0] for _ in range(3))
            batches_before = batches_run(url)
            # Nine bursts: one burst lasts under 0.1 s, and on a shared host single bursts vary by 2x.
            together = statistics.median(clients(url, "/v1/embeddings", singles, 64)[0] for _ in range(9))
            record("server", f"{name} 64 single-text clients: in a row / concurrent", round(in_a_row / together, 2))
            record("server", f"{name} 64 single-text clients: batches per 64", (batches_run(url) - batches_before) / 9)
            one = {"model": name, "input": "what is the capital of france?", "encoding_format": "base64"}
            latency = timed(lambda o=one, u=url: post(u, "/v1/embeddings", o), 30, 3)
            record("server", f"{name} one short text ms", round(latency * 1000, 2))
            time.sleep(3)  # MLX's buffer cache goes back after 2 s idle
            record("server", f"{name} GPU memory after, nvidia-smi MB", gpu_memory_mb(srv.proc.pid))
            record("server", f"{name} MLX memory after", srv.health()["memory"])
        finally:
            record("server", f"{name} exit", srv.stop())
    for name, kind in (("qwen3-rr", "qwen3"), ("minilm-ce", "cross-encoder")):
        srv = Server(home, [name])
        try:
            docs = texts_of(32, 40 if kind == "qwen3" else 60, seed=3)
            bodies = [
                {"model": name, "query": f"query number {i} about gravity", "documents": docs}
                for i in range(16 * rounds)
            ]
            clients(srv.url, "/v1/rerank", bodies[:16], 16)
            seconds, _, errors = clients(srv.url, "/v1/rerank", bodies, 16)
            record("server", f"{name} pairs/s", round(len(bodies) * len(docs) / seconds))
            record("server", f"{name} errors", errors)
            time.sleep(3)
            record("server", f"{name} GPU memory after, nvidia-smi MB", gpu_memory_mb(srv.proc.pid))
        finally:
            record("server", f"{name} exit", srv.stop())


# -- the peers, in a process of their own --------------------------------------------------------
def peers(models: Path, quick: bool) -> None:
    import torch
    from sentence_transformers import CrossEncoder, SentenceTransformer

    n = 64 if quick else 512
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for name, words in (("minilm", 150), ("qwen3-emb", 30)):
        texts = texts_of(n, words, seed=1)
        for dtype in (torch.float16, torch.float32):
            model = SentenceTransformer(str(models / name), device=device, model_kwargs={"torch_dtype": dtype})
            tokens = sum(len(ids) for ids in model.tokenize(texts)["input_ids"])
            seconds = timed(lambda m=model, t=texts: m.encode(t, batch_size=32), 3)
            record("peers", f"{name} sentence-transformers {str(dtype)[6:]} tokens/s", round(tokens / seconds))
            one = ["what is the capital of france?"]
            record(
                "peers",
                f"{name} sentence-transformers {str(dtype)[6:]} one short text ms",
                round(timed(lambda m=model, o=one: m.encode(o), 20) * 1000, 2),
            )
            del model
            torch.cuda.empty_cache()
    docs = texts_of(32, 60, seed=3)
    pairs = [(f"query number {i} about gravity", d) for i in range(16) for d in docs]
    ce = CrossEncoder(str(models / "minilm-ce"), device=device, model_kwargs={"torch_dtype": torch.float16})
    seconds = timed(lambda: ce.predict(pairs, batch_size=32), 3)
    record("peers", "minilm-ce CrossEncoder fp16 pairs/s", round(len(pairs) / seconds))
    qwen3_reranker_peer(models / "qwen3-rr", device)


def qwen3_reranker_peer(path: Path, device: str) -> None:
    """The Qwen3-Reranker model card's recipe with transformers, fp16, batches of 32, left padding,
    last-position logits of "no"/"yes"."""
    import torch
    from tokenizers import Tokenizer
    from transformers import Qwen3ForCausalLM

    from mlx_serve.engine.families.qwen3 import DEFAULT_INSTRUCTION
    from mlx_serve.engine.families.qwen3 import PREFIX as QWEN3_PREFIX
    from mlx_serve.engine.families.qwen3 import SUFFIX as QWEN3_SUFFIX

    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    model = Qwen3ForCausalLM.from_pretrained(path, torch_dtype=torch.float16).to(device).eval()
    no, yes = tok.token_to_id("no"), tok.token_to_id("yes")
    prefix, suffix = (
        tok.encode(QWEN3_PREFIX, add_special_tokens=False).ids,
        tok.encode(QWEN3_SUFFIX, add_special_tokens=False).ids,
    )
    docs = texts_of(32, 40, seed=3)
    seqs = [
        prefix
        + tok.encode(
            f"<Instruct>: {DEFAULT_INSTRUCTION}\n<Query>: query number {i} about gravity\n<Document>: {d}",
            add_special_tokens=False,
        ).ids
        + suffix
        for i in range(16)
        for d in docs
    ]

    def run() -> None:
        with torch.no_grad():
            for start in range(0, len(seqs), 32):
                batch = seqs[start : start + 32]
                width = max(map(len, batch))
                ids = torch.tensor([[0] * (width - len(s)) + s for s in batch], device=device)
                mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in batch], device=device)
                logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=1).logits[:, -1]
                torch.softmax(logits[:, [no, yes]].float(), dim=-1)[:, 1].cpu()

    seconds = timed(run, 3)
    record("peers", "qwen3-rr transformers fp16 model-card recipe pairs/s", round(len(seqs) / seconds))


MEMORY_CONFIGS = "0:false,auto:false,auto:true"  # max_inflight_bytes:warm_shapes, one server each


def memory(home: Path, quick: bool, configs: str = MEMORY_CONFIGS) -> None:
    """The peak under a burst, bounded (max_inflight_bytes auto) and not (0: the code before the bound),
    in the same run: 16 clients x 32 texts, uniform then varied lengths; tokens/s (first pass and again), MLX's
    peak since start (/health) and nvidia-smi's highest reading while the burst runs; and the same with the
    shapes built in the background first (warm_shapes) or not."""
    load = Load()
    rounds = 2 if quick else 8
    try:
        # Before both (no bound, shapes built on first sight), the bound alone, and the defaults.
        pairs = [tuple(c.split(":")) for c in configs.split(",")]
        for name, words in (("qwen3-emb", 30), ("minilm", 150)):
            if not wanted(name):
                continue
            for setting, warm in pairs:
                env = {"MLX_SERVE_MAX_INFLIGHT_BYTES": setting, "MLX_SERVE_WARM_SHAPES": warm}
                srv = Server(home, [name], env)
                label = f"{name} max_inflight_bytes={setting} warm_shapes={warm}"
                highest = [0]
                done = threading.Event()

                def watch(pid: int = srv.proc.pid, done: threading.Event = done, highest: list[int] = highest) -> None:
                    while not done.wait(0.2):
                        highest[0] = max(highest[0], gpu_memory_mb(pid) or 0)

                watcher = threading.Thread(target=watch, daemon=True)
                try:
                    # The shapes a burst will take are built in the background after the load: measured
                    # here, and the first pass waits for them, as traffic arriving a little later would.
                    started = time.monotonic()
                    while metric_value(srv.url, "mlx_serve_shapes_pending") not in (0, None):
                        time.sleep(0.2)
                    building = round(time.monotonic() - started, 1)
                    record("memory", f"{label} seconds building shapes after ready", building)
                    weights = srv.health()["memory"]["active_bytes"]
                    watcher.start()
                    for vary in (False, True):
                        bodies = [
                            {
                                "model": name,
                                "input": texts_of(32, words, seed=100 * r + c, vary=vary),
                                "encoding_format": "base64",
                            }
                            for r in range(rounds)
                            for c in range(16)
                        ]
                        first, tokens, errors = load.run(srv.url, "/v1/embeddings", bodies, 16)  # cold: first pass
                        record(
                            "memory",
                            f"{label} {'varied' if vary else 'uniform'} first pass tokens/s",
                            round(tokens / first),
                        )
                        # Warm: the median of three passes, since one pass is about a second on a GPU.
                        passes = [load.run(srv.url, "/v1/embeddings", bodies, 16) for _ in range(3)]
                        seconds = statistics.median(p[0] for p in passes)
                        errors += sum(p[2] for p in passes)
                        record("memory", f"{label} {'varied' if vary else 'uniform'} tokens/s", round(tokens / seconds))
                        record("memory", f"{label} errors", errors)
                    health = srv.health()["memory"]
                    done.set()
                    watcher.join()
                    record("memory", f"{label} weights GB", round(weights / 1e9, 2))
                    record("memory", f"{label} MLX peak GB", round(health["peak_bytes"] / 1e9, 2))
                    record("memory", f"{label} nvidia-smi highest GB", round(highest[0] / 1e3, 2))
                finally:
                    done.set()
                    srv.stop()
    finally:
        load.close()


def residue(home: Path) -> None:
    """What building a model's shapes leaves resident: MLX's active memory and nvidia-smi's reading after
    the load, after each width's shapes, and once the compiled head (and with it its traces) is dropped."""
    import gc

    import mlx.core as mx

    from mlx_serve.engine import load_model

    def show(name: str, stage: str) -> None:
        gc.collect()
        mx.synchronize()
        smi = gpu_memory_mb(os.getpid())
        record(
            "residue",
            f"{name} {stage}",
            f"active {mx.get_active_memory() / 1e9:.3f} GB, cache "
            f"{mx.get_cache_memory() / 1e9:.3f} GB, nvidia-smi {smi} MB",
        )

    for name in ("qwen3-emb", "minilm"):
        if not wanted(name):
            continue
        model = load_model(name, home / ".mlx-serve" / "models" / name, type="embedding")
        show(name, "loaded")
        runner = model.runner
        shapes = runner.shapes(16384, model.max_length)
        for width in sorted({w for _, w in shapes}):
            for rows, w in shapes:
                if w == width:
                    runner.warm(rows, w)
            show(name, f"built to width {width}")
        mx.clear_cache()
        show(name, "cache cleared")
        runner.head = None
        show(name, "compiled head dropped")
        del model, runner
        mx.clear_cache()
        show(name, "model dropped")


def bound(home: Path, quick: bool) -> None:
    """Two ways to keep the in-flight bound, in-process on 512 texts (16 x 32): none; batches split to fit
    it by their measured cost (what a CPU does); MLX's memory limit at the weights plus the bound, which
    MLX's evaluation waits on (what a GPU does: serving/memory.throttles). Tokens/s and the peak above
    the weights, and the measured cost of a token (on a GPU MLX encodes ahead of the device, so that cost
    holds every layer's activations)."""
    import mlx.core as mx

    from mlx_serve.engine import load_model
    from mlx_serve.serving import memory

    configured = mx.get_memory_limit()
    budget = memory.inflight_budget(None)
    n = 64 if quick else 512
    for name, words in (("qwen3-emb", 30), ("minilm", 150)):
        if not wanted(name):
            continue
        model = load_model(name, home / ".mlx-serve" / "models" / name, type="embedding")
        runner, weights = model.runner, model.nbytes()
        seqs = model.tokenize(texts_of(n, words, seed=1))
        tokens = sum(len(s) for s in seqs)
        for way in ("none", "split", "throttle"):
            max_bytes = budget if way == "split" else None
            memory.throttle(configured, weights, budget if way == "throttle" else None)
            runner.run(seqs, 16384, None, max_bytes)  # shapes built, the cost measured
            mx.reset_peak_memory()
            seconds = timed(lambda r=runner, s=seqs, m=max_bytes: r.run(s, 16384, None, m), 5)
            record("bound", f"{name} {way} tokens/s", round(tokens / seconds))
            record("bound", f"{name} {way} peak above the weights GB", round((mx.get_peak_memory() - weights) / 1e9, 2))
        if runner.cost is not None:
            record("bound", f"{name} measured cost KB a token", round(runner.cost.base / 1e3, 1))
        memory.throttle(configured, 0, None)
        del model, runner
        mx.clear_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("what", choices=["build", "engine", "server", "memory", "bound", "residue", "peers", "all"])
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "mlx-serve-gpu")
    parser.add_argument("--minilm-files", type=Path, default=None, help="all-MiniLM-L6-v2's config and tokenizer")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="fewer texts and rounds")
    parser.add_argument("--tiny", action="store_true", help="a two-layer Qwen3, to try the script on a CPU")
    parser.add_argument("--configs", default=MEMORY_CONFIGS, help="memory: max_inflight_bytes:warm_shapes, ...")
    parser.add_argument("--only", default="", help="comma-separated models for build and memory (default: all)")
    args = parser.parse_args()
    ONLY.update(n for n in args.only.split(",") if n)
    models, home = args.dir / "models", args.dir / "home"
    home.mkdir(parents=True, exist_ok=True)
    minilm_files = args.minilm_files
    if minilm_files is None:
        from mlx_serve.store.store import builtin_model_dir

        minilm_files = builtin_model_dir()
    steps = ["build", "engine", "server", "peers"] if args.what == "all" else [args.what]
    for step in steps:
        log(f"== {step}")
        started = time.perf_counter()
        try:
            if step == "build":
                build(models, minilm_files, args.tiny)
                pull_all(models, home)
            elif step == "engine":
                engine(home, args.quick)
            elif step == "server":
                server(home, args.quick)
            elif step == "memory":
                memory(home, args.quick, args.configs)
            elif step == "residue":
                residue(home)
            elif step == "bound":
                bound(home, args.quick)
            else:  # in a process of its own: PyTorch never shares one with MLX
                subprocess.run([sys.executable, __file__, "peers-inner", str(models), str(args.quick)], check=False)
                peer_out = models.parent / "peers.json"
                if peer_out.exists():
                    RESULTS["peers"] = json.loads(peer_out.read_text())
        except Exception as exc:
            import traceback

            traceback.print_exc()
            RESULTS.setdefault("failures", {})[step] = repr(exc)
        log(f"== {step} took {time.perf_counter() - started:.0f} s")
        if args.out:
            args.out.write_text(json.dumps(RESULTS, indent=2))
    log(json.dumps(RESULTS, indent=2))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "peers-inner":
        peers(Path(sys.argv[2]), sys.argv[3] == "True")
        (Path(sys.argv[2]).parent / "peers.json").write_text(json.dumps(RESULTS.get("peers", {})))
    else:
        main()

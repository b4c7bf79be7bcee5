"""Batches on the device: length buckets, batches run back to back, and out-of-memory handled by splitting.

No device here runs out of memory, so the last is tested with a forward function that fails the way
MLX does when an allocation fails (RuntimeError: ... out of memory) for batches over a size."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from mlx_serve.engine import load_embedder
from mlx_serve.engine.batching import LENGTH_BUCKETS, BatchRunner, OutOfMemory, Seq, bucket, plan_batches

from .conftest import MINILM_TEXTS


def test_buckets_round_up_to_a_small_set_of_shapes() -> None:
    assert [bucket(n, LENGTH_BUCKETS) for n in (1, 32, 33, 150, 257, 511, 513, 8192)] == [
        32,
        32,
        64,
        160,
        320,
        512,
        640,
        8192,
    ]
    assert bucket(9000, LENGTH_BUCKETS) == 9000  # past the largest: as it is
    assert len({bucket(n, LENGTH_BUCKETS) for n in range(1, 8193)}) == len(LENGTH_BUCKETS)
    # Budgets count the padded (bucketed) width.
    batches = plan_batches([150] * 10, max_batch_tokens=640, buckets=True)
    assert [len(b) for b in batches] == [4, 4, 2]


@pytest.fixture(scope="module")
def embedder(minilm_dir: Path):
    return load_embedder("all-MiniLM-L6-v2", minilm_dir)


def test_bucketed_batches_give_the_same_vectors(embedder) -> None:
    """Buckets pad further (rows and lengths); masked padding changes nothing."""
    seqs = embedder.tokenize(MINILM_TEXTS)
    plain = embedder.runner.run(seqs, 4096)
    embedder.runner.buckets = True
    try:
        bucketed = embedder.runner.run(seqs, 4096)
    finally:
        embedder.runner.buckets = False
    np.testing.assert_allclose(bucketed, plain, atol=1e-5)


def test_many_batches_back_to_back_keep_their_order(embedder) -> None:
    seqs = embedder.tokenize([t for t in MINILM_TEXTS if len(t) < 100] * 4)
    small = embedder.runner.run(seqs, 64)  # one or two texts a batch: many batches in flight one after another
    alone = np.stack([embedder.runner.run([s], 4096)[0] for s in seqs])
    np.testing.assert_allclose(small, alone, atol=1e-5)


def failing_head(limit: int):
    """A head that, like a full device, fails batches holding more than `limit` padded tokens."""

    def head(ids: mx.array, type_ids: mx.array, mask: mx.array, padded: bool) -> mx.array:
        if ids.shape[0] * ids.shape[1] > limit:
            raise RuntimeError("[cuda] cudaMallocAsync(&data, size, stream) failed: out of memory")
        return mask.sum(axis=1, keepdims=True).astype(mx.float32)

    return head


def test_out_of_memory_splits_the_batch_and_serves_what_fits() -> None:
    runner = BatchRunner(failing_head(limit=40), pad_id=0, padding_side="right", streams=[], buckets=False)
    seqs = [Seq([1] * n) for n in (5, 6, 7, 8, 50, 9)]
    with pytest.raises(OutOfMemory) as error:
        runner.run(seqs, max_batch_tokens=1000)
    assert error.value.failed == {4}  # only the 50-token input does not fit even alone
    assert error.value.rows[:, 0].tolist() == [5, 6, 7, 8, 0, 9]
    fits = [s for i, s in enumerate(seqs) if i != 4]
    assert runner.run(fits, max_batch_tokens=1000)[:, 0].tolist() == [5, 6, 7, 8, 9]


def test_an_ordinary_error_is_not_taken_for_out_of_memory() -> None:
    def broken(*_args) -> mx.array:
        raise RuntimeError("shape mismatch")

    runner = BatchRunner(broken, pad_id=0, padding_side="right", streams=[], buckets=False)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        runner.run([Seq([1, 2])], 100)


def test_a_request_whose_input_cannot_fit_gets_a_507_and_others_are_served(make_app) -> None:
    from .conftest import MINILM, hold_inference_thread, wait_for

    app = make_app()
    client, runtime = app.client, app.runtime

    def embed(texts: list[str]):
        return client.simulate_post("/v1/embeddings", json={"model": MINILM, "input": texts})

    assert embed(["load"]).status_code == 200
    model = runtime.cache.ready(next(iter(runtime.cache._current.values())))
    real = model.runner.head

    def head(ids, type_ids, mask, padded):  # the device holds at most 100 tokens of one sequence
        if ids.shape[1] > 100:
            raise RuntimeError("[METAL] Command buffer execution failed: Insufficient Memory")
        return real(ids, type_ids, mask, padded)

    model.runner.head = head
    release = hold_inference_thread(runtime)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:  # both requests merge into one batch run
        good = pool.submit(embed, ["short", "texts"])
        bad = pool.submit(embed, ["fine", "word " * 200])
        wait_for(lambda: runtime.scheduler.queued()[0] == 2)
        release.set()
        assert good.result().status_code == 200
        error = bad.result().json["error"]
    assert bad.result().status_code == 507 and error["code"] == "out_of_memory"
    assert error["message"].startswith("input[1] does not fit in the device's memory")


def test_a_one_token_sequence_runs(embedder) -> None:
    """MLX's shapeless compiled softmax crashed the process on a one-token batch (one key)."""
    from mlx_serve.engine.batching import Seq

    assert embedder.runner.run([Seq([101])], 4096).shape == (1, 384)


def test_max_bytes_bounds_the_peak_and_changes_no_vector(minilm_dir: Path) -> None:
    """A burst's batches once took ten times the weights on a GPU. Given max_bytes, the runner measures
    what a padded token costs and keeps the batches in flight within it: the same vectors, a lower peak."""
    from mlx_serve.engine.batching import PEAK

    model = load_embedder("all-MiniLM-L6-v2", minilm_dir)
    words = ["model", "server", "embedding", "vector", "search", "query", "document", "rank", "local", "machine"]
    texts = [" ".join(words[(i + j) % len(words)] for j in range(100)) for i in range(24)]
    seqs = model.tokenize(texts)
    bound = 24 * 2**20
    unbounded: list[np.ndarray] = []
    peak_unbounded = PEAK.measure(lambda: unbounded.append(model.run(seqs, 16384)))
    assert peak_unbounded > 2 * bound  # this burst needs more than the bound without one
    bounded: list[np.ndarray] = []
    peak_bounded = PEAK.measure(lambda: bounded.append(model.run(seqs, 16384, None, bound)))
    assert peak_bounded <= bound
    np.testing.assert_allclose(bounded[0], unbounded[0], atol=1e-5)
    assert model.runner.cost is not None and model.runner.inflight_bytes == 0  # nothing in flight after a run


def test_a_sequence_over_the_bound_still_runs_alone(minilm_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlx_serve.engine import batching

    monkeypatch.setattr(batching, "SMALL_RUN", 64)  # runs of a few texts are bounded too
    model = load_embedder("all-MiniLM-L6-v2", minilm_dir)
    seqs = model.tokenize(["word " * 40] * 3 + ["short"])
    out = model.run(seqs, 16384, None, 1)  # one byte: every batch is over it
    np.testing.assert_allclose(out, model.run(seqs, 16384), atol=1e-5)


def test_warmed_shapes_leave_nothing_to_build_for_varied_lengths(embedder) -> None:
    """On a GPU every bucketed shape is a compiled graph built on first sight: a server warms them after a
    load. Once warmed, texts of any length build nothing more (the head is not traced again), and their
    vectors are those of the plain runner."""
    traces = []

    def counting():  # a function of its own per runner: MLX keeps compiled graphs per function
        def head(ids, type_ids, mask, padded):
            traces.append(tuple(ids.shape))  # runs only when MLX traces a new shape
            return embedder._head(ids, type_ids, mask, padded)

        return head

    runner = BatchRunner(counting(), 0, "right", embedder.streams[:1], buckets=True, compiled=True)
    shapes = runner.shapes(max_batch_tokens=128, max_length=60)
    assert shapes == [(1, 32), (2, 32), (4, 32), (1, 64), (2, 64)]
    for rows, width in shapes:
        assert runner.warm(rows, width)
    built = len(traces)
    assert built >= len(shapes)
    texts = [" ".join(["word"] * n) for n in (3, 17, 40, 51, 5, 33, 12)]
    seqs = embedder.tokenize(texts)
    vectors = runner.run(seqs, 128)
    assert len(traces) == built, f"built on a request's time: {traces[built:]}"
    np.testing.assert_allclose(vectors, embedder.runner.run(seqs, 128), atol=1e-5)
    # And without the warming, the same request builds its shapes itself.
    cold = BatchRunner(counting(), 0, "right", embedder.streams[:1], buckets=True, compiled=True)
    cold.run(seqs, 128)
    assert len(traces) > built


def test_a_shape_beyond_the_byte_bound_is_not_warmed(embedder, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under a byte bound, warming builds a large shape only once its cost is known (warming never measures:
    that takes what a request so long takes) and only if a run could launch it."""
    from mlx_serve.engine import batching

    monkeypatch.setattr(batching, "SMALL_RUN", 256)  # smaller shapes than a server's, the same rules
    runner = BatchRunner(embedder._head, 0, "right", embedder.streams[:1], buckets=True, compiled=False)
    assert not runner.warm(16, 32, max_bytes=10**12)  # its cost is not known yet
    assert runner.cost is None  # and nothing was measured to find out
    assert runner.warm(8, 32, max_bytes=1024)  # a small shape needs no cost: runs this small are never bounded
    runner.measure(32, tokens=256)
    assert not runner.warm(16, 32, max_bytes=1024)  # a run would split such a batch: never built
    assert runner.warm(16, 32, max_bytes=10**12)

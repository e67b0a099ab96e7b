"""The FAISS vector index: exact and HNSW search, persistence, refusal of foreign or damaged indexes."""

import numpy as np
import pytest

from components.index import IndexLoadError, VectorIndex, normalize


def _data(n=8000, d=48, q=200, seed=0):
    rng = np.random.default_rng(seed)
    return normalize(rng.standard_normal((n, d))), normalize(rng.standard_normal((q, d)))


def test_hnsw_recall_at_10_against_exact_search():
    x, q = _data()
    ids, texts = list(range(len(x))), [f"t{i}" for i in range(len(x))]
    exact = VectorIndex(x.shape[1], "fp", kind="flat")
    exact.add(x, ids, texts)
    approx = VectorIndex(x.shape[1], "fp", kind="hnsw")
    approx.add(x, ids, texts)
    assert approx.resolved_kind == "hnsw" and exact.resolved_kind == "flat"
    truth = exact.search(q, 10)
    found = approx.search(q, 10)
    recall = np.mean([len({h.id for h in a} & {h.id for h in b}) / 10 for a, b in zip(found, truth)])
    assert recall >= 0.98
    # Exact scores are the cosine similarities, best first.
    best = truth[0]
    assert best[0].score == pytest.approx(float(x[int(best[0].id)] @ q[0]), abs=1e-5)
    assert all(a.score >= b.score for a, b in zip(best, best[1:]))


def test_auto_kind_switches_at_threshold():
    x, _ = _data(n=300)
    small = VectorIndex(x.shape[1], "fp", hnsw_threshold=1000)
    small.add(x, range(300), ["t"] * 300)
    big = VectorIndex(x.shape[1], "fp", hnsw_threshold=100)
    big.add(x, range(300), ["t"] * 300)
    assert small.resolved_kind == "flat" and big.resolved_kind == "hnsw"


def test_save_load_incremental_add_and_refusals(tmp_path):
    x, q = _data(n=500)
    index = VectorIndex(x.shape[1], "model-a")
    index.add(x[:400], [f"id{i}" for i in range(400)], [f"text {i}" for i in range(400)])
    index.add(x[400:], [f"id{i}" for i in range(400, 500)], [f"text {i}" for i in range(400, 500)])
    index.save(tmp_path / "idx")
    loaded = VectorIndex.load(tmp_path / "idx", expected_fingerprint="model-a")
    assert len(loaded) == 500
    hit = loaded.search(x[450], 1)[0][0]
    assert (hit.id, hit.text) == ("id450", "text 450") and hit.score == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(IndexLoadError, match="built with another model"):
        VectorIndex.load(tmp_path / "idx", expected_fingerprint="model-b")
    data = bytearray((tmp_path / "idx" / "index.faiss").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "idx" / "index.faiss").write_bytes(bytes(data))
    with pytest.raises(IndexLoadError, match="damaged"):
        VectorIndex.load(tmp_path / "idx")
    with pytest.raises(IndexLoadError, match="not an index directory"):
        VectorIndex.load(tmp_path)


def test_bad_arguments():
    index = VectorIndex(8, "fp")
    with pytest.raises(ValueError, match=r"vectors must be \(N, 8\)"):
        index.add(np.zeros((2, 5)), [1, 2], ["a", "b"])
    with pytest.raises(ValueError, match="differ in number"):
        index.add(np.ones((2, 8)), [1], ["a", "b"])
    with pytest.raises(ValueError, match="unknown index kind 'ivff'"):
        VectorIndex(8, "fp", kind="ivff")
    with pytest.raises(ValueError, match="needs at least 10 vectors"):
        VectorIndex(8, "fp", kind="ivf", ivf_lists=10).add(np.ones((3, 8)), [1, 2, 3], ["a", "b", "c"])
    assert index.search(np.ones(8), 3) == [[]]


def test_ivf_recall_persistence_and_incremental_add(tmp_path):
    rng = np.random.default_rng(1)
    centres = normalize(rng.standard_normal((200, 48)))
    pick = rng.integers(0, 200, size=6200)
    x = normalize(centres[pick] + 0.1 * rng.standard_normal((6200, 48)))
    q = normalize(centres[rng.integers(0, 200, size=200)] + 0.1 * rng.standard_normal((200, 48)))
    exact = VectorIndex(48, "fp", kind="flat")
    exact.add(x, range(6200), ["t"] * 6200)
    ivf = VectorIndex(48, "fp", kind="ivf", nprobe=8)
    ivf.add(x[:6000], range(6000), ["t"] * 6000)                      # trained on the first batch
    ivf.add(x[6000:], range(6000, 6200), ["t"] * 200)
    assert ivf.resolved_kind == "ivf" and len(ivf) == 6200
    truth, found = exact.search(q, 10), ivf.search(q, 10)
    recall = np.mean([len({h.id for h in a} & {h.id for h in b}) / 10 for a, b in zip(found, truth)])
    assert recall >= 0.98
    ivf.save(tmp_path / "ivf")
    loaded = VectorIndex.load(tmp_path / "ivf", expected_fingerprint="fp")
    assert loaded.resolved_kind == "ivf" and loaded._index.nprobe == 8
    assert [h.id for h in loaded.search(q[:5], 10)[0]] == [h.id for h in found[0]]

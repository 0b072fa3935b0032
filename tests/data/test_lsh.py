import numpy as np
from datafixtures import sentences
from datasketch import MinHash
from xxhash import xxh32_intdigest

from tuneloop.data.lsh import Signer, band_keys, leaked, lsh_shape, near_duplicates, shingles, similarity

BANDS, ROWS = lsh_shape(0.8, 64)


def edit(text: str, position: int, word: str = "changed") -> str:
    words = text.split()
    words[position] = word
    return " ".join(words)


def test_signatures_equal_datasketch() -> None:
    texts = sentences(50, words=15) + ["", "one", "two words"]
    sets = [shingles(t, 2) for t in texts]
    ours = Signer(64).sign(sets)
    def xxh32(shingle: str) -> int:
        return xxh32_intdigest(shingle.encode())

    theirs = [m.hashvalues for m in MinHash.generator(sets, num_perm=64, seed=1, hashfunc=xxh32)]
    assert ours.dtype == np.uint32 and ours.shape == (len(texts), 64)
    np.testing.assert_array_equal(ours, theirs)


def test_shingles() -> None:
    assert shingles("The cat, the HAT.", 2) == ["the cat", "cat the", "the hat"]
    assert shingles("The cat, the HAT.", 3) == ["the cat the", "cat the hat"]
    assert shingles("hi", 3) == ["hi"]


def test_near_copies_are_found_and_the_first_is_kept() -> None:
    base = sentences(200, words=30, seed=1)
    # 30 words with one changed: bigram Jaccard 27/31 = 0.87 > 0.8
    texts = base + [edit(t, 10) for t in base[:50]]
    sig = Signer(64).sign(shingles(t, 2) for t in texts)
    dropped, kept = near_duplicates(sig, band_keys(sig, BANDS, ROWS), np.arange(len(texts)), 0.8)
    assert set(dropped.tolist()) <= set(range(200, 250))  # never an original, never an unrelated row
    assert (kept == dropped - 200).all()  # each copy names its original as the row kept
    assert len(dropped) >= 40  # 64 permutations estimate Jaccard with error ~0.04: most, not all


def test_dissimilar_rows_are_not_near_duplicates() -> None:
    texts = sentences(500, words=12, seed=2)
    half = [" ".join(t.split()[:6] + sentences(1, 6, seed=i)[0].split()) for i, t in enumerate(texts[:100])]
    sig = Signer(64).sign(shingles(t, 2) for t in texts + half)  # sharing half the words: Jaccard ~0.3
    assert len(near_duplicates(sig, band_keys(sig, BANDS, ROWS), np.arange(len(texts) + 100), 0.8)[0]) == 0


def test_a_big_bucket_of_copies_keeps_about_one_per_group() -> None:
    a, b = sentences(2, words=100, seed=3)
    # any two copies differ in at most two words: bigram Jaccard >= 95/103 = 0.92
    texts = [edit(a, i % 100, f"x{i}") for i in range(300)] + [edit(b, i % 100, f"y{i}") for i in range(300)]
    sig = Signer(64).sign(shingles(t, 2) for t in texts)
    dropped, _ = near_duplicates(sig, band_keys(sig, BANDS, ROWS), np.arange(600), 0.8)
    kept = sorted(set(range(600)) - set(dropped.tolist()))
    assert 0 in kept and 300 in kept and len(kept) <= 10


def test_leakage_finds_train_rows_close_to_held_out_ones() -> None:
    base = sentences(100, words=30, seed=4)
    texts = base + [edit(t, 3) for t in base[:20]]
    sig = Signer(64).sign(shingles(t, 2) for t in texts)
    train, held = np.arange(100), np.arange(100, 120)
    keys = band_keys(sig, BANDS, ROWS)
    found = leaked(sig, keys, train, held, 0.8)
    assert set(found.tolist()) <= set(range(20)) and len(found) >= 15
    assert similarity(sig, np.array([0]), np.array([100]))[0] > 0.6
    assert len(leaked(sig, keys, train, np.arange(0), 0.8)) == 0


def test_a_chain_does_not_drop_rows_unlike_the_kept_one() -> None:
    from tuneloop.data.lsh import _greedy

    # 0 ~ 1 and 1 ~ 2, but 0 and 2 differ: 1 gives way to 0; 2 stays (its only partner is gone)
    dropped, kept = _greedy(np.array([0, 1]), np.array([1, 2]))
    assert dropped.tolist() == [1] and kept.tolist() == [0]
    dropped, kept = _greedy(np.array([0, 0, 3]), np.array([2, 1, 4]))
    assert sorted(zip(dropped.tolist(), kept.tolist())) == [(1, 0), (2, 0), (4, 3)]

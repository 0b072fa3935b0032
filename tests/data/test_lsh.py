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
    dropped = near_duplicates(sig, band_keys(sig, BANDS, ROWS), np.arange(len(texts)), 0.8)
    assert set(dropped.tolist()) <= set(range(200, 250))  # never an original, never an unrelated row
    assert len(dropped) >= 40  # 64 permutations estimate Jaccard with error ~0.04: most, not all


def test_dissimilar_rows_are_not_near_duplicates() -> None:
    texts = sentences(500, words=12, seed=2)
    half = [" ".join(t.split()[:6] + sentences(1, 6, seed=i)[0].split()) for i, t in enumerate(texts[:100])]
    sig = Signer(64).sign(shingles(t, 2) for t in texts + half)  # sharing half the words: Jaccard ~0.3
    assert len(near_duplicates(sig, band_keys(sig, BANDS, ROWS), np.arange(len(texts) + 100), 0.8)) == 0


def test_a_big_bucket_of_copies_keeps_one_per_cluster() -> None:
    a, b = sentences(2, words=40, seed=3)
    texts = [edit(a, i % 40, f"x{i}") for i in range(300)] + [edit(b, i % 40, f"y{i}") for i in range(300)]
    sig = Signer(64).sign(shingles(t, 2) for t in texts)
    dropped = near_duplicates(sig, band_keys(sig, BANDS, ROWS), np.arange(600), 0.8)
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

import numpy as np

from tuneloop.data.dedup import content_id, exact_duplicates, id_key


def keys(*texts: str) -> np.ndarray:
    return np.array([id_key(content_id(text=t)) for t in texts], dtype=np.uint64)


def test_ids_are_stable_and_normalised() -> None:
    assert content_id(text="Hello  World") == content_id(text="hello world") == "b94d27b9934d3e08"
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    swapped = [{"role": "assistant", "content": "Hi"}, {"role": "user", "content": "Hello"}]
    assert content_id(messages=msgs) != content_id(messages=swapped)  # roles are part of the content


def test_copies_are_dropped_keeping_the_first() -> None:
    k = keys("a", "b", "A", "a ")
    res = exact_duplicates(k, np.full(4, -1, dtype=np.int32), np.arange(4))
    assert res.duplicate.tolist() == [False, False, True, True] and not res.conflict.any()
    kept = exact_duplicates(k, np.full(4, -1, dtype=np.int32), np.arange(4), drop_copies=False)
    assert not kept.duplicate.any()


def test_label_conflicts_drop_all_by_default() -> None:
    k = keys("x", "x", "x", "y")
    labels = np.array([0, 1, 0, 0], dtype=np.int32)
    res = exact_duplicates(k, labels, np.arange(4))
    assert res.conflict.tolist() == [True, True, True, False]
    assert res.conflict_labels == {int(k[0]): [0, 1]}


def test_keep_majority_keeps_the_first_majority_row_and_ties_drop_all() -> None:
    k = keys("x", "x", "x", "z", "z")
    labels = np.array([1, 0, 0, 0, 1], dtype=np.int32)
    res = exact_duplicates(k, labels, np.arange(5), conflicts="keep_majority")
    assert res.conflict.tolist() == [True, False, False, True, True]  # "z" ties 1:1
    assert res.duplicate.tolist() == [False, False, True, False, False]


def test_only_rows_in_idx_are_considered() -> None:
    k = keys("a", "a", "a")
    res = exact_duplicates(k, np.full(3, -1, dtype=np.int32), np.array([1, 2]))
    assert res.duplicate.tolist() == [False, False, True]

import numpy as np

from tuneloop.data.split import TEST, TRAIN, VAL, assign


def test_stratified_split_keeps_label_proportions() -> None:
    labels = np.array([0] * 900 + [1] * 100)
    split = assign(labels, 1000, 0.1, 0.2, seed=0)
    for code, share in ((VAL, 0.1), (TEST, 0.2)):
        assert (split[labels == 0] == code).sum() == 900 * share
        assert (split[labels == 1] == code).sum() == 100 * share


def test_same_seed_same_split_other_seed_other_split() -> None:
    labels = np.arange(500) % 3
    a, b, c = (assign(labels, 500, 0.1, 0.1, seed=s) for s in (7, 7, 8))
    assert (a == b).all() and not (a == c).all()


def test_tiny_classes_keep_a_training_row() -> None:
    labels = np.array([0, 1, 1, 2, 2, 2])
    split = assign(labels, 6, 0.4, 0.4, seed=0)
    for lab in (0, 1, 2):
        assert (split[labels == lab] == TRAIN).sum() >= 1


def test_unstratified_split() -> None:
    split = assign(None, 100, 0.1, 0.1, seed=0)
    assert np.bincount(split).tolist() == [80, 10, 10]

"""MultiDAG+CL's difficulty measure and baby-step scheduler."""
from merc.models.train.curriculum import (
    buckets,
    difficulty,
    emotion_shifts,
    pool_for_epoch,
)


def test_emotion_shift_counts_changes_between_a_speakers_consecutive_turns():
    # A: joy, joy, anger (1 shift); B: sad, neutral (1 shift)
    speakers = [0, 1, 0, 1, 0]
    labels = [1, 4, 1, 0, 3]
    assert emotion_shifts(speakers, labels) == 2


def test_difficulty_is_shifts_plus_speakers_over_turns_plus_speakers():
    speakers = [0, 1, 0, 1, 0]
    labels = [1, 4, 1, 0, 3]
    assert difficulty(speakers, labels) == (2 + 2) / (5 + 2)
    assert difficulty([0, 0, 0], [1, 1, 1]) == 1 / 4


def test_buckets_are_ordered_by_difficulty_and_pools_grow_one_bucket_per_epoch():
    diffs = [0.9, 0.1, 0.5, 0.3, 0.7]
    b = buckets(diffs, 3)
    assert b == [[1, 3], [2, 4], [0]]
    assert pool_for_epoch(b, 1) == [1, 3]
    assert pool_for_epoch(b, 2) == [1, 3, 2, 4]
    assert sorted(pool_for_epoch(b, 3)) == [0, 1, 2, 3, 4]
    assert sorted(pool_for_epoch(b, 10)) == [0, 1, 2, 3, 4]

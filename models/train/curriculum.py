"""MultiDAG+CL's curriculum: dialogues ordered by difficulty, added bucket by bucket ("baby steps")."""
from __future__ import annotations

import math
from collections.abc import Sequence


def emotion_shifts(speakers: Sequence[int], labels: Sequence[int]) -> int:
    """Times a speaker's turn carries a different label from that speaker's previous turn."""
    last: dict[int, int] = {}
    shifts = 0
    for speaker, label in zip(speakers, labels, strict=True):
        if speaker in last and last[speaker] != label:
            shifts += 1
        last[speaker] = label
    return shifts


def difficulty(speakers: Sequence[int], labels: Sequence[int]) -> float:
    """(emotion shifts + speakers) / (utterances + speakers): Eq. 2.29 of the dissertation.

    The speaker count smooths the ratio so that short dialogues are not judged easy or hard
    on a handful of turns.
    """
    n_speakers = len(set(speakers))
    return (emotion_shifts(speakers, labels) + n_speakers) / (len(labels) + n_speakers)


def buckets(difficulties: Sequence[float], k: int) -> list[list[int]]:
    """Indices split into k equal-size buckets (ceil(n/k)), easiest first."""
    order = sorted(range(len(difficulties)), key=lambda i: (difficulties[i], i))
    size = math.ceil(len(order) / k) if order else 1
    return [order[i:i + size] for i in range(0, len(order), size)]


def pool_for_epoch(bucket_list: Sequence[Sequence[int]], epoch: int) -> list[int]:
    """Training indices for a 1-based epoch: the union of the first min(epoch, k) buckets."""
    return [i for bucket in bucket_list[:min(epoch, len(bucket_list))] for i in bucket]

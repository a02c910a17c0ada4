"""The shareable model file: a ModelBundle as safetensors, with no pickle anywhere (`charrnn export`).

    8 bytes    N, the header's length (little-endian unsigned 64-bit)
    N bytes    JSON: per tensor {"dtype", "shape", "data_offsets": [begin, end]} (offsets into the data), and
               "__metadata__": {str: str}
    the rest   the tensors' bytes, back to back, no holes

The tensors are the weights (F32, or F16/BF16 to halve the file); the metadata is everything else that sampling,
scoring and `info` read: a format marker, the model config, the vocabulary, and the run's facts and provenance
(each JSON in a string: safetensors allows only strings there). No optimizer state: such a file starts new runs
(--init-from) but never resumes one. A tied model stores its shared matrix once, as embed.weight.

Reading checks the header before a byte of the weights is read: N against the file's size and a cap (N sizes our
own read), the JSON, every tensor's offsets against the data, then the marker (a foreign file, say another
model's weights, is refused from its header alone), then the dtypes. The weights come back float32 and go through
ModelBundle.from_dict, so they meet every check a .pt checkpoint's do. checkpoint.py does the file I/O around this
(file-kind checks, atomic durable writes); this module only turns bytes into a bundle and back.
"""

from __future__ import annotations

import json
import math
import reprlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import safetensors.torch
import torch

from charrnn.checkpoint.state import FORMAT_NAME, FORMAT_VERSION, ModelBundle, run_dict
from charrnn.errors import CheckpointError, UsageError
from charrnn.fields import field_error, require_dict, show
from charrnn.version import __version__

SUFFIX = ".safetensors"
MARKER = "charrnn-safetensors"
MARKER_VERSION = 1
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_ELEMENT_BYTES = {"F32": 4, "F16": 2, "BF16": 2}  # the safetensors dtypes export writes
# The safetensors library's own cap. charrnn's largest header, a vocabulary of every Unicode code point written
# as JSON escapes, is under 20 MB.
MAX_HEADER = 100_000_000
ADVICE = "the file is damaged or was edited, so export the model again from its checkpoint"
_TIED = "head.weight"  # with tie_weights it is embed.weight, stored once under that name


# ---------------------------------------------------------------- writing


def check_options(path: Path, dtype: str) -> None:
    """UsageError for a dtype other than fp32/fp16/bf16, or a file name that does not say safetensors."""
    _torch_dtype(dtype)
    if Path(path).suffix != SUFFIX:
        raise UsageError(
            f"the exported model file must end in {SUFFIX}, not {Path(path).name!r}; name it e.g. model{SUFFIX}."
        )


def _torch_dtype(dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise UsageError(f"--dtype must be one of {', '.join(DTYPES)}, not {dtype!r}.")
    return DTYPES[dtype]


def encode(bundle: ModelBundle, dtype: str = "fp32") -> bytes:
    """The whole file's bytes: the weights cast to `dtype`, everything else as string metadata."""
    target = _torch_dtype(dtype)
    weights = {k: v for k, v in bundle.weights.items() if not (bundle.config.tie_weights and k == _TIED)}
    tensors = {name: _cast(t, target, name, dtype) for name, t in weights.items()}
    return safetensors.torch.save(tensors, metadata=_metadata(bundle, dtype))


def _cast(t: torch.Tensor, target: torch.dtype, name: str, dtype: str) -> torch.Tensor:
    out = t.detach().to("cpu", target).contiguous()
    # fp16 tops out at 65504: a larger weight would turn into inf, and the file would then be refused on reading.
    if not bool(torch.isfinite(out).all()) and bool(torch.isfinite(t).all()):
        raise UsageError(f"weight {name} has values beyond the range of {dtype}; export with --dtype bf16 or fp32.")
    return out


def _metadata(bundle: ModelBundle, dtype: str) -> dict[str, str]:
    # json.dumps escapes every non-ASCII character, so a vocabulary of any characters is a valid UTF-8 string.
    return {
        "format": MARKER,
        "format_version": str(MARKER_VERSION),
        "model_config": json.dumps(bundle.config.to_dict()),
        "vocab": json.dumps(bundle.vocab.chars),
        "run": json.dumps(run_dict(bundle.facts, bundle.provenance), allow_nan=False),
        "dtype": dtype,
        "exported_by": f"charrnn {__version__} with torch {torch.__version__}",
    }


# ---------------------------------------------------------------- reading


def is_safetensors(path: Path, head: bytes) -> bool:
    """Whether to read `path` as safetensors: by its name, or by its first 9 bytes (a length, then the JSON's
    opening brace), so a renamed file is still recognised; a .pt zip starts with PK instead."""
    return Path(path).suffix == SUFFIX or (len(head) >= 9 and head[8:9] == b"{" and not head.startswith(b"PK"))


@dataclass
class Header:
    raw: bytes  # the file's first 8 + N bytes, as read
    tensors: dict[str, dict]  # name -> {"dtype", "shape", "data_offsets"}, each checked against the file
    metadata: dict[str, str]


def read_header(f: BinaryIO, size: int, path: Path) -> Header:
    """Read and check the header of the `size`-byte file open at its start; nothing else is read."""
    if size < 8:
        raise _refuse(path, f"is truncated ({size} bytes, less than the 8-byte header length)")
    length_bytes = f.read(8)
    n = int.from_bytes(length_bytes, "little")
    if n > size - 8:
        raise _refuse(path, f"is truncated or corrupt (its header length is {n:,} bytes but {size - 8:,} follow)")
    if n > MAX_HEADER:
        raise _refuse(path, f"has a {n:,}-byte header, more than the {MAX_HEADER:,} a model file can have")
    raw = f.read(n)
    if len(raw) != n:
        raise _refuse(path, "is truncated (it shrank while being read)")
    parsed = _parse_json(raw, path)
    metadata = parsed.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _refuse(path, "has a malformed header (its __metadata__ is not a map of strings)")
    _check_layout(parsed, size - 8 - n, path)
    return Header(length_bytes + raw, parsed, metadata)


def _parse_json(raw: bytes, path: Path) -> dict:
    try:
        parsed = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _refuse(path, "has a malformed header (not valid JSON)") from None
    if not isinstance(parsed, dict):
        raise _refuse(path, f"has a malformed header (JSON {type(parsed).__name__}, not an object)")
    return parsed


def _check_layout(tensors: dict, data_len: int, path: Path) -> None:
    """Each entry well-formed and inside the data, and the entries tiling the data exactly (the format's rule)."""
    spans = []
    for name, entry in tensors.items():
        if not (isinstance(entry, dict) and isinstance(entry.get("dtype"), str) and _is_shape(entry.get("shape"))):
            raise _refuse(path, f"has a malformed header (tensor {_text(name)} lacks a dtype or a valid shape)")
        offsets = entry.get("data_offsets")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
            raise _refuse(path, f"has a malformed header (tensor {_text(name)} has data_offsets {show(offsets)})")
        begin, end = offsets
        if not 0 <= begin <= end <= data_len:
            raise _refuse(
                path,
                f"is truncated or corrupt (tensor {_text(name)} lies at bytes {begin:,} to {end:,} of {data_len:,})",
            )
        spans.append((begin, end))
    covered = 0
    for begin, end in sorted(spans):
        if begin != covered:
            raise _refuse(path, f"is corrupt (its tensors' data {'overlap' if begin < covered else 'has holes'})")
        covered = end
    if covered != data_len:
        raise _refuse(path, f"is corrupt ({data_len - covered:,} bytes after its last tensor)")


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_shape(v: object) -> bool:
    return isinstance(v, list) and all(_is_int(d) and d >= 0 for d in v)


def check_header(header: Header, path: Path) -> None:
    """A charrnn model file of a version this charrnn reads, holding float tensors of consistent sizes."""
    marker = header.metadata.get("format")
    if marker != MARKER:
        what = f"its format is {_text(marker)}" if marker is not None else "its metadata has no charrnn format marker"
        raise CheckpointError.about(
            path,
            f"is a safetensors file but not a charrnn model ({what})",
            f"pass a model exported with `charrnn export CHECKPOINT -o FILE{SUFFIX}`",
        )
    _check_version(header.metadata.get("format_version"), path)
    for name, entry in header.tensors.items():
        dtype, shape = entry["dtype"], entry["shape"]
        if dtype not in _ELEMENT_BYTES:
            problem = f"has dtype {_text(dtype)}, but a charrnn model file holds {', '.join(_ELEMENT_BYTES)} weights"
            raise field_error(path, f"tensor {_text(name)}", problem, ADVICE)
        begin, end = entry["data_offsets"]
        if math.prod(shape) * _ELEMENT_BYTES[dtype] != end - begin:
            problem = f"of shape {tuple(shape)} in {dtype} does not fill its {end - begin:,} bytes"
            raise field_error(path, f"tensor {_text(name)}", problem, ADVICE)


def _check_version(version: str | None, path: Path) -> None:
    if version is None or not version.isdigit() or len(version) > 9:
        raise field_error(path, "metadata 'format_version'", f"is {show(version)}, not a version number", ADVICE)
    if int(version) > MARKER_VERSION:
        raise CheckpointError.about(
            path, f"has format_version {version}, newer than this charrnn reads ({MARKER_VERSION})", "upgrade charrnn"
        )
    if int(version) < MARKER_VERSION:
        raise CheckpointError.about(
            path, f"has format_version {version}, older than this charrnn reads", "export the model again"
        )


def decode(header: Header, blob: bytes, path: Path) -> ModelBundle:
    """The bundle in the whole file `blob` (whose header `header` was checked), weights float32, every field
    checked by ModelBundle.from_dict as for a .pt checkpoint."""
    config = _json(header.metadata, "model_config", path)
    chars = _json(header.metadata, "vocab", path)
    run = require_dict(_json(header.metadata, "run", path), "metadata 'run'", path, ADVICE)
    weights = {name: _as_float32(t) for name, t in _load(blob, path).items()}
    if isinstance(config, dict) and config.get("tie_weights") is True:
        _tie(weights, path)
    core = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "model": weights,
        "model_config": config,
        "vocab": {"chars": chars},
    }
    return ModelBundle.from_dict(run | core, path, ADVICE)


def _json(metadata: dict[str, str], key: str, path: Path):
    if key not in metadata:
        raise field_error(path, f"metadata {key!r}", "is missing", ADVICE)
    try:
        return json.loads(metadata[key])
    except (ValueError, RecursionError):  # ValueError includes an integer of more digits than Python parses
        raise field_error(path, f"metadata {key!r}", "is not valid JSON", ADVICE) from None


def _load(blob: bytes, path: Path) -> dict[str, torch.Tensor]:
    try:
        return safetensors.torch.load(blob)
    except Exception as exc:  # SafetensorError and friends: our checks passed, so the library saw something else
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise _refuse(path, f"is corrupt ({first})") from exc


def _as_float32(t: torch.Tensor) -> torch.Tensor:
    # A copy either way: the library's tensors are views of read-only bytes.
    return t.to(torch.float32) if t.dtype != torch.float32 else t.clone()


def _tie(weights: dict[str, torch.Tensor], path: Path) -> None:
    """Share embed.weight as head.weight again, as CharRNN does; a second matrix there would silently win."""
    if _TIED in weights:
        problem = "is stored, but model_config.tie_weights says it is embed.weight"
        raise field_error(path, f"tensor {_TIED!r}", problem, ADVICE)
    if "embed.weight" in weights:
        weights[_TIED] = weights["embed.weight"]


def _text(s: str) -> str:
    """A name from the file, quoted and cut short: a crafted name can be a megabyte long."""
    return reprlib.repr(s)


def _refuse(path: Path, problem: str) -> CheckpointError:
    return CheckpointError.about(path, problem, ADVICE)

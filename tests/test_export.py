"""The shareable model file (export.py, checkpoint.export_bundle / load_bundle): safetensors weights with the
config, vocabulary and run facts as metadata; read wherever a .pt is, refused in one sentence when it is crafted."""

from __future__ import annotations

import json
import math
import struct
import zipfile
from pathlib import Path

import pytest
import safetensors.torch
import torch

from charrnn.checkpoint import safetensors as export
from charrnn.checkpoint.files import export_bundle, load_bundle, load_checkpoint, load_model, verify_checkpoint
from charrnn.checkpoint.state import ModelBundle, Provenance, RunFacts
from charrnn.errors import CheckpointError, CheckpointWriteError, UsageError
from charrnn.generation.sample import SampleConfig, generate
from charrnn.model import CharRNN, ModelConfig
from charrnn.text.vocab import Vocab
from tests.conftest import cli, word_text

FORMAT1 = Path(__file__).resolve().parent / "fixtures" / "format1" / "best.pt"
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def bundle() -> ModelBundle:
    """A real trained checkpoint's model, with the facts and provenance of its run."""
    return load_bundle(FORMAT1)


@pytest.fixture
def exported(tmp_path, bundle) -> Path:
    return export_bundle(bundle, tmp_path / "model.safetensors")


def _wide_bundle(tie: bool = False) -> ModelBundle:
    """A 2 x 128 LSTM over a 65-character vocabulary (tiny-shakespeare's size), facts filled in."""
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=65, model="lstm", hidden_size=128, num_layers=2, tie_weights=tie)
    vocab = Vocab([chr(c) for c in range(33, 33 + 65)])
    bundle = ModelBundle.of(CharRNN(config), vocab)
    bundle.facts = RunFacts(step=5000, epoch=2.5, val_loss=1.52, best_val_loss=1.5, best_step=4000, corpus_name="tiny")
    return bundle


def _same_weights(a: ModelBundle, b: ModelBundle) -> bool:
    return a.weights.keys() == b.weights.keys() and all(torch.equal(a.weights[k], b.weights[k]) for k in a.weights)


# ---------------------------------------------------------------- round trips


def test_fp32_round_trips_exactly(bundle, exported):
    back = load_bundle(exported)
    assert _same_weights(back, bundle) and all(t.dtype == torch.float32 for t in back.weights.values())
    assert back.config == bundle.config and back.vocab == bundle.vocab
    assert back.facts == bundle.facts and back.facts.step == 20 and back.facts.corpus_name == "words"
    assert back.provenance == bundle.provenance and back.provenance.corpus_sha256 is not None


def test_a_bundle_without_facts_round_trips(tmp_path):
    bundle = _wide_bundle()
    bundle.facts, bundle.provenance = RunFacts(), Provenance()
    back = load_bundle(export_bundle(bundle, tmp_path / "m.safetensors"))
    assert back.facts == RunFacts() and back.provenance == Provenance() and _same_weights(back, bundle)
    bundle.facts = RunFacts(step=3, val_loss=math.nan, best_val_loss=math.inf)  # not evaluated yet: unknown
    back = load_bundle(export_bundle(bundle, tmp_path / "m.safetensors"))
    assert back.facts == RunFacts(step=3)


@pytest.mark.parametrize("dtype, tolerance", [("fp16", 2**-11), ("bf16", 2**-8)])
def test_half_precision_halves_the_file_and_rounds_the_weights(tmp_path, dtype, tolerance):
    bundle = _wide_bundle()
    full = export_bundle(bundle, tmp_path / "fp32.safetensors").stat().st_size
    half = export_bundle(bundle, tmp_path / f"{dtype}.safetensors", dtype).stat().st_size
    assert 0.49 < half / full < 0.52, (half, full)
    back = load_bundle(tmp_path / f"{dtype}.safetensors")
    for name, w in bundle.weights.items():
        assert back.weights[name].dtype == torch.float32
        torch.testing.assert_close(back.weights[name], w, rtol=tolerance, atol=1e-6)
    assert back.config == bundle.config and back.facts == bundle.facts


def test_sampling_from_the_export_gives_the_same_text(bundle, exported):
    cfg = SampleConfig(length=300, seed=11, temperature=1.0, num_samples=2)
    prime = bundle.vocab.encode("the ").tolist()

    def text(b: ModelBundle) -> list[str]:
        ids = torch.cat(list(generate(b.build_model(CPU), prime, cfg, CPU)), dim=1)  # (B, length)
        return [b.vocab.decode(row) for row in ids.tolist()]

    assert text(load_bundle(exported)) == text(bundle)
    model, again = load_model(exported, CPU)
    assert not model.training and again.config == bundle.config


def test_tied_weights_are_stored_once_and_tied_again(tmp_path):
    bundle = _wide_bundle(tie=True)
    path = export_bundle(bundle, tmp_path / "tied.safetensors")
    assert "head.weight" not in _header(path)
    back = load_bundle(path)
    assert back.weights["head.weight"] is back.weights["embed.weight"] and _same_weights(back, bundle)
    x = torch.tensor([[1, 2, 3]])  # (B, T)
    assert torch.equal(back.build_model()(x)[0], bundle.build_model()(x)[0])


def test_the_file_is_a_header_and_raw_tensors_with_no_pickle(exported, bundle):
    blob = exported.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    assert not zipfile.is_zipfile(exported) and blob[8:9] == b"{"
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    assert len(blob) == 8 + n + sum(math.prod(t["shape"]) * 4 for t in tensors.values())  # nothing else in it
    meta = header["__metadata__"]
    assert meta["format"] == "charrnn-safetensors" and meta["format_version"] == "1" and meta["dtype"] == "fp32"
    run = json.loads(meta["run"])
    assert run["corpus"]["sha256"] == bundle.provenance.corpus_sha256 and run["charrnn_version"]
    assert run["best_val_loss"] == bundle.facts.best_val_loss and run["torch_version"] == bundle.facts.torch_version
    assert "optimizer" not in meta and set(tensors) == set(bundle.weights)


def test_the_file_is_recognised_by_its_content_as_well_as_its_name(exported, bundle):
    renamed = exported.rename(exported.with_name("model.bin"))
    assert _same_weights(load_bundle(renamed), bundle)
    verify_checkpoint(renamed)  # what train --init-from checks before it starts


def test_an_export_starts_new_runs_but_never_resumes_one(exported):
    verify_checkpoint(exported)
    with pytest.raises(CheckpointError, match="cannot be resumed; resume from the run's last.pt, or .* --init-from"):
        load_checkpoint(exported)


# ---------------------------------------------------------------- writing


@pytest.mark.parametrize(
    "name, dtype, expected",
    [
        ("m.safetensors", "fp8", "--dtype must be one of fp32, fp16, bf16, not 'fp8'"),
        ("m.pt", "fp32", "must end in .safetensors, not 'm.pt'"),
    ],
)
def test_export_refuses_a_bad_dtype_or_name_and_writes_nothing(tmp_path, bundle, name, dtype, expected):
    with pytest.raises(UsageError, match=expected):
        export_bundle(bundle, tmp_path / name, dtype)
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_weights_beyond_fp16(tmp_path):
    bundle = _wide_bundle()
    bundle.weights["head.bias"] = bundle.weights["head.bias"] + 1e5
    with pytest.raises(UsageError, match="head.bias has values beyond the range of fp16; export with --dtype bf16"):
        export_bundle(bundle, tmp_path / "m.safetensors", "fp16")
    export_bundle(bundle, tmp_path / "m.safetensors", "bf16")


def test_export_replaces_atomically_and_leaves_no_temp_file(tmp_path, bundle):
    path = tmp_path / "m.safetensors"
    path.write_bytes(b"old")
    export_bundle(bundle, path, "fp16")
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"] and load_bundle(path).config == bundle.config
    with pytest.raises(CheckpointWriteError, match="could not write"):
        export_bundle(bundle, tmp_path / "missing" / "m.safetensors")


# ---------------------------------------------------------------- refusals


def _header(path: Path) -> dict:
    blob = path.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8 : 8 + n])


def _raw(path: Path, header: object, data: bytes = b"", length: int | None = None) -> Path:
    text = json.dumps(header).encode() if not isinstance(header, bytes) else header
    path.write_bytes(struct.pack("<Q", len(text) if length is None else length) + text + data)
    return path


def _relaid(exported: Path, edit) -> Path:
    """The exported file with its header edited by edit(header), data unchanged."""
    blob = exported.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    edit(header)
    return _raw(exported.with_name("crafted.safetensors"), header, blob[8 + n :])


def _resaved(exported: Path, tensors=None, metadata=None) -> Path:
    """The exported file's tensors and metadata, edited, saved again by the safetensors library."""
    blob = exported.read_bytes()
    t = {k: v.clone() for k, v in safetensors.torch.load(blob).items()}
    meta = dict(_header(exported)["__metadata__"])
    t = tensors(t) if tensors else t
    if metadata:
        meta = metadata(meta)
    path = exported.with_name("crafted.safetensors")
    path.write_bytes(safetensors.torch.save(t, metadata=meta))
    return path


def _refused(path: Path) -> str:
    with pytest.raises(CheckpointError) as info:
        load_bundle(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message and message.endswith("."), message
    return message


def _set(d: dict, key: str, value) -> dict:
    return {**d, key: value}


def _meta(key: str, value):
    return lambda m: _set(m, key, value) if value is not None else {k: v for k, v in m.items() if k != key}


def _config(**changes):
    return lambda m: _set(m, "model_config", json.dumps({**json.loads(m["model_config"]), **changes}))


@pytest.mark.parametrize("keep", [4, 8, 100, -10])
def test_a_truncated_file_is_refused(exported, keep):
    blob = exported.read_bytes()
    cut = exported.with_name("cut.safetensors")
    cut.write_bytes(blob[:keep])
    assert "truncated" in _refused(cut)


@pytest.mark.parametrize(
    "header, length, expected",
    [
        ({"__metadata__": {}}, 1 << 40, "header length is 1,099,511,627,776 bytes but"),
        (b"{not json", None, "malformed header (not valid JSON)"),
        (b"{" + b"\xff" * 4 + b"}", None, "malformed header (not valid JSON)"),
        (b"[" * 100_000 + b"]" * 100_000, None, "malformed header"),
        ([1, 2], None, "malformed header (JSON list, not an object)"),
        ({"__metadata__": {"format": 1}}, None, "__metadata__ is not a map of strings"),
        ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 9]}}, None, "lies at bytes 0 to 9 of 8"),
        ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [4, 0]}}, None, "lies at bytes 4 to 0"),
        ({"w": {"dtype": "F32", "shape": [2], "data_offsets": "0-8"}}, None, "has data_offsets '0-8'"),
        ({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, None, "lacks a dtype or a valid shape"),
        ({"w": {"shape": [2], "data_offsets": [0, 8]}}, None, "lacks a dtype or a valid shape"),
        ({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, None, "4 bytes after its last tensor"),
    ],
)
def test_a_malformed_file_is_refused_from_its_header(tmp_path, header, length, expected):
    path = _raw(tmp_path / "bad.safetensors", header, b"\0" * 8, length)
    message = _refused(path)
    assert expected in message and "export the model again" in message, message


def test_overlapping_or_gapped_tensors_are_refused(exported):
    def overlap(h):
        first, second = sorted((k for k in h if k != "__metadata__"), key=lambda k: h[k]["data_offsets"])[:2]
        h[second]["data_offsets"][0] -= 4

    assert "tensors' data overlap" in _refused(_relaid(exported, overlap))


def test_a_header_over_the_cap_is_refused_before_it_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr(export, "MAX_HEADER", 64)
    path = _raw(tmp_path / "big.safetensors", {"__metadata__": {"pad": "x" * 100}})
    assert "more than the 64 a model file can have" in _refused(path)


@pytest.mark.parametrize(
    "metadata, expected",
    [
        (None, "is a safetensors file but not a charrnn model (its metadata has no charrnn format marker)"),
        ({"format": "pt"}, "not a charrnn model (its format is 'pt')"),
    ],
)
def test_a_foreign_safetensors_file_is_refused(tmp_path, metadata, expected):
    path = tmp_path / "other.safetensors"
    path.write_bytes(safetensors.torch.save({"transformer.wte": torch.zeros(4, 4, dtype=torch.int64)}, metadata))
    message = _refused(path)
    assert expected in message and "charrnn export CHECKPOINT -o FILE.safetensors" in message
    with pytest.raises(CheckpointError, match="not a charrnn model"):
        verify_checkpoint(path)  # train --init-from refuses it before touching a corpus


@pytest.mark.parametrize(
    "edit, expected",
    [
        (_meta("format_version", "2"), "has format_version 2, newer than this charrnn reads (1); upgrade charrnn"),
        (_meta("format_version", "one"), "metadata 'format_version' is 'one'"),
        (_meta("format_version", None), "metadata 'format_version' is None"),
        (_meta("vocab", None), "metadata 'vocab' is missing"),
        (_meta("run", None), "metadata 'run' is missing"),
        (_meta("model_config", "{oops"), "metadata 'model_config' is not valid JSON"),
        (_meta("run", "[1]"), "metadata 'run' is [1] (a list), not a dict"),
        (_meta("run", json.dumps({"step": "many"})), "step is 'many'"),
        (_meta("run", json.dumps({"corpus": {"sha256": 5}})), "corpus.sha256 is 5"),
        (_meta("vocab", json.dumps(["b", "a"])), "vocab is not a sorted list"),
        (_meta("vocab", json.dumps(["a", "b"])), "vocab has 2 characters but model_config.vocab_size is 28"),
        (_config(hidden_size="a lot"), "model_config.hidden_size is 'a lot'"),
        (_config(vocab_size=10**9), "model_config.vocab_size is 1000000000"),
        (_config(model="transformer"), "model_config.model is 'transformer'"),
        (_meta("model_config", json.dumps([1])), "model_config is a list, not a dict"),
    ],
)
def test_missing_or_malformed_metadata_is_refused_naming_the_field(exported, edit, expected):
    message = _refused(_resaved(exported, metadata=edit))
    assert expected in message, message


def _replace(name: str, value: torch.Tensor):
    return lambda t: _set(t, name, value)


@pytest.mark.parametrize(
    "edit, expected",
    [
        (_replace("head.bias", torch.zeros(27)), "model['head.bias'] has shape (27,) but must have shape (28,)"),
        (lambda t: {k: v for k, v in t.items() if k != "head.bias"}, "lacks head.bias, so it does not fit"),
        (_replace("extra", torch.zeros(2)), "has unexpected 'extra'"),
        (_replace("head.bias", torch.zeros(28, dtype=torch.int32)), "tensor 'head.bias' has dtype 'I32'"),
        (_replace("head.bias", torch.zeros(28, dtype=torch.float64)), "tensor 'head.bias' has dtype 'F64'"),
        (_replace("head.bias", torch.full((28,), math.nan)), "model['head.bias'] holds NaN or infinite values"),
        (_replace("head.bias", torch.full((28,), math.inf, dtype=torch.float16)), "holds NaN or infinite values"),
    ],
)
def test_a_wrong_tensor_is_refused_naming_it(exported, edit, expected):
    message = _refused(_resaved(exported, tensors=edit))
    assert expected in message, message


def test_a_tensor_whose_size_disagrees_with_its_dtype_is_refused(exported):
    def relabel(h):
        h["head.bias"]["dtype"] = "F16"

    assert "tensor 'head.bias' of shape (28,) in F16 does not fill its 112 bytes" in _refused(
        _relaid(exported, relabel)
    )


def test_a_tied_model_with_a_second_head_matrix_is_refused(tmp_path):
    path = export_bundle(_wide_bundle(tie=True), tmp_path / "tied.safetensors")
    crafted = _resaved(path, tensors=_replace("head.weight", torch.zeros(65, 128)))
    assert "tensor 'head.weight' is stored, but model_config.tie_weights says it is embed.weight" in _refused(crafted)


# ---------------------------------------------------------------- the commands that read it


def test_info_describes_the_export_as_it_describes_the_checkpoint(tmp_path, exported):
    pt, st = (cli(["info", p], cwd=tmp_path) for p in (FORMAT1, exported))
    assert pt.returncode == st.returncode == 0, st.stderr
    assert pt.stdout.splitlines()[1:] == st.stdout.splitlines()[1:] and str(exported) in st.stdout
    assert "words (14,633 characters)" in st.stdout and "torch 2" in st.stdout


def test_train_init_from_starts_a_new_run_from_the_export(tmp_path, exported):
    corpus = tmp_path / "words.txt"
    corpus.write_text(word_text(), encoding="utf-8")
    args = ["train", corpus, "--run-dir", tmp_path / "tuned", "--init-from", exported, "--max-steps", "2"]
    r = cli([*args, "--eval-every", "2", "--batch-size", "4", "--seq-len", "16", "--device", "cpu"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert load_bundle(tmp_path / "tuned" / "last.pt").config == load_bundle(exported).config

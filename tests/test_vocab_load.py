"""A checkpoint's vocabulary as a hostile editor could leave it (#19 item 6).

Lone surrogates ('\\ud800'..'\\udfff') fit every structural check, yet no UTF-8 stream can carry one: sampling
such a model failed mid-stream with a wrong diagnosis (a full disk). Every command that loads a checkpoint must
refuse it at load, in one sentence naming the character escaped. Control characters (ESC, BEL, NUL, C1 CSI) are
a legitimate vocabulary, written to stdout as the model's text, but never raw to stderr.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import string
from pathlib import Path

import pytest
import torch
from rich.console import Console
from safetensors import safe_open
from safetensors.torch import save_file

from charrnn.display import printable
from charrnn.text.vocab import StoredVocabError, Vocab, listed
from charrnn.training.progress import Reporter
from tests.conftest import TINY_TRAIN, cli, word_text

RAW_CONTROLS = ("\x1b", "\x07", "\x00", "\x9b", "\u202e")
# The trained run's 28 characters are "\n", " " and a-z; these keep the count and the sorted order.
CONTROL_CHARS = ["\x00", "\x07", "\n", "\x1b", " ", *string.ascii_lowercase[:21], "\x9b", "\u202e"]


def _tampered(src: Path, run_dir: Path, chars: list[str]) -> Path:
    """A copy of `src` in a run directory of its own, its vocabulary replaced (torch.save: valid CRCs)."""
    ckpt = torch.load(src, weights_only=True)
    assert len(chars) == len(ckpt["vocab"]["chars"]) and chars == sorted(chars)
    ckpt["vocab"] = {"chars": chars}
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, run_dir / "best.pt")
    return run_dir / "best.pt"


@pytest.fixture(scope="module")
def surrogate_ckpt(trained_run, tmp_path_factory) -> Path:
    chars = torch.load(trained_run / "best.pt", weights_only=True)["vocab"]["chars"]
    return _tampered(trained_run / "best.pt", tmp_path_factory.mktemp("sur") / "run", chars[:-1] + ["\ud800"])


@pytest.fixture(scope="module")
def control_ckpt(trained_run, tmp_path_factory) -> Path:
    return _tampered(trained_run / "best.pt", tmp_path_factory.mktemp("ctl") / "run", CONTROL_CHARS)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _refused(proc) -> str:
    """Exit 1, one line of stderr naming the vocabulary and U+D800, never the raw character, no traceback."""
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-3000:])
    assert len(lines) == 1 and lines[0].startswith("Error: "), proc.stderr[-3000:]
    line = lines[0]
    assert "vocab" in line and "U+D800" in line and "surrogate" in line, line
    assert "\ud800" not in line and "free some space" not in line, line
    return line


def _no_raw_controls(stderr: str) -> None:
    leaked = [hex(ord(c)) for c in RAW_CONTROLS if c in stderr]
    assert not leaked, (leaked, stderr[-3000:])


@pytest.mark.parametrize(
    "command",
    [
        ["sample", "{ckpt}", "--length", "50"],
        ["sample", "{ckpt}", "--length", "50", "--beam", "2"],
        ["score", "{ckpt}", "{text}"],
        ["info", "{ckpt}"],
        ["export", "{ckpt}", "-o", "{out}"],
    ],
    ids=["sample", "beam", "score", "info", "export"],
)
def test_a_surrogate_vocabulary_is_refused_at_load(surrogate_ckpt, tmp_path, command):
    (tmp_path / "text.txt").write_text("the cat sat\n", encoding="utf-8")
    before = _digest(surrogate_ckpt)
    fill = {"{ckpt}": str(surrogate_ckpt), "{text}": "text.txt", "{out}": str(tmp_path / "out.safetensors")}
    proc = cli([fill.get(a, a) for a in command], cwd=tmp_path)
    line = _refused(proc)
    assert str(surrogate_ckpt) in line, line
    assert proc.stdout == ""  # refused before the first character, not mid-stream
    assert _digest(surrogate_ckpt) == before
    assert not (tmp_path / "out.safetensors").exists()


def test_resume_refuses_a_surrogate_vocabulary(trained_run, tmp_path):
    corpus = tmp_path / "words.txt"
    corpus.write_text(word_text(), encoding="utf-8")  # the trained run's corpus: its hash matches
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)  # copies break the hard links between best.pt, last.pt and ckpt-*.pt
    chars = torch.load(trained_run / "last.pt", weights_only=True)["vocab"]["chars"]
    for pt in run.glob("*.pt"):
        _tampered(trained_run / "last.pt", run, chars[:-1] + ["\ud800"]).replace(pt)
    proc = cli(["train", corpus, "--resume", "--run-dir", run, "--max-steps", "30", "--device", "cpu", "-q"], tmp_path)
    _refused(proc)


def test_init_from_refuses_a_surrogate_vocabulary(surrogate_ckpt, tmp_path):
    corpus = tmp_path / "words.txt"
    corpus.write_text(word_text(), encoding="utf-8")
    before = _digest(surrogate_ckpt)
    args = ["train", corpus, "--run-dir", tmp_path / "tuned", "--init-from", surrogate_ckpt, *TINY_TRAIN, "-q"]
    proc = cli(args, tmp_path)
    _refused(proc)
    assert _digest(surrogate_ckpt) == before


def test_an_exported_model_with_a_surrogate_vocabulary_is_refused(trained_run, tmp_path):
    good = tmp_path / "good.safetensors"
    assert cli(["export", trained_run, "-o", good], tmp_path).returncode == 0
    with safe_open(str(good), "pt") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118  # not a dict
    chars = json.loads(metadata["vocab"])
    metadata["vocab"] = json.dumps(chars[:-1] + ["\udfff"])  # json escapes it: a valid UTF-8 header
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata=metadata)
    proc = cli(["info", bad], tmp_path)
    assert "Traceback" not in proc.stderr and proc.returncode == 1, proc.stderr
    assert proc.stderr.count("\n") == 1 and "U+DFFF" in proc.stderr and "vocab" in proc.stderr, proc.stderr


def test_vocab_from_dict_names_every_surrogate_escaped():
    chars = ["a", "b", "\ud800", "\udbff", "\udfff", "\ue000"]
    with pytest.raises(StoredVocabError) as caught:
        Vocab.from_dict({"chars": chars})
    assert "3 lone surrogates (U+D800, U+DBFF, U+DFFF)" in caught.value.problem
    assert not any("\ud800" <= c <= "\udfff" for c in str(caught.value))
    Vocab.from_dict({"chars": ["\ud7ff", "\ue000"]})  # the code points on either side are fine


def test_sample_with_an_unknown_control_prime_writes_no_raw_controls_to_stderr(control_ckpt, tmp_path):
    proc = cli(["sample", control_ckpt, "--length", "20", "--prime", "a\x01\x9c\u202dz"], tmp_path)
    assert proc.returncode == 1 and "never saw" in proc.stderr, proc.stderr
    assert "'\\x01'" in proc.stderr and "'\\x9c'" in proc.stderr and "'\\u202d'" in proc.stderr, proc.stderr
    _no_raw_controls(proc.stderr)
    assert "\x01" not in proc.stderr and "\x9c" not in proc.stderr and "\u202d" not in proc.stderr


def test_sampling_a_control_vocabulary_keeps_stderr_clean(control_ckpt, tmp_path):
    proc = cli(["sample", control_ckpt, "--length", "400", "--prime", "a\x1b", "--seed", "3"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    _no_raw_controls(proc.stderr)


def test_info_on_a_control_vocabulary_keeps_stderr_clean(control_ckpt, tmp_path):
    proc = cli(["info", control_ckpt], tmp_path)
    assert proc.returncode == 0, proc.stderr
    _no_raw_controls(proc.stderr)


SCORE_MODES = {"whole": [], "lines": ["--per-line"], "json": ["--json"], "heat": ["--heatmap"]}


@pytest.mark.parametrize("mode", SCORE_MODES.values(), ids=SCORE_MODES.keys())
def test_score_on_a_control_vocabulary_keeps_stderr_clean(control_ckpt, tmp_path, mode):
    text = tmp_path / "text.txt"
    text.write_text("hel\x01\x9c\u202d\u202e\x1b[2Jlo\x07\n", encoding="utf-8")
    proc = cli(["score", control_ckpt, text, *mode], tmp_path)
    assert proc.returncode == 0, proc.stderr
    _no_raw_controls(proc.stderr)
    assert "\x01" not in proc.stderr and "\u202d" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("char", ["\x1b", "\x07", "\x00", "\x9b", "\x85", "\u202e", "\u2066", "\u2028", "\ud800"])
def test_printable_escapes_every_class_that_can_drive_or_disguise_a_terminal(char):
    shown = printable(f"a{char}b")
    assert char not in shown and shown.startswith("a\\") and shown.endswith("b"), repr(shown)
    shown.encode("utf-8")  # a lone surrogate escaped: stderr can carry it


def test_printable_keeps_ordinary_text():
    assert printable("naïve café 👍🏽 a\u00a0b\n\t") == "naïve café 👍🏽 a\u00a0b\n\t"


def test_listed_quotes_and_escapes_each_character():
    assert listed(["a", "\x1b", "'", "\u202e"]) == "'a', '\\x1b', \"'\", '\\u202e'"
    assert listed([chr(0x61 + i) for i in range(25)]).endswith(" ...")


def test_the_training_preview_on_stderr_escapes_bidi_and_surrogates():
    buf = io.StringIO()
    reporter = Reporter(console=Console(file=buf, highlight=False, soft_wrap=True))
    reporter("sample", {"step": 1, "val_loss": 1.0, "text": "a\u202eb\x1b[2J\x9bc\ud800"})
    _no_raw_controls(buf.getvalue())
    assert "\ud800" not in buf.getvalue() and "\\u202e" in buf.getvalue()

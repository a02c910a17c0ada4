"""`charrnn export` and `charrnn corpus` through the CLI (the codec and the downloader are tested in
test_export.py and test_corpora.py)."""

from __future__ import annotations

import pytest

from tests.conftest import word_text
from tests.test_cli import assert_one_error, run
from tests.test_corpora import register, server  # noqa: F401  (the local HTTP server fixture)


def test_export_prints_its_path_and_samples_the_same_text_as_the_checkpoint(trained_run, tmp_path):
    out = tmp_path / "model.safetensors"
    r = run(["export", trained_run, "-o", out])
    assert r.exit_code == 0 and r.stdout == f"{out}\n" and "bytes (fp32)" in r.stderr, r.stderr
    args = ["-n", "120", "--seed", "4", "--prime", "the ", "-q", "--num-samples", "2"]
    assert run(["sample", out, *args]).stdout == run(["sample", trained_run, *args]).stdout
    half = tmp_path / "half.safetensors"
    assert run(["export", trained_run, "-o", half, "--dtype", "bf16"]).exit_code == 0
    assert 0.45 < half.stat().st_size / out.stat().st_size < 0.55
    info = run(["info", out])
    assert info.exit_code == 0 and info.stdout.splitlines()[1:] == run(["info", trained_run]).stdout.splitlines()[1:]


def test_export_refusals(trained_run, tmp_path):
    for args, needle in [
        (["-o", tmp_path / "m.safetensors", "--dtype", "int4"], "int4"),
        (["-o", tmp_path / "m.pt"], ".safetensors"),
    ]:
        r = run(["export", trained_run, *args])
        assert r.exit_code == 2 and needle in r.stderr and r.stdout == "", r.stderr
    assert not any(tmp_path.iterdir())
    resumed = run(["train", "--resume", "--run-dir", tmp_path])
    assert resumed.exit_code != 0 and "Traceback" not in resumed.stderr


def test_corpus_list_path_and_get_from_a_server(server, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("CHARRNN_CACHE_DIR", str(tmp_path / "cache"))
    text = word_text(200).encode()
    register(monkeypatch, server, "words", text)
    listed = run(["corpus", "list"])
    assert listed.exit_code == 0, listed.stderr
    rows = {line.split("\t")[0]: line.split("\t") for line in listed.stdout.splitlines()}
    assert {"pydocs", "tiny-shakespeare", "enwik8", "text8", "words"} <= set(rows)
    assert rows["words"][2] == "-"  # not downloaded yet
    assert "charrnn corpus get words" in assert_one_error(run(["corpus", "path", "words"]), 1)
    got = run(["corpus", "get", "words"])
    assert got.exit_code == 0, got.stderr
    path = got.stdout.strip()
    assert open(path, "rb").read() == text  # noqa: SIM115
    assert run(["corpus", "path", "words"]).stdout.strip() == path
    after = {line.split("\t")[0]: line.split("\t") for line in run(["corpus", "list"]).stdout.splitlines()}
    assert after["words"][2] == "downloaded"
    trained = run(["train", "words", "--hidden-size", "16", "--num-layers", "1", "--max-steps", "2",
                   "--batch-size", "4", "--seq-len", "16", "--device", "cpu", "--run-dir", tmp_path / "r"])  # fmt: skip
    assert trained.exit_code == 0, trained.stderr


def test_corpus_get_refuses_an_unknown_name_in_one_sentence():
    assert "the named corpora are" in assert_one_error(run(["corpus", "get", "nope"]), 1)


@pytest.mark.parametrize("command", ["export", "corpus"])
def test_new_commands_have_examples(command):
    r = run([command, "--help"])
    assert r.exit_code == 0 and "Examples:" in r.stdout

"""Every setting declared once (config/): the flags, their help and defaults, validate(), the checkpoint's rules,
resume's rules and the API's keywords all come from the one declaration."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest
from typer.testing import CliRunner

from charrnn.cli import sample as sample_cli
from charrnn.cli import train as train_cli
from charrnn.cli.app import app
from charrnn.cli.options import flags_of
from charrnn.config.model import CONFIG_RULES, ModelConfig
from charrnn.config.sample import SampleConfig
from charrnn.config.settings import FREE, OPTIM, at_least, check_settings, names_where, rules_of, setting
from charrnn.config.train import LIMITS, RESUME_OVERRIDABLE, TRAIN_REQUIRED, TRAIN_RULES, TrainConfig
from charrnn.errors import UsageError

HELP = Path(__file__).parent / "fixtures" / "help"


@pytest.mark.parametrize("command", ["train", "sample", "score"])
def test_help_is_the_help_from_before_the_settings_moved(command):
    """tests/fixtures/help/ holds `--help` as it was printed before the flags were built from the configs'
    declarations (at 983c00b): every line, default, panel and order is unchanged."""
    env = {"COLUMNS": "100", "TERMINAL_WIDTH": "100", "NO_COLOR": "1"}
    result = CliRunner().invoke(app, [command, "--help"], env=env, terminal_width=100, prog_name="charrnn")
    assert result.exit_code == 0, result.output
    assert result.output == (HELP / f"{command}.txt").read_text()


def test_every_config_field_is_a_declared_setting():
    for cls in (TrainConfig, ModelConfig, SampleConfig):
        undeclared = [f.name for f in dataclasses.fields(cls) if "setting" not in f.metadata]
        assert undeclared == [], cls


def test_the_flags_are_the_declared_settings_with_their_defaults():
    train = inspect.signature(train_cli.train).parameters
    for name, default in {"seq_len": 50, "lr": 2e-3, "keep": 3, "model": "lstm", "embed_size": 0}.items():
        assert (
            train[name].default
            == default
            == dict((f.name, f.default) for c in (TrainConfig, ModelConfig) for f in dataclasses.fields(c))[name]
        )
    # None on the command line: chosen for you (a drawn seed, an auto-sized model, a budget from the corpus)
    assert [train[n].default for n in ("seed", "hidden_size", "num_layers", "dropout", "max_time")] == [None] * 5
    assert "eval_chars" not in train and "vocab_size" not in train  # settings with no flag
    sample = inspect.signature(sample_cli.sample).parameters
    assert sample["temperature"].default == SampleConfig().temperature and sample["seed"].default is None


def test_the_rules_resume_checks_are_the_declared_ones():
    assert set(TRAIN_RULES) == {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(CONFIG_RULES) == {f.name for f in dataclasses.fields(ModelConfig)}
    assert "decay_frac" not in TRAIN_REQUIRED and "seq_len" in TRAIN_REQUIRED  # added after format 1
    assert set(LIMITS) == {"max_steps", "max_epochs", "max_time"}
    assert {"device", "keep", "log_every"} <= set(RESUME_OVERRIDABLE) and "lr" not in RESUME_OVERRIDABLE


@pytest.mark.parametrize(
    "config, message",
    [
        (TrainConfig(seq_len=0), "--seq-len must be at least 1, not 0."),
        (TrainConfig(val_frac=1.0), "--val-frac must be between 0 and 1 (exclusive), not 1.0."),
        (TrainConfig(max_time=-1.0), "--max-time must be a positive finite number, not -1.0; leave it out"),
        (TrainConfig(sample_length=10_001), "--sample-length must be from 0 to 10,000 (a preview, not a sample)"),
        (
            TrainConfig(sample_prime="x" * 70_000),
            "--sample-prime must be at most 65,536 characters, not a string of 70,000",
        ),
        (TrainConfig(amp=1), "--amp must be true or false, not 1."),
        (SampleConfig(temperature=-1), "--temperature must be a finite number >= 0 (0 means greedy)"),
        (SampleConfig(top_p=1.5), "--top-p must be in (0, 1], not 1.5."),
        (SampleConfig(precision="fp16"), "--precision must be one of fp32, bf16, int8, auto, not 'fp16'."),
    ],
)
def test_validate_refuses_by_the_declared_rule_in_one_sentence(config, message):
    with pytest.raises(UsageError) as e:
        config.validate()
    assert str(e.value).startswith(message)


def test_a_bad_model_setting_is_refused_when_the_config_is_built():
    with pytest.raises(UsageError, match=r"^--model must be one of lstm, gru, rnn, not 'x'\.$"):
        ModelConfig(vocab_size=10, model="x")
    with pytest.raises(UsageError, match=r"^--hidden-size must be between 1 and 65536, not 0\.$"):
        ModelConfig(vocab_size=10, hidden_size=0)


def test_a_new_flag_is_one_declaration():
    """What adding a training flag takes: one `setting(...)` line. Declared on a TrainConfig, it is at once a
    flag in its panel with its help and default, a rule validate() enforces, a checkpoint field rule, and a
    resume rule."""

    @dataclasses.dataclass
    class WithNewFlag(TrainConfig):
        label_smoothing: int = setting(3, at_least(1), "A new flag's help.", OPTIM, resume=FREE)

    flag = {p.name: p for p in flags_of(WithNewFlag)}["label_smoothing"]
    option = flag.annotation.__metadata__[0]
    assert (flag.default, option.help, option.rich_help_panel) == (3, "A new flag's help.", OPTIM)
    names = [p.name for p in flags_of(WithNewFlag)]
    assert names.index("label_smoothing") < names.index("max_steps")  # listed in its panel, Optimization
    assert "label_smoothing" in rules_of(WithNewFlag) and "label_smoothing" in names_where(
        WithNewFlag, lambda s: s.resume == FREE
    )
    with pytest.raises(UsageError, match=r"^--label-smoothing must be at least 1, not 0\.$"):
        check_settings(WithNewFlag(label_smoothing=0))


def test_the_python_api_takes_the_declared_defaults():
    """Model.generate/stream spell their keywords out for editors and help(); their defaults are the
    declarations' (a flag's default: None draws a seed), and train() takes exactly the declared settings."""
    from charrnn import api
    from charrnn.config.settings import flag_defaults, settings_of

    declared = flag_defaults(SampleConfig)
    for method in (api.Model.generate, api.Model.stream):
        params = inspect.signature(method).parameters
        shared = [name for name in params if name in declared]
        assert len(shared) >= 5, method
        assert {n: params[n].default for n in shared} == {n: declared[n] for n in shared}, method
    assert set(api.TRAIN_OPTIONS) == set(settings_of(TrainConfig))
    assert set(api.MODEL_OPTIONS) == set(flag_defaults(ModelConfig))

"""Settings: every option of TrainConfig, ModelConfig and SampleConfig declared once, as its dataclass field's
metadata. A field's `setting(...)` holds its default, its rule (the type and range any value must have, on the
command line, in the Python API and in a checkpoint), its help text, its help panel and whether `--resume` may
change it; from that one declaration come the config's validate(), the checkpoint's field rules, resume's
rules, the Python API's keyword arguments and the CLI's flags (cli/options.py builds them).

Adding a training flag is one `setting(...)` line in TrainConfig, plus its test.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from charrnn.errors import UsageError
from charrnn.fields import BOOL, Rule, int_in, is_int, is_real, optional, real_in

DATA, MODEL, OPTIM, STOP, OUTPUT, RUNTIME = "Data", "Model", "Optimization", "Stopping", "Output", "Runtime"
SAME = object()  # a flag whose default is its field's
INT64_MAX = 2**63 - 1

# What resume does with a setting given again: "fixed" ones change the arithmetic, so a new value is refused;
# "free" ones change none (the device, the logging), so the new value is taken; a "limit" (when to stop) is taken
# and may end the run where it stands.
FIXED, FREE, LIMIT = "fixed", "free", "limit"


class Check(NamedTuple):
    """A rule and how the command line describes it: "--seq-len must be {says}, not 0.{hint}"."""

    rule: Rule
    says: str
    hint: str = ""


def at_least(lo: int, hi: int = INT64_MAX, says: str = "") -> Check:
    return Check(int_in(lo, hi), says or (f"at least {lo}" if hi == INT64_MAX else f"between {lo} and {hi}"))


def between(lo: float, hi: float, says: str, *, lo_open: bool = False, hi_open: bool = False) -> Check:
    return Check(real_in(lo, hi, lo_open=lo_open, hi_open=hi_open), says)


def maybe(check: Check) -> Check:
    """The check, or None (no value: "chosen for you" or "no limit")."""
    return Check(optional(check.rule), check.says, check.hint)


def one_of(choices: tuple[str, ...]) -> Check:
    listed = ", ".join(choices)
    return Check(((lambda v: isinstance(v, str) and v in choices), f"one of {listed}"), f"one of {listed}")


POSITIVE_NUMBER = between(0.0, math.inf, "a positive number", lo_open=True)
NON_NEGATIVE_NUMBER = between(0.0, math.inf, "a number >= 0")
LIMIT_CHECK = Check(
    optional(real_in(0.0, math.inf, lo_open=True)),
    "a positive finite number",
    "; leave it out for no limit from that side",
)
FLAG = Check(BOOL, "true or false")


@dataclass(frozen=True)
class Setting:
    check: Check
    help: str = ""  # the flag's help; "" for a setting that is stored but has no flag
    panel: str | None = None  # the flag's help panel (train's Data, Model, ...)
    flags: tuple[str, ...] = ()  # the flag's names when not --field-name
    flag_default: Any = SAME  # the flag's default when not the field's; None: chosen for you (the help says what)
    flag_type: Any = None  # the flag's type when not the field's (--max-time takes a duration string)
    parse: Callable[[Any], Any] | None = None  # a flag's or keyword's value -> the field's (a duration -> seconds)
    show_default: bool | None = None  # None: shown unless the flag's default is None
    resume: str = FIXED
    since_v1: bool = True  # in every checkpoint since format 1 (a later one may be missing and takes its default)

    @property
    def is_flag(self) -> bool:
        return bool(self.help)


def setting(default: Any, check: Check, help: str = "", panel: str | None = None, **kw: Any) -> Any:
    """A dataclass field declared with its Setting."""
    return dataclasses.field(default=default, metadata={"setting": Setting(check, help, panel, **kw)})


def settings_of(cls: Any) -> dict[str, Setting]:
    """The declared settings of a config class (or instance), in field order."""
    return {f.name: f.metadata["setting"] for f in dataclasses.fields(cls) if "setting" in f.metadata}


def rules_of(cls: Any) -> dict[str, Rule]:
    """The field rules a checkpoint's copy of the config is checked with."""
    return {name: s.check.rule for name, s in settings_of(cls).items()}


def names_where(cls: Any, test: Callable[[Setting], bool]) -> tuple[str, ...]:
    return tuple(name for name, s in settings_of(cls).items() if test(s))


def flag_name(name: str, s: Setting) -> str:
    """How the user spells the setting: --field-name when that is one of its flags (or it has no others), else
    its first long flag."""
    own = "--" + name.replace("_", "-")
    return own if own in s.flags or not s.flags else next(f for f in s.flags if f.startswith("--"))


def flag_defaults(cls: Any) -> dict[str, Any]:
    """Each flag's default, as a keyword the Python API takes (None: chosen for you)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    return {
        name: fields[name].default if s.flag_default is SAME else s.flag_default
        for name, s in settings_of(cls).items()
        if s.is_flag
    }


def parsed(cls: Any, values: Mapping[str, Any]) -> dict[str, Any]:
    """`values` with each setting's parse applied to a string (a duration -> seconds); a number is taken as it is."""
    settings = settings_of(cls)
    out = dict(values)
    for name, value in values.items():
        parse = settings[name].parse if name in settings else None
        if parse is not None and isinstance(value, str):
            out[name] = parse(value)
    return out


def check_settings(config: Any) -> None:
    """Every declared setting of `config` against its rule; the first one that fails is one UsageError."""
    for name, s in settings_of(config).items():
        value = getattr(config, name)
        if not s.check.rule[0](value):
            who = flag_name(name, s) if s.is_flag else "the " + name.replace("_", " ")
            raise UsageError(f"{who} must be {s.check.says}, not {shown(value)}{s.check.hint}.")


def shown(value: Any) -> str:
    if isinstance(value, str):
        return f"a string of {len(value):,} characters" if len(value) > 60 else repr(value)
    if is_int(value) or is_real(value) or value is None or isinstance(value, bool):
        return str(value)
    return f"a {type(value).__name__}"

"""Write a corpus of Python source from this interpreter's standard library, for issue 9's check that the
defaults are not tuned to one corpus. Deterministic: the first files by sorted path until `--chars` characters.

    .venv/bin/python bench/stdlib_corpus.py /tmp/stdlib.txt --chars 1100000

The text is generated on demand and never committed.
"""

from __future__ import annotations

import argparse
import sysconfig
from pathlib import Path


def build(chars: int) -> str:
    root = Path(sysconfig.get_paths()["stdlib"])
    parts, total = [], 0
    for path in sorted(root.rglob("*.py")):
        if any(p in {"test", "tests", "idle_test", "site-packages", "lib2to3"} for p in path.relative_to(root).parts):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        parts.append(f"# {path.relative_to(root)}\n{text}\n")
        total += len(parts[-1])
        if total >= chars:
            break
    return "".join(parts)[:chars]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--chars", type=int, default=1_100_000)
    args = ap.parse_args()
    text = build(args.chars)
    args.out.write_text(text, encoding="utf-8")
    print(f"{args.out}: {len(text):,} characters, {len(set(text))} distinct")


if __name__ == "__main__":
    main()

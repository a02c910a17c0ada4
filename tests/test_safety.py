import subprocess
import sys

import pytest

from charrnn.checkpoint.files import torch_is_safe


@pytest.mark.parametrize(
    "version,ok",
    [
        ("2.5.1", False),
        ("2.4.0+cu121", False),
        ("1.13.1", False),
        ("2.6.0", True),
        ("2.13.0+cpu", True),
        ("3.0.0", True),
    ],
)
def test_torch_version_gate(version, ok):
    assert torch_is_safe(version) is ok


def test_import_refuses_old_torch():
    """torch < 2.6 could run code from a checkpoint despite weights_only=True (CVE-2025-32434)."""
    code = "import torch; torch.__version__ = '2.5.1'; import charrnn.checkpoint.files"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "CVE-2025-32434" in proc.stderr


@pytest.mark.parametrize("args", [["--help"], ["sample", "--help"], ["train", "--help"], ["--version"]])
def test_help_and_version_answer_without_importing_torch(args):
    """`charrnn --help` should be instant: torch (about 1.5 s to import) loads only for commands that use it."""
    code = (
        "import sys\n"
        f"sys.argv = ['charrnn', *{args!r}]\n"
        "from charrnn.cli.app import app\n"
        "try:\n    app()\nexcept SystemExit:\n    pass\n"
        "sys.stderr.write('torch loaded' if 'torch' in sys.modules else 'torch not loaded')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stderr.endswith("torch not loaded"), proc.stderr[-2000:]
    assert "Usage" in proc.stdout or "charrnn" in proc.stdout

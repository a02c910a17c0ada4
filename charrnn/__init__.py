"""charrnn: character-level language models (LSTM/GRU/RNN) for the command line."""

import torch as _torch

__version__ = "0.1.0"


def _torch_is_safe(version: str) -> bool:
    # torch.load(weights_only=True) could be bypassed before 2.6 (CVE-2025-32434), and we load
    # every checkpoint through it, so older torch is refused outright rather than trusted.
    major, minor = (int(part) for part in version.split("+")[0].split(".")[:2])
    return (major, minor) >= (2, 6)


if not _torch_is_safe(_torch.__version__):
    raise ImportError(
        f"charrnn needs torch >= 2.6 (found {_torch.__version__}): older torch.load(weights_only=True) "
        "can run code from a malicious checkpoint (CVE-2025-32434); upgrade torch."
    )

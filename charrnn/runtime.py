"""Device choice, threads, seeding and RNG state capture (weights_only-safe), precision."""

from __future__ import annotations

import contextlib
import os
import random
import time
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

from charrnn.errors import UsageError

T = TypeVar("T")


def select_device(name: str = "auto") -> torch.device:
    """auto: cuda, then mps, then cpu. An explicit device that is not there is a usage error."""
    name = name.strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not _mps_available():
            raise UsageError(
                "--device mps was asked for but this machine has no MPS backend; use --device cpu or auto."
            )
        return torch.device("mps")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name} was asked for but CUDA is not available here; use --device cpu or auto.")
        device = torch.device(name)
        # set_device refuses a device without an index ("cuda"): that one means the current device.
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible.")
        # Make it the current device: events, streams and graph capture otherwise land on cuda:0.
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    raise UsageError(f"--device must be auto, cpu, cuda, cuda:N or mps, not {name!r}.")


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued kernels (CUDA runs them asynchronously), so a clock read after it counts work
    done, not work queued; a no-op on the CPU."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def set_threads(threads: int | None) -> None:
    # Left at torch's default unless asked: oversubscribing the cores collapses oneDNN throughput.
    if threads is not None:
        if threads < 1:
            raise UsageError(f"--threads must be at least 1, not {threads}.")
        torch.set_num_threads(threads)


class ThreadGovernor:
    """Fits the CPU thread count to the cores other processes leave free, while training runs.

    PyTorch's OpenMP threads spin-wait at every barrier. When another process takes one of two cores, each
    barrier waits for a thread that is not running, and a step takes 3x as long (bench/bench_load.py: 0.32 s
    idle, 1.03 s beside a busy loop, 0.59 s with one thread). So at each check the governor reads how much CPU
    the rest of the machine used since the last check (/proc/stat, less this process's own time) and uses the
    cores left: one thread when a core is taken, all of them again when it is free. Linux only; elsewhere, and
    when --threads is given, it does nothing. The thread count does not change the arithmetic, so resume
    stays exact.
    """

    def __init__(self, enabled: bool) -> None:
        self.cpus = _usable_cpus()
        self.cores = len(self.cpus) if self.cpus else (os.cpu_count() or 1)
        self.max_threads = torch.get_num_threads()
        self.enabled = enabled and self.cores > 1 and os.path.exists("/proc/stat")
        self._last = self._sample() if self.enabled else None
        self._pending: int | None = None

    def _sample(self) -> tuple[float, float, float] | None:
        """(wall seconds, busy CPU-seconds of the CPUs this process may run on, CPU-seconds of this process)."""
        try:
            with open("/proc/stat", encoding="ascii") as f:
                lines = [line.split() for line in f if line.startswith("cpu") and line[3:4].isdigit()]
            tick = os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError):
            return None
        busy = 0.0
        for name, *values in lines:
            if self.cpus and int(name[3:]) not in self.cpus:
                continue  # another container's or another affinity's CPU: its load does not slow our threads
            fields = [int(v) for v in values[:8]]
            busy += sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)  # less idle and iowait
        t = os.times()
        return time.monotonic(), busy / tick, t.user + t.system

    def check(self) -> int | None:
        """The new thread count when it changed, else None. A change needs two checks in a row that agree,
        so a load that comes and goes does not flip the count (and the messages) at every check."""
        if not self.enabled:
            return None
        now = self._sample()
        last, self._last = self._last, now
        if now is None or last is None or now[0] - last[0] < 0.05:
            return None
        others = max(0.0, (now[1] - last[1]) - (now[2] - last[2])) / (now[0] - last[0])  # cores in use by others
        wanted = max(1, min(self.max_threads, self.cores - round(others)))
        if wanted == torch.get_num_threads():
            self._pending = None
            return None
        if self._pending != wanted:
            self._pending = wanted
            return None
        self._pending = None
        torch.set_num_threads(wanted)
        return wanted


def _usable_cpus() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        return set()


def configure_backends(device: torch.device) -> None:
    if device.type == "cuda":
        # TF32 for matmuls and cuDNN: ~free speed on Ampere+, well inside char-level noise.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def rng_state() -> dict:
    """Every RNG a run consumes, in types torch.load(weights_only=True) accepts (no legacy numpy state)."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(legacy=False),  # a plain dict, unlike the legacy tuple with an ndarray
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    state["numpy"] = _plain(state["numpy"])
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = dict(state["numpy"])
    np_state["state"] = dict(np_state["state"], key=np.asarray(np_state["state"]["key"], dtype=np.uint32))
    np.random.set_state(np_state)
    torch.set_rng_state(state["torch"].cpu())
    cuda_states = state.get("cuda") or []
    if cuda_states and torch.cuda.is_available():
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])
        else:  # another GPU count: restore what matches rather than fail the resume
            for i, s in enumerate(cuda_states[: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(s.cpu(), i)


def _plain(obj):
    # numpy's Generator state holds numpy ints; weights_only loading wants Python ints.
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return obj


def autocast(device: torch.device, enabled: bool):
    """fp16 autocast on CUDA (cuDNN LSTMs run in fp16 with a GradScaler); a no-op elsewhere.

    bf16 is not used for the RNN: cuDNN accepts bf16 RNNs only from cuDNN 9.13 on SM >= 8.0, and CPU oneDNN
    bf16 LSTMs fail on AVX2-only machines.
    """
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


# ---------------------------------------------------------------------------------------------------
# data parallelism under torchrun


@dataclass(frozen=True)
class Dist:
    """This process's place in a torchrun job (rank 0 of 1 when not launched by torchrun)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_from_env() -> Dist:
    """torchrun sets RANK, LOCAL_RANK and WORLD_SIZE for every worker."""
    try:
        return Dist(
            int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        )
    except ValueError:
        raise UsageError("RANK, LOCAL_RANK and WORLD_SIZE must be integers (they are set by torchrun).") from None


def init_distributed(info: Dist, device: torch.device) -> torch.device:
    """Join the process group (NCCL on CUDA, gloo on CPU); on CUDA each rank takes GPU `local_rank`."""
    if not info.enabled:
        return device
    import torch.distributed as tdist

    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(info.local_rank)
    if not tdist.is_initialized():
        tdist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def close_distributed() -> None:
    import torch.distributed as tdist

    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()


# Rank agreement: every rank must take the same decisions (stop, skip a step) at the same step, or the
# collective calls after it would hang and the weights drift apart. Each is a no-op in a single process.


def any_rank(flag: torch.Tensor) -> torch.Tensor:
    """A boolean tensor that is true on every rank when it is true on any (no host sync)."""
    import torch.distributed as tdist

    as_float = flag.to(torch.float32)
    tdist.all_reduce(as_float, op=tdist.ReduceOp.MAX)
    return as_float > 0


def agree_to_stop(info: Dist, device: torch.device, elapsed: float, signum: int | None) -> tuple[float, int | None]:
    """The largest elapsed time and any rank's signal, so all ranks stop at the same step and follow the same
    time-based lr schedule. One tiny all-reduce per step under torchrun."""
    if not info.enabled:
        return elapsed, signum
    import torch.distributed as tdist

    flags = torch.tensor([elapsed, float(signum or 0)], dtype=torch.float64, device=device)
    tdist.all_reduce(flags, op=tdist.ReduceOp.MAX)
    elapsed, sig = flags.tolist()
    return elapsed, int(sig) or None


def gather(info: Dist, obj) -> list:
    """Every rank's `obj`, in rank order, on every rank ([obj] in a single process)."""
    if not info.enabled:
        return [obj]
    import torch.distributed as tdist

    gathered: list = [None] * info.world_size
    tdist.all_gather_object(gathered, obj)
    return gathered


def broadcast(info: Dist, obj: T) -> T:
    """Rank 0's `obj` on every rank (`obj` itself in a single process): a decision one rank takes for all, such
    as the auto-sized model, which the other ranks must not measure on their own (their timings would differ,
    and so would their model shapes). The other ranks' `obj` is ignored; they wait here until rank 0 sends."""
    if not info.enabled:
        return obj
    import torch.distributed as tdist

    box: list = [obj if info.is_main else None]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(info: Dist) -> None:
    if info.enabled:
        import torch.distributed as tdist

        tdist.barrier()

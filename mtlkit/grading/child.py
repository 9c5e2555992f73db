"""The grader's child process: run the spliced notebook, then the probes, and hand back plain arrays.

``python -m mtlkit.grading.child JOB_DIR [--uid UID]`` reads the job (JSON: the notebook's code cells and the probe
groups) from its standard input, never from a file a submission could stand in for; executes the cells in one
namespace with plain ``exec`` (no IPython: no input transformers, event hooks or ``showtraceback`` to hijack; a
failing cell is logged and the next one runs, as with nbgrader's ``allow_errors``; the cells share a time
budget), then runs each probe group's code with ``load_input`` /
``load_weights`` / ``emit`` / ``emit_weights`` bound to that group's folders, each under its own time limit.

Nothing the child says is trusted: the parent reads only the ``.npy`` files (``allow_pickle=False``) and
``.safetensors`` files it finds under ``JOB_DIR/outputs/<group>/`` and scores them itself. Whatever student code does
to this module, to numpy or to torch only changes the arrays it hands back, which it could do anyway.
"""
from __future__ import annotations

import json
import os
import re
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from mtlkit.grading.sandbox import READY

__all__ = ["load_input", "load_weights", "emit", "emit_weights", "main"]

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")
_state: dict[str, Path | None] = {"inputs": None, "outputs": None}


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"array name {name!r}: use letters, digits, '_', '.' or '-' (at most 100 characters)")
    return name


def _to_array(value: Any) -> np.ndarray:
    """A plain numeric numpy array, or a TypeError: objects, strings and subclasses never leave the child."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # torch.Tensor without importing torch here
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        value = value.numpy()
    array = np.array(value, copy=True, order="C")  # np.array of an arbitrary object gives dtype=object, rejected below
    if type(array) is not np.ndarray or array.dtype.kind not in "biuf":
        raise TypeError(f"emit takes numbers, numpy arrays or tensors of bool/int/float; got {type(value).__name__} "
                        f"(dtype {array.dtype})")
    return array  # (not np.ascontiguousarray: that turns 0-d arrays into 1-d ones)


def load_input(name: str) -> np.ndarray:
    """An array the parent wrote for the running probe."""
    folder = _state["inputs"]
    if folder is None:
        raise RuntimeError("load_input is only available inside the grader's probes")
    return np.load(folder / f"{_check_name(name)}.npy", allow_pickle=False)


def load_weights(name: str) -> dict[str, np.ndarray]:
    """Weights the parent wrote for the running probe (a state_dict as ``{key: array}``; safetensors).

    Probes load them into the student's module (``module.load_state_dict``) so that the parent, which chose them,
    can compute the expected outputs with the same weights: weights a submission reports itself could be chosen to
    make the reference trivial (all zeros)."""
    from safetensors.numpy import load

    folder = _state["inputs"]
    if folder is None:
        raise RuntimeError("load_weights is only available inside the grader's probes")
    return load((folder / f"{_check_name(name)}.safetensors").read_bytes())


def emit(name: str, value: Any) -> None:
    """Hand ``value`` (bool/int/float array, tensor or number) back to the parent under ``name``."""
    folder = _state["outputs"]
    if folder is None:
        raise RuntimeError("emit is only available inside the grader's probes")
    array = _to_array(value)
    tmp = folder / f".{_check_name(name)}.tmp.npy"
    np.save(tmp, array, allow_pickle=False)
    os.replace(tmp, folder / f"{name}.npy")


def emit_weights(name: str, module: Any) -> None:
    """Hand a module's ``state_dict`` (or a mapping of tensors) back as a safetensors file."""
    from safetensors.numpy import save

    folder = _state["outputs"]
    if folder is None:
        raise RuntimeError("emit_weights is only available inside the grader's probes")
    state = module.state_dict() if hasattr(module, "state_dict") else dict(module)
    arrays = {str(k): _to_array(v) for k, v in state.items()}
    tmp = folder / f".{_check_name(name)}.tmp.safetensors"
    tmp.write_bytes(save(arrays))  # bytes, not save_file: that resolves paths the sandbox hid
    os.replace(tmp, folder / f"{name}.safetensors")


class ProbeTimeout(BaseException):
    """SIGALRM: the cells or a probe ran past their limit (a BaseException, so ``except Exception`` can't eat it)."""


def _alarm(signum, frame):
    raise ProbeTimeout()


def _log(text: str) -> None:
    sys.stdout.flush()
    sys.stderr.write(text)
    sys.stderr.flush()


def read_job() -> dict:
    """The job from standard input, which then reads as empty (``input()`` in a cell gets EOF, as before)."""
    job = json.loads(sys.stdin.buffer.read().decode("utf-8"))
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    return job


def main(job_dir: str, job: dict | None = None) -> int:
    job_path = Path(job_dir)
    job = read_job() if job is None else job
    os.write(1, (READY + "\n").encode())  # before anything of the student's runs: the parent knows it started
    namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": __builtins__}
    # the notebook's cells share one time budget, so a hung cell still leaves the probes their own time
    signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, float(job.get("cells_timeout_s", 0)))
    try:
        for label, source in job["cells"]:
            _log(f"\n----- cell {label}\n")
            try:
                exec(compile(source, f"<cell {label}>", "exec"), namespace)
            except ProbeTimeout:
                raise
            except BaseException:  # noqa: BLE001 - SystemExit/KeyboardInterrupt from student code too
                _log(traceback.format_exc(limit=-8))
    except ProbeTimeout:
        _log(f"\nthe notebook's time budget of {job['cells_timeout_s']:g} s ran out; its remaining cells were "
             "skipped, the tests run now\n")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    for group in job["groups"]:
        name = group["name"]
        out = job_path / "outputs" / name
        out.mkdir(parents=True, exist_ok=True)
        _state["inputs"], _state["outputs"] = job_path / "inputs" / name, out
        namespace.update(load_input=load_input, load_weights=load_weights, emit=emit, emit_weights=emit_weights)
        _log(f"\n----- probe {name}\n")
        signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, float(group["timeout_s"]))
        try:
            exec(compile(group["code"], f"<probe {name}>", "exec"), namespace)
        except ProbeTimeout:
            _log(f"probe {name}: time limit of {group['timeout_s']:g} s reached\n")
        except BaseException:  # noqa: BLE001
            _log(traceback.format_exc(limit=-8))
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        (out / ".finished").touch()
    _state["inputs"] = _state["outputs"] = None
    return 0


def _drop_to(uid: int) -> None:
    """Become the unnamed user ``uid`` (a root grader's sandbox, after its mounts): nothing of the student's runs as
    root, and RLIMIT_NPROC, which root ignores, now counts this child's processes and threads."""
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    if os.getuid() != uid or os.geteuid() != uid:
        raise SystemExit(f"could not drop to uid {uid}")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[2] == "--uid":
        _drop_to(int(sys.argv[3]))
    sys.exit(main(sys.argv[1]))

"""The attack corpus: submissions of the fixture assignment PSX_tiny (softmax 2 points + Affine 2 points).

Each entry is built from the instructor's notebook by replacing solution cells (and, for some attacks, locked
cells) and says what the grader must give it. They are written as code rather than stored notebooks so each attack
is readable in one place; :func:`write_corpus` writes the submissions folder (one folder or notebook per student).

Expected scores follow from what the grader guarantees, not from what the attack hopes for: the parent recomputes
every expected value itself, so anything the child does to numpy, IPython, the test cells or the process can only
change the arrays it hands back, or stop it from handing any back.
"""
from __future__ import annotations

import copy
import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path

FIXTURE = Path(__file__).parent / "fixtures" / "source"

SOFTMAX = '''def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)
'''
WRONG_SOFTMAX = '''def softmax(x):
    return np.exp(x) / np.exp(x).sum()  # normalised over the whole array, not per row
'''
AFFINE = '''class Affine:
    def __init__(self, d_in, d_out, seed=0):
        rng = np.random.default_rng(seed)
        self.weight = rng.normal(0.0, 1.0 / np.sqrt(d_in), (d_out, d_in))
        self.bias = np.zeros(d_out)

    def __call__(self, x):
        return x @ self.weight.T + self.bias
'''


@dataclass
class Attack:
    student: str
    score: float  # what the grader must give
    cells: dict[str, str] = field(default_factory=dict)  # grade_id -> replacement source
    status: str = "graded"
    error: str = ""  # substring of the error row (status "error")
    note: str = ""  # substring of one of the feedback notes
    namespaces_only: bool = False  # the expected score holds where the sandbox hides the disk (namespaces mode)
    raw: bytes | None = None  # the submission file's bytes, as is (malformed notebooks)
    drop: tuple[str, ...] = ()  # grade ids of cells deleted from the submission
    extra_files: dict[str, bytes] = field(default_factory=dict)


class _PickleBomb:
    """Unpickling it writes a marker file: the grader must never unpickle anything a student hands in."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path(self.marker).touch, ())


def attacks(marker: str, secrets: dict[str, str]) -> list[Attack]:
    """``marker``: a file a pickle bomb would create; ``secrets``: paths the disk search tries (grading.py, the
    instructor's notebook, the submissions folder, the gradebook)."""
    bomb = pickle.dumps(_PickleBomb(marker))
    return [
        Attack("correct", 4, {"softmax": SOFTMAX, "affine": AFFINE}),
        Attack("wrong", 2, {"softmax": WRONG_SOFTMAX, "affine": AFFINE}),
        # a rewritten test cell and setup cell: the instructor's versions run instead, and the feedback says so
        Attack("tampered", 2, {"softmax": WRONG_SOFTMAX, "affine": AFFINE, "softmax_check": "print('all passed')",
                               "setup": "import numpy as np\nnp.allclose = lambda *a, **k: True"},
               note="the grader used the original"),
        Attack("always_equal", 2, {"softmax": '''class _Anything:
    def __eq__(self, other): return True
    def __ne__(self, other): return False
    def __array__(self, *a, **k): return np.zeros(1, dtype=object)
    def __getattr__(self, name): return lambda *a, **k: self


def softmax(x):
    return _Anything()
''', "affine": AFFINE}),
        Attack("monkeypatch", 2, {"softmax": WRONG_SOFTMAX + '''
import numpy.testing
numpy.testing.assert_allclose = lambda *a, **k: None
np.allclose = lambda *a, **k: True
np.max = lambda *a, **k: 0.0
try:
    import torch
    torch.allclose = lambda *a, **k: True
    torch.testing.assert_close = lambda *a, **k: None
except ImportError:
    pass
''', "affine": AFFINE}),
        Attack("ipython_hooks", 2, {"softmax": WRONG_SOFTMAX + '''
import builtins
def _pass_everything(lines):
    return [line.replace("assert ", "_ = ") for line in lines]
try:
    _ip = get_ipython()
    _ip.input_transformers_cleanup.append(_pass_everything)
    _ip.events.register("post_run_cell", lambda result: setattr(result, "error_in_exec", None))
except NameError:  # no IPython in the grader's child: fake one for any later cell that asks
    builtins.get_ipython = lambda: None
''', "affine": AFFINE}),
        Attack("disk_search", 2, {"softmax": f'''import glob, os
_SECRETS = {json.dumps(secrets)}
_found = []
for _path in list(_SECRETS.values()) + glob.glob("/tmp/*/*") + glob.glob("/proc/1/environ"):
    try:
        _found.append((_path, open(_path, "rb").read() if os.path.isfile(_path) else os.listdir(_path)))
    except OSError:
        pass
_found = [(p, c) for p, c in _found if c]
print("found", [p for p, _ in _found])
if any(p == _SECRETS["grading"] for p, _ in _found):  # the reference is in reach: copy it
    _ns = {{}}
    exec(dict(_found)[_SECRETS["grading"]], _ns)
    softmax = _ns["reference_softmax"]
else:
''' + "\n".join("    " + line for line in WRONG_SOFTMAX.splitlines()) + "\n", "affine": AFFINE},
               namespaces_only=True),
        Attack("showtraceback", 2, {"softmax": WRONG_SOFTMAX + '''
import sys, traceback
sys.excepthook = lambda *a: None
traceback.format_exc = lambda *a, **k: ""
traceback.print_exc = lambda *a, **k: None
try:
    from IPython.core.interactiveshell import InteractiveShell
    InteractiveShell.showtraceback = lambda *a, **k: None
except ImportError:
    pass
''', "affine": AFFINE}),
        # SystemExit in a cell ends that cell only (like a kernel would); os._exit ends the run before the tests
        Attack("sys_exit", 4, {"softmax": SOFTMAX + "import sys\nsys.exit(0)\n", "affine": AFFINE}),
        Attack("os_exit", 0, {"softmax": SOFTMAX, "affine": AFFINE + "import os\nos._exit(0)\n"},
               note="ended before this test ran"),
        # passes the public check, hangs on the hidden input: that test's own limit, the other test still runs
        Attack("infinite_loop", 2, {"softmax": SOFTMAX.replace("    e = ", "    while x.shape[0] > 1:\n        pass\n"
                                                               "    e = "), "affine": AFFINE}),
        # a cell that never ends: the notebook's time budget skips the rest (Affine is never defined), the tests run
        Attack("hung_cell", 2, {"softmax": SOFTMAX + "while True:\n    pass\n", "affine": AFFINE}),
        # ignoring the per-test alarm only leads to the whole run's limit
        Attack("loop_no_alarm", 0, {"softmax": SOFTMAX + "import signal\n"
                                    "signal.signal(signal.SIGALRM, signal.SIG_IGN)\nwhile True:\n    pass\n",
                                    "affine": AFFINE}, note="time limit"),
        Attack("output_flood", 0, {"softmax": SOFTMAX + "while True:\n    print('x' * 100_000)\n", "affine": AFFINE},
               note="output limit"),
        # a failed allocation fails that cell only
        Attack("memory_bomb", 4, {"softmax": SOFTMAX + "_hog = [bytearray(2**28) for _ in range(64)]\n",
                                  "affine": AFFINE}),
        Attack("fork_bomb", 2, {"softmax": SOFTMAX + '''import os
while True:
    try:
        os.fork()
    except OSError:
        pass
''', "affine": AFFINE}),  # the notebook's time budget ends it (Affine is never defined)
        Attack("runaway_threads", 4, {"softmax": SOFTMAX + '''import threading, time
_threads = []
try:
    while True:
        _threads.append(threading.Thread(target=time.sleep, args=(1e6,), daemon=True))
        _threads[-1].start()
except RuntimeError as exc:
    print("threads stopped at", len(_threads), exc)
''', "affine": AFFINE}),
        Attack("invalid_json", 0, raw=b'{"cells": [', status="error", error="invalid JSON"),
        Attack("nbformat3", 0, raw=json.dumps({"nbformat": 3, "nbformat_minor": 0, "worksheets": [],
                                               "metadata": {}}).encode(), status="error", error="nbformat 3"),
        Attack("missing_cell", 2, {"affine": AFFINE}, drop=("softmax",), note="'softmax' is missing"),
        Attack("renamed_cell", 2, {"softmax": SOFTMAX, "affine": AFFINE, "@softmax": "my_softmax"},
               note="'softmax' is missing"),
        # a pickle where weights belong (never loaded), and pickled arrays handed back in place of results
        Attack("pickle_bomb", 0, {"softmax": SOFTMAX, "affine": AFFINE + f'''
import io, pickle, sys
import numpy as np
_bomb = {bomb!r}

def _evil_emit(name, value):
    with open(sys.modules["__main__"]._state["outputs"] / (name + ".npy"), "wb") as f:
        np.lib.format.write_array_header_1_0(f, {{"descr": "|O", "fortran_order": False, "shape": (1,)}})
        f.write(_bomb)

sys.modules["__main__"].emit = _evil_emit
sys.modules["__main__"].emit_weights = lambda name, module: _evil_emit(name, None)
'''}, extra_files={"weights.pt": bomb, "weights.safetensors": bomb, "weights.npy": bomb}),
    ]


def write_corpus(folder: Path, marker: str, secrets: dict[str, str]) -> list[Attack]:
    """One submission per attack under ``folder``; returns the attacks (with their expected grades)."""
    instructor = json.loads((FIXTURE / "PSX_tiny" / "PSX_tiny.ipynb").read_text())
    out = attacks(marker, secrets)
    for attack in out:
        target = folder / attack.student
        target.mkdir(parents=True)
        if attack.raw is not None:
            (target / "PSX_tiny.ipynb").write_bytes(attack.raw)
            continue
        nb = copy.deepcopy(instructor)
        cells = []
        for cell in nb["cells"]:
            meta = cell.get("metadata", {}).get("nbgrader", {})
            gid = meta.get("grade_id")
            if gid in attack.drop:
                continue
            if gid in attack.cells:
                cell["source"] = attack.cells[gid]
            if "@" + str(gid) in attack.cells:
                meta["grade_id"] = attack.cells["@" + gid]
            cells.append(cell)
        nb["cells"] = cells
        (target / "PSX_tiny.ipynb").write_text(json.dumps(nb))
        for name, data in attack.extra_files.items():
            (target / name).write_bytes(data)
    return out

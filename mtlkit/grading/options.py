"""Command-line options of ``mtlkit grade`` (kept apart so building the parser imports nothing heavy)."""
from __future__ import annotations

import argparse

from mtlkit.grading.sandbox import MODES, Limits

SECRET_ENV = "MTLKIT_GRADING_SECRET"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("assignment", help="assignment name, e.g. PS1_joint")
    p.add_argument("submissions", help="folder with one sub-folder or .ipynb per student")
    p.add_argument("--out", required=True, help="gradebook CSV to write (nbgrader's export columns)")
    p.add_argument("--feedback", default=None, help="feedback folder (default: next to --out, <name>_feedback)")
    p.add_argument("--source", default=None, help="instructor sources (default: assignments/source)")
    p.add_argument("--jobs", type=int, default=1, help="submissions graded at once (local executor)")
    p.add_argument("--executor", default="local", choices=("local", "slurm"))
    p.add_argument("--timeout", type=float, default=Limits.timeout_s, help="seconds per submission (default 600)")
    p.add_argument("--memory-mb", type=int, default=Limits.memory_mb, help="heap limit per submission (MiB)")
    p.add_argument("--output-kb", type=int, default=Limits.output_kb, help="log kept per submission (KiB)")
    p.add_argument("--nproc", type=int, default=Limits.nproc, help="processes + threads per submission")
    p.add_argument("--sandbox", default=None, choices=MODES, help="force a sandbox mode (default: strongest here)")
    p.add_argument("--preset", default=None, help="MTLKIT_PRESET for the notebooks (default: $MTLKIT_PRESET or smoke)")
    p.add_argument("--secret-seed", default=None, help=f"leaderboard secret (default: ${SECRET_ENV})")
    p.add_argument("--duedate", default="", help="written to the gradebook's duedate column")
    p.add_argument("--timestamps", default=None, metavar="CSV",
                   help="submission times as student_id,timestamp (ISO 8601), e.g. from your LMS (default: each "
                        "collected notebook's modification time)")
    p.add_argument("--regrade", action="store_true", help="ignore earlier feedback and grade everything again")
    slurm = p.add_argument_group("slurm executor (submitit)")
    slurm.add_argument("--partition", default=None)
    slurm.add_argument("--cpus", type=int, default=None, help="CPUs per submission")
    slurm.add_argument("--array-parallelism", type=int, default=64)
    slurm.add_argument("--cluster", default=None, help=argparse.SUPPRESS)  # tests force "local"

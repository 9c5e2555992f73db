"""Per-student feedback (JSON + HTML) and the nbgrader-style gradebook CSV, all written atomically."""
from __future__ import annotations

import csv
import html
import io
from collections.abc import Sequence
from pathlib import Path

from mtlkit.atomic import atomic_write_bytes, atomic_write_json

__all__ = ["GRADEBOOK_COLUMNS", "safe_cell", "write_feedback", "write_gradebook"]

# nbgrader's `nbgrader export` columns, in its order; per-test columns follow
GRADEBOOK_COLUMNS = ["assignment", "duedate", "timestamp", "student_id", "last_name", "first_name", "email",
                     "raw_score", "late_submission_penalty", "score", "max_score"]


def write_feedback(folder: Path, result: dict) -> None:
    """``<student>.json`` (machine-readable) and ``<student>.html`` (for the student)."""
    atomic_write_json(folder / f"{result['student_id']}.json", result)
    atomic_write_bytes(folder / f"{result['student_id']}.html", render_html(result).encode())


def render_html(result: dict) -> str:
    e = html.escape
    rows = []
    for test in result.get("tests", []):
        for probe in test["probes"]:
            rows.append(f"<tr><td>{e(test['grade_id'])}</td><td>{e(probe['grade_id'])}</td>"
                        f"<td>{probe['points']:g} / {probe['max_points']:g}</td><td>{e(probe['description'])}</td>"
                        f"<td>{e(probe['message'])}</td></tr>")
    notes = "".join(f"<li>{e(n)}</li>" for n in result.get("notes", []))
    manual = "".join(f"<tr><td>{e(m['grade_id'])}</td><td>{m['max_points']:g}</td><td>{e(m['status'])}</td>"
                     f"<td><pre>{e(m['answer'])}</pre></td></tr>" for m in result.get("manual", []))
    sandbox = result.get("sandbox", {})
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{e(result['assignment'])}: \
{e(result['student_id'])}</title><style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}\
td,th{{border:1px solid #ccc;padding:.3em;vertical-align:top}}table{{border-collapse:collapse}}\
pre{{background:#f6f6f6;padding:1em;overflow:auto;max-height:30em}}</style></head><body>
<h1>{e(result['assignment'])} &mdash; {e(result['student_id'])}</h1>
<p><b>Score: {result['score']:g} / {result['max_score']:g}</b> ({e(result['status'])})</p>
{f"<p><b>Error:</b> {e(result['error'])}</p>" if result.get('error') else ""}
{f"<ul>{notes}</ul>" if notes else ""}
<table><tr><th>cell</th><th>test</th><th>points</th><th>what it checks</th><th>result</th></tr>{''.join(rows)}</table>
{f"<h2>Written answers (graded by hand)</h2><table><tr><th>question</th><th>points</th><th>status</th>"
  f"<th>your answer</th></tr>{manual}</table>" if manual else ""}
<p>Sandbox: {e(str(sandbox.get('mode', '-')))}, {sandbox.get('wall_s', 0):.1f} s.</p>
<h2>Log of your notebook's run</h2><pre>{e(result.get('log', ''))}</pre></body></html>
"""


# a spreadsheet reads a cell starting with one of these as a formula (=HYPERLINK(...), +cmd|..., -2+3, @SUM(...))
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value):
    """A CSV cell no spreadsheet runs: text that could start a formula gets a leading ``'``; numbers stay numbers
    (a negative score or leaderboard value is a number, not text)."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def write_gradebook(path: Path, results: Sequence[dict], test_ids: Sequence[str],
                    manual_ids: Sequence[str] = ()) -> None:
    """One row per student, sorted by id: nbgrader's export columns, then status, sandbox mode, per-test points,
    and per written answer "needs manual grading" (or "no answer"): it is graded by hand, never scored here.
    Every text cell passes :func:`safe_cell` (names, e-mails and ids come from files the grader does not write)."""
    extra = ["status", "sandbox", *test_ids, *manual_ids]
    leaderboard = sorted({k for r in results for k in r.get("leaderboard", {})})
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([safe_cell(c) for c in GRADEBOOK_COLUMNS + extra + [f"leaderboard_{k}" for k in leaderboard]])
    for r in sorted(results, key=lambda r: r["student_id"]):
        per_test = {t["grade_id"]: sum(p["points"] for p in t["probes"]) for t in r.get("tests", [])}
        manual = {m["grade_id"]: m["status"] for m in r.get("manual", [])}
        row = [r["assignment"], r.get("duedate", ""), r.get("timestamp", ""), r["student_id"], r.get("last_name", ""),
               r.get("first_name", ""), r.get("email", ""), r["score"], 0.0, r["score"], r["max_score"], r["status"],
               r.get("sandbox", {}).get("mode", ""), *[per_test.get(t, 0.0) for t in test_ids],
               *[manual.get(m, "no answer") for m in manual_ids],
               *[r.get("leaderboard", {}).get(k, "") for k in leaderboard]]
        writer.writerow([safe_cell(c) for c in row])
    atomic_write_bytes(path, buf.getvalue().encode())

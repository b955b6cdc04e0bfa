"""Every benchmark script runs its ``--quick`` smoke test and prints its table.

Each script runs in its own process (``sys.executable benchmarks/x.py
--quick``), with its temporary files under pytest's ``tmp_path``. A run
passes when it exits 0 and its output holds a well-formed Markdown table:
the header the script prints in a full run, a separator of as many columns,
and data rows of as many cells, each row with a number in it. Nothing here
checks a timing: the quick runs are far too small for their figures to
mean anything.

The scripts are started two at a time as soon as the module's first test
asks for them (the machine has two cores); each test then waits for its own.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: script -> (extra arguments, the header of a table its run must print)
SCRIPTS = {
    "accuracy.py": ([], None),  # any well-formed table
    "attribution.py": ([], "| seed | cell | map | gradient | gradient x input | smoothgrad |"),
    "calibration.py": ([], "| images | worst channel: mean error / sd |"),
    "decoding.py": ([], "| step | time (s) | decodes |"),
    "decoys.py": ([], "| setting | seed | accuracy | box rule |"),
    "distance_precision.py": ([], "| case | m | map | images | float32 map |"),
    "explain_speed.py": ([], "| setting | images | predict ms/image |"),
    "initialisation.py": ([], "| row | prototype_init | BatchNorm calibration |"),
    "last_layer.py": ([], "| last_layer_l2 | iterations |"),
    "memory.py": (["--plot", "{tmp}/fit_memory.png"],
                  "| images | memory_budget | RSS before (MiB) | peak RSS (MiB) | growth"),
    "planted_motif.py": ([], "| setting | seed | top box holds motif |"),
    "quality.py": ([], "| model | seed | acc | jaccard |"),
    "resume.py": ([], "| fit | median wall time (s) |"),
    "speed.py": ([], "| phase | seconds | plain epochs |"),
    "two_classes.py": ([], "| pair | separation_coef | seed | test accuracy |"),
}
NUMBER = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?")

pytestmark = pytest.mark.slow


def run_quick(script: str, tmp: Path) -> subprocess.CompletedProcess:
    extra, _ = SCRIPTS[script]
    args = [a.format(tmp=tmp) for a in extra]
    env = {**os.environ, "TMPDIR": str(tmp), "OMP_NUM_THREADS": "1",
           "MPLBACKEND": "Agg", "PYTHONPATH": os.pathsep.join(
               [str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--quick", *args],
                          capture_output=True, text=True, cwd=tmp, env=env, timeout=600)


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory):
    """The scripts' runs, two at a time; script -> (future result, its tmp folder)."""
    pool = ThreadPoolExecutor(max_workers=2)
    runs = {}
    for script in SCRIPTS:
        tmp = tmp_path_factory.mktemp(script.removesuffix(".py"))
        runs[script] = (pool.submit(run_quick, script, tmp), tmp)
    yield runs
    pool.shutdown(wait=True, cancel_futures=True)


def tables(text: str) -> list[list[list[str]]]:
    """The Markdown tables of ``text``: each a list of rows of cells, the
    header first (the separator line checked and left out)."""
    lines = text.splitlines()
    found = []
    for i in range(len(lines) - 1):
        if lines[i].startswith("|") and re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", lines[i + 1]):
            if i > 0 and lines[i - 1].startswith("|"):
                continue  # not the first line of its table
            width = lines[i + 1].count("|") - 1
            rows = [cells(lines[i])]
            assert len(rows[0]) == width, f"header and separator differ:\n{lines[i]}"
            j = i + 2
            while j < len(lines) and lines[j].startswith("|"):
                rows.append(cells(lines[j]))
                j += 1
            found.append(rows)
    return found


def cells(line: str) -> list[str]:
    assert line.startswith("|") and line.endswith("|"), f"not a table row: {line!r}"
    return [c.strip() for c in line[1:-1].split("|")]


def check_well_formed(table: list[list[str]]) -> None:
    header, rows = table[0], table[1:]
    assert rows, f"a table without rows: {header}"
    for row in rows:
        assert len(row) == len(header), f"{len(row)} cells under {len(header)} columns: {row}"
        assert all(row), f"an empty cell: {row}"
        assert any(NUMBER.search(c) for c in row[1:]), f"no number in the row: {row}"


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_quick_run_prints_its_table(quick_runs, script):
    future, tmp = quick_runs[script]
    out = future.result()
    assert out.returncode == 0, f"{script} --quick failed:\n{out.stdout}\n{out.stderr}"
    found = tables(out.stdout)
    assert found, f"{script} --quick printed no table:\n{out.stdout}"
    for table in found:
        check_well_formed(table)
    header = SCRIPTS[script][1]
    if header is not None:
        assert any(("| " + " | ".join(t[0]) + " |").startswith(header) for t in found), (
            f"{script} --quick did not print its table {header!r}:\n{out.stdout}")
    if script == "memory.py":
        assert (tmp / "fit_memory.png").stat().st_size > 0

"""What ``verbose`` shows: nothing at 0; at 1, one plain line per step where
stdout is a pipe or a file, and tqdm progress bars as well in a terminal.

Each test runs fits in a child process whose stdout is a pipe or a
pseudo-terminal, as a user's log file or terminal would be."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARK = "=== verbose=1 ==="

# 2 warm and 3 joint epochs, pushes after epochs 2 and 5, a validation set
CHILD = """
import json
import sys

from tests.conftest import make_bar_images, tiny_classifier

images, labels = make_bar_images(20)
settings = dict(warm_epochs=2, joint_epochs=3, push_start=2, validation_fraction=0.25)
tiny_classifier(verbose=0, **settings).fit(images, labels)
print({mark!r}, flush=True)
print({mark!r}, file=sys.stderr, flush=True)
clf = tiny_classifier(verbose=1, **settings).fit(images, labels)
with open(sys.argv[1], "w") as f:
    json.dump(clf.history_, f)
"""

LINES = ["[warm epoch 1/5]", "[warm epoch 2/5]", "[push after epoch 2]",
         "[last layer after epoch 2]", "[joint epoch 3/5]", "[joint epoch 4/5]",
         "[joint epoch 5/5]", "[push after epoch 5]", "[last layer after epoch 5]",
         "[done] fit in"]


def run_child(tmp_path, terminal: bool):
    """Run CHILD with stdout on a pipe or on a 200-column pseudo-terminal;
    return (stdout, stderr, history of the verbose=1 fit)."""
    code = textwrap.dedent(CHILD.format(mark=MARK))
    history_file = tmp_path / "history.json"
    # every bar update is drawn, so the bars' contents do not depend on timing
    env = dict(os.environ, PYTHONPATH=ROOT, TQDM_MININTERVAL="0", TQDM_MINITERS="1")
    args = [sys.executable, "-c", code, str(history_file)]
    if not terminal:
        done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr
        return done.stdout, done.stderr, json.loads(history_file.read_text())
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
    child = subprocess.Popen(args, cwd=ROOT, env=env, stdout=slave, stderr=subprocess.PIPE)
    os.close(slave)
    out = b""
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 300)
            assert ready, "the child wrote nothing for 300 s"
            try:
                chunk = os.read(master, 1 << 16)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        child.wait(timeout=60)
    finally:
        os.close(master)
        if child.poll() is None:
            child.kill()
            child.wait()
    stderr = child.stderr.read().decode()
    assert child.returncode == 0, stderr
    # the terminal turns "\n" into "\r\n"
    return (out.decode().replace("\r\n", "\n"), stderr,
            json.loads(history_file.read_text()))


def split(text: str) -> tuple[str, str]:
    """The parts of ``text`` written by the verbose=0 fit and the verbose=1 fit."""
    before, sep, after = text.partition(MARK + "\n")
    assert sep, text
    return before, after


def epoch_records(history) -> list:
    return [r for r in history if r["stage"] in ("warm", "joint")]


def test_verbose_to_a_pipe_prints_plain_lines_or_nothing(tmp_path):
    """stdout a pipe (a log file, CI): verbose=0 writes nothing on stdout or
    stderr; verbose=1 writes one line per epoch, push and last-layer solve,
    and no progress bar (no carriage return, no escape sequence)."""
    out, err, history = run_child(tmp_path, terminal=False)
    quiet_out, loud_out = split(out)
    quiet_err, loud_err = split(err)
    assert quiet_out == "" and quiet_err == ""
    assert loud_err == ""
    assert "\r" not in loud_out and "\x1b" not in loud_out
    lines = loud_out.splitlines()
    assert all(line.startswith("[") for line in lines), lines
    steps = [line for line in lines if not line.startswith(("[data]", "[batchnorm]"))]
    assert len(steps) == len(LINES)
    for line, start in zip(steps, LINES):
        assert line.startswith(start), (line, start)
    for line, record in zip([s for s in steps if "epoch " in s and "/5]" in s],
                            epoch_records(history)):
        assert f"loss={record['train_loss']:.4f}" in line
        assert f"valid_acc={record['valid_acc']:.4f}" in line


def test_verbose_in_a_terminal_draws_bars_and_keeps_the_lines(tmp_path):
    """stdout a terminal: verbose=0 still writes nothing; verbose=1 draws a
    bar per stage (epochs), per epoch (batches, with the running means of
    the losses), per push and per last layer (images), and still writes
    every line whole, above the bars."""
    out, err, history = run_child(tmp_path, terminal=True)
    quiet_out, loud_out = split(out)
    quiet_err, loud_err = split(err)
    assert quiet_out == "" and quiet_err == "" and loud_err == ""
    assert "\r" in loud_out
    # what is drawn between carriage returns and newlines, cursor moves removed
    pieces = [p.strip() for p in re.split(r"[\r\n]", re.sub(r"\x1b\[A", "", loud_out))]
    for start in LINES:  # the lines are written whole, each on its own
        assert any(p.startswith(start) for p in pieces), start
    for desc, total, unit in [("warm", 2, "epoch"), ("joint", 3, "epoch"),
                              # the 10 validation images take part in no push
                              ("push after epoch 2", 30, "img"),
                              ("last layer after epoch 5", 30, "img")]:
        assert any(p.startswith(f"{desc}:") and f"{total}/{total}" in p and unit in p
                   for p in pieces), desc
    assert any(p.startswith("last layer after epoch 2:") and "solving" in p for p in pieces)
    # 30 training images in batches of 16 and 10 validation images: 3 batches
    # an epoch; the last training batch's running means are the epoch's
    for record in epoch_records(history):
        drawn = [p for p in pieces if p.startswith(f"epoch {record['epoch']}:")]
        assert drawn and "0/3" in drawn[0], drawn
        last = [p for p in drawn if "3/3" in p]
        assert last, drawn
        assert f"loss={record['train_loss']:.4g}," in last[-1], (last[-1], record)
        assert f"acc={record['train_acc']:.4g}" in last[-1], (last[-1], record)
    # every bar is cleared when its step ends: the last piece drawn is the last line
    assert [p for p in pieces if p][-1].startswith("[done] fit in")


@pytest.mark.parametrize("verbose", [0, 1])
def test_progress_without_a_terminal_makes_no_bar(monkeypatch, capsys, verbose):
    """In-process: on a captured (non-terminal) stdout, Progress draws no
    bar at all, and at verbose=0 writes nothing."""
    import torch

    from sklearn_protopnet._progress import Progress

    progress = Progress(verbose)
    assert not progress.draws_bars
    module = torch.nn.Module()
    module.backbone = torch.nn.Identity()
    with progress.images(module, "push", total=4) as bar:
        module.backbone(torch.zeros(4, 3))
        bar.set_postfix_str("solving")
    assert not module.backbone._forward_hooks
    progress("[a line]")
    captured = capsys.readouterr()
    assert captured.err == ""
    assert captured.out == ("[a line]\n" if verbose else "")


def test_a_notebook_gets_tqdm_auto_widgets(monkeypatch, capsys):
    """Where ``tqdm.auto`` picks the notebook widget (Jupyter with
    ipywidgets, whose stdout is no terminal), the bars are the widgets."""
    import tqdm.auto
    import tqdm.notebook

    from sklearn_protopnet._progress import Progress, _bar_class

    class Widget(tqdm.notebook.tqdm):
        pass

    assert _bar_class() is None  # captured stdout, no notebook
    monkeypatch.setattr(tqdm.auto, "tqdm", Widget)
    assert _bar_class() is Widget
    assert Progress(1).draws_bars and not Progress(0).draws_bars

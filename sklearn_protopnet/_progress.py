"""What ``verbose`` shows: messages, and progress bars where they can be drawn.

:class:`Progress` is the fit's one output channel. In a terminal or a
notebook it draws tqdm bars (epochs of a stage, batches of an epoch, the
images of the passes between epochs) and writes the messages above them; to
a log file, a pipe or a captured stream it prints the messages as plain
lines only; with ``verbose=0`` it prints nothing.
"""

from __future__ import annotations

import contextlib
import sys


def _bar_class():
    """The tqdm class to draw bars with on ``sys.stdout``, or None.

    ``tqdm.auto`` picks the notebook widget in Jupyter (with ipywidgets) and
    the terminal bar elsewhere; the terminal bar is drawn only when stdout is
    a terminal, as a log file, a pipe or a captured stream would get every
    redraw as one more carriage-return-separated line.
    """
    from tqdm.auto import tqdm
    from tqdm.notebook import tqdm as notebook_tqdm

    if issubclass(tqdm, notebook_tqdm):
        return tqdm
    isatty = getattr(sys.stdout, "isatty", None)
    try:
        return tqdm if isatty is not None and isatty() else None
    except ValueError:  # a closed stream
        return None


class _NoBar:
    """What :meth:`Progress.bar` gives where no bar is drawn."""

    def update(self, n=1):
        pass

    def set_postfix(self, *args, **kwargs):
        pass

    def set_postfix_str(self, *args, **kwargs):
        pass

    def close(self):
        pass


class Progress:
    """What ``verbose`` shows, on ``sys.stdout``.

    ``verbose=0``: nothing. ``verbose=1``: calling it prints a message as one
    line; where bars can be drawn (:func:`_bar_class`) the messages are
    written above the bars (``tqdm.write``) and :meth:`bar` makes tqdm bars,
    elsewhere :meth:`bar` makes stand-ins that draw nothing, so that a log
    file holds the messages only.
    """

    def __init__(self, verbose):
        self.enabled = bool(verbose)
        self._tqdm = _bar_class() if self.enabled else None

    @property
    def draws_bars(self) -> bool:
        return self._tqdm is not None

    def __call__(self, message: str) -> None:
        if not self.enabled:
            return
        if self._tqdm is not None:
            self._tqdm.write(message, file=sys.stdout)
        else:
            print(message, flush=True)

    def bar(self, desc: str, total=None, unit: str = "it", initial: int = 0):
        """A bar (cleared when closed: the messages are the lasting record)."""
        if self._tqdm is None:
            return _NoBar()
        return self._tqdm(desc=desc, total=total, unit=unit, initial=initial, leave=False,
                          file=sys.stdout, dynamic_ncols=True)

    @contextlib.contextmanager
    def images(self, module, desc: str, total=None):
        """A bar over the images of the passes run inside, for the steps
        that are not skorch epochs (initialisation, push, last layer's
        features): a forward hook on the backbone counts each batch."""
        bar = self.bar(desc, total=total, unit="img")

        def count(_module, inputs, _output):  # returns None: the output is kept
            bar.update(len(inputs[0]))

        handle = module.backbone.register_forward_hook(count) if self.draws_bars else None
        try:
            yield bar
        finally:
            if handle is not None:
                handle.remove()
            bar.close()


__all__ = ["Progress"]

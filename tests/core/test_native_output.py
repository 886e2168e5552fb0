"""captured_fd: what native code writes to a file descriptor is captured, and the descriptor restored."""

from __future__ import annotations

import os

from graphopt.native_output import captured_fd


def test_writes_to_the_descriptor_are_captured_and_the_descriptor_restored(capfd):
    with captured_fd(1) as captured:
        os.write(1, b"from native code\n")
    os.write(1, b"after\n")
    assert captured == ["from native code\n"]
    assert capfd.readouterr().out == "after\n"

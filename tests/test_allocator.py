"""rnnlab.allocator: applied by the commands, never by importing the library, and switchable off."""
import os
import subprocess
import sys

import pytest

_PROBE = ("import rnnlab, rnnlab.allocator as a;"
          "print(a.allocator_tuned(), a.tune_allocator(), a.tune_allocator(), a.allocator_tuned())")


def _run(code: str, **env) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env={**os.environ, **env})
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_import_leaves_allocator_alone_and_tune_applies():
    assert _run(_PROBE, RNNLAB_TUNE_MALLOC="1") == ["False", "True", "True", "True"]


def test_env_switch_disables():
    assert _run(_PROBE, RNNLAB_TUNE_MALLOC="0") == ["False", "False", "False", "False"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_cli_applies_it():
    code = ("import contextlib, io, rnnlab.cli as c, rnnlab.allocator as a\n"
            "with contextlib.redirect_stdout(io.StringIO()): c.main(['list', '--seq-lens', '8'])\n"
            "print(a.allocator_tuned())")
    assert _run(code, RNNLAB_TUNE_MALLOC="1") == ["True"]


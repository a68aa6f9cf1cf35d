"""`python -m icdstudy.study plan ...`, as a user runs it (a process of its own, with no venv on PATH) or in this
process (its imports paid once, for the tests that read many plans)."""
import contextlib
import io
import subprocess
import sys
from types import SimpleNamespace

import pytest

from tests.conftest import REPO


def plan_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "icdstudy.study", "plan", *args], cwd=REPO, capture_output=True,
                          text=True, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})


def plan_here(*args) -> SimpleNamespace:
    from icdstudy.study import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.MonkeyPatch.context() as patch:
        patch.chdir(REPO)
        code = main(["plan", *args])
    return SimpleNamespace(returncode=code, stdout=out.getvalue())

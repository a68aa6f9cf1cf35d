"""`make check-demo` (tools/check_demo.py): a newcomer's demo compared with the committed one, quality numbers and
byte-exact outputs only, with a message that says what differs and why it usually does."""
import importlib.util
import subprocess

import pytest

from tests.conftest import REPO

spec = importlib.util.spec_from_file_location("check_demo", REPO / "tools" / "check_demo.py")
check_demo = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check_demo)

REPORT = """## All systems

| system | exact % (95% CI) | top-5 % | coverage @90 % | $ per 1,000 | latency p50 s | samples/s |
|---|---|---:|---:|---:|---:|---:|
| lora-x | 44.2 (27.9–58.1) | 100.0 | 23.3 | $0.016 | 0.812 | 1.19 |
| tfidf-logreg | 60.5 (46.5–74.4) | 100.0 | none | $2.3e-05 | 0.001 | 1000.00 |
"""
LOCK = """schema: '2.0'
stages:
  train@x:
    outs:
    - path: models/adapters/x
      md5: aaa.dir
  predict@x:
    outs:
    - path: predictions/x.jsonl
      md5: bbb
"""


def test_machine_columns_are_left_out_and_a_changed_quality_cell_is_named():
    faster = REPORT.replace("$0.016 | 0.812 | 1.19", "$0.009 | 0.455 | 2.20")
    n, diffs = check_demo.report_differences(REPORT, faster)
    assert n == 6 and diffs == []  # three quality columns of two systems; cost and speed measure the machine
    n, diffs = check_demo.report_differences(REPORT, REPORT.replace("44.2 (27.9–58.1)", "30.2 (16.3–44.2)"))
    assert diffs == ["lora-x / exact % (95% ci): ours '44.2 (27.9–58.1)', yours '30.2 (16.3–44.2)'"]
    assert check_demo.report_differences(REPORT, REPORT.replace("| none |", "| 11.6 |"))[1]  # certified here, not there


def test_only_outputs_that_must_be_byte_identical_are_compared():
    assert check_demo.hash_differences(LOCK, LOCK.replace("bbb", "ccc")) == (1, [])  # predictions hold latencies
    assert check_demo.hash_differences(LOCK, LOCK.replace("aaa.dir", "ddd.dir"))[1] == [
        "models/adapters/x: content differs from ours"]


@pytest.mark.parametrize("changed", [False, True])
def test_the_command_compares_the_working_tree_with_the_commit(tmp_path, monkeypatch, capsys, changed):
    git = lambda *a: subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True)  # noqa: E731
    git("init", "-q")
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports/report.md").write_text(REPORT)
    (tmp_path / "dvc.lock").write_text(LOCK)
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "our demo")
    if changed:  # a newcomer's rerun that trained another adapter
        (tmp_path / "reports/report.md").write_text(REPORT.replace("| 100.0 | 23.3 |", "| 95.3 | 11.6 |"))
        (tmp_path / "dvc.lock").write_text(LOCK.replace("aaa.dir", "eee.dir"))
    monkeypatch.chdir(tmp_path)
    assert check_demo.main([]) == int(changed)
    out = capsys.readouterr().out
    if changed:
        assert "differs: lora-x / top-5 %: ours '100.0', yours '95.3'" in out
        assert "differs: models/adapters/x: content differs from ours" in out and "What usually makes" in out
    else:
        assert "your demo reproduced ours" in out and "CPU kernels" in out

"""The mypy gate: the library is strict-clean, pass files pass, every marked misuse is rejected."""

from __future__ import annotations

from pathlib import Path

import pytest

from pachyderm_typed.typegate import run_gate

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def at_repo_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the gate files import typecheck.app


def test_library_and_examples_pass_mypy_strict() -> None:
    from mypy import api

    stdout, stderr, status = api.run(["--strict", "pachyderm_typed", "examples"])
    assert status == 0, stdout + stderr


def test_gate_accepts_pass_files_and_rejects_every_marked_line() -> None:
    report = run_gate(ROOT / "typecheck")
    assert report.ok, str(report)
    assert report.expected >= 29
    assert {p.parent.name for p in report.checked} == {"pass", "fail"}


def test_gate_fails_on_an_accepted_marked_line_and_on_an_unmarked_error(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    (gate / "pass").mkdir(parents=True)
    (gate / "fail").mkdir()
    (gate / "pass" / "ok.py").write_text("x: int = 1\n")
    (gate / "fail" / "wrong.py").write_text(
        "a: int = 1  # E: assignment\n"  # accepted: must be reported
        'b: int = "text"\n'  # rejected but unmarked: must be reported
        'c: int = "text"  # E: arg-type\n'  # rejected for another reason
    )
    report = run_gate(gate, ["--cache-dir", str(tmp_path / "mypy-cache")])
    assert not report.ok
    problems = "\n".join(report.problems)
    assert "wrong.py:1: accepted, but must be rejected with [assignment]" in problems
    assert "wrong.py:2: unexpected error [assignment]" in problems
    assert "wrong.py:3: rejected with [assignment], expected [arg-type]" in problems

"""The type gate: prove that mypy accepts what it must and rejects what it must.

A gate directory holds ``pass/*.py`` files, which must type-check cleanly, and
``fail/*.py`` files, where every line that must be rejected ends with a marker
naming the mypy error code(s)::

    Counter.post(1, Increment())  # E: arg-type

The gate fails when a marked line is accepted (or rejected for another
reason), and when any unmarked line errors. Run it in CI::

    python -m pachyderm_typed.typegate typecheck/

It needs mypy installed (the ``test`` extra). Pin mypy's version in CI: error
codes are stable, but what mypy infers can change between releases.
"""

from __future__ import annotations

import re
import sys
from collections import defaultdict
from pathlib import Path

import attrs

_MARKER = re.compile(r"#\s*E:\s*([a-z0-9-]+(?:\s*,\s*[a-z0-9-]+)*)\s*$")
_ERROR = re.compile(r"^(?P<path>.+?):(?P<line>\d+): error: (?P<text>.*?)(?:  \[(?P<code>[a-z0-9-]+)\])?$")


@attrs.frozen
class GateReport:
    checked: tuple[Path, ...]
    expected: int
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        head = f"type gate: {len(self.checked)} files, {self.expected} lines that must be rejected"
        if self.ok:
            return f"{head}: all as expected"
        return "\n".join([f"{head}: {len(self.problems)} problem(s)", *self.problems])


def expected_errors(path: Path) -> dict[int, set[str]]:
    """Line number -> error codes marked on it."""
    marks: dict[int, set[str]] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        found = _MARKER.search(line)
        if found:
            marks[number] = {code.strip() for code in found.group(1).split(",")}
    return marks


def run_gate(directory: Path | str, extra_args: list[str] | None = None) -> GateReport:
    """Run mypy --strict over ``directory``'s pass/ and fail/ files and compare."""
    try:
        from mypy import api
    except ImportError:
        raise SystemExit("the type gate needs mypy: pip install 'pachyderm-typed[test]'") from None
    root = Path(directory)
    files = sorted((root / "pass").glob("*.py")) + sorted((root / "fail").glob("*.py"))
    files = [f for f in files if f.name != "__init__.py"]
    if not files:
        return GateReport((), 0, (f"no gate files under {root}/pass or {root}/fail",))
    args = ["--strict", "--show-error-codes", "--no-error-summary", "--no-pretty", *(extra_args or [])]
    stdout, stderr, status = api.run([*args, *map(str, files)])
    if status == 2:
        return GateReport(tuple(files), 0, (f"mypy could not run: {stderr or stdout}",))

    actual: dict[tuple[str, int], set[str]] = defaultdict(set)
    messages: dict[tuple[str, int], list[str]] = defaultdict(list)
    for line in stdout.splitlines():
        match = _ERROR.match(line)
        if match:
            key = (str(Path(match["path"]).resolve()), int(match["line"]))
            actual[key].add(match["code"] or "misc")
            messages[key].append(match["text"])

    problems: list[str] = []
    expected_total = 0
    for path in files:
        resolved = str(path.resolve())
        marks = expected_errors(path) if path.parent.name == "fail" else {}
        expected_total += len(marks)
        for number, codes in sorted(marks.items()):
            got = actual.get((resolved, number), set())
            if not got:
                problems.append(f"{path}:{number}: accepted, but must be rejected with [{', '.join(sorted(codes))}]")
            elif not codes <= got:
                problems.append(
                    f"{path}:{number}: rejected with [{', '.join(sorted(got))}], expected [{', '.join(sorted(codes))}]"
                )
        for (where, number), codes in sorted(actual.items()):
            if where == resolved and number not in marks:
                text = "; ".join(messages[(where, number)])
                problems.append(f"{path}:{number}: unexpected error [{', '.join(sorted(codes))}]: {text}")
    known = {str(f.resolve()) for f in files}
    for (where, number), codes in sorted(actual.items()):
        if where not in known:
            problems.append(f"{where}:{number}: error outside the gate files [{', '.join(sorted(codes))}]")
    return GateReport(tuple(files), expected_total, tuple(problems))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in {"-h", "--help"}:
        print(__doc__)
        return 0 if args else 2
    report = run_gate(args[0], args[1:])
    print(report)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())

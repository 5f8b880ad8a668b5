"""The security report: attack tests and their legitimate counterparts, counted per attack.

Two markers, registered in pyproject.toml, label the tests that `make security` runs:

- `attack(name, attempts=1, params=None)` marks a test that tries to get past a guard, so its
  failure is a bypass. `attempts` is how many hostile inputs one case of the test sends.
- `legitimate(name, params=None)` marks a test that shows an ordinary call the guard must let
  through still works, so its failure is a false refusal.

`name` is a short description of the attack, shared by its attack tests and their legitimate
counterparts. On a parametrized test, `params` limits a marker to the cases whose parameters have
these values, so one test can carry both roles. A case that mixes hostile and legitimate calls
carries `attack` alone: its failure counts as a bypass, because the report cannot tell which call
failed.

The markers are checked on every run. With `--security-report`, only cases with a matching marker
run, one row per attack is printed at the end, and the session fails on any bypass or false
refusal. An attack case that is expected to fail (xfail) counts as a bypass too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest

ATTACK = "attack"
LEGITIMATE = "legitimate"
REPORT_OPTION = "--security-report"
ROLE_KEY = pytest.StashKey["Role | None"]()

Kind = Literal["attack", "legitimate"]
Outcome = Literal["passed", "failed", "skipped", "error"]


@dataclass(frozen=True)
class Role:
    """What one collected case tests: an attack or its legitimate counterpart."""

    kind: Kind
    name: str
    attempts: int


@dataclass
class AttackRow:
    """The counts of one attack in the report."""

    attempts: int = 0
    bypasses: int = 0
    false_refusals: int = 0
    attack_cases: int = 0
    legitimate_cases: int = 0


# A plugin must be hashable for pluggy, so it compares by identity.
@dataclass(eq=False)
class SecurityReport:
    """Collects the outcome of every marked case and prints the table at the end of the session."""

    roles: dict[str, Role] = field(default_factory=dict)
    outcomes: dict[str, Outcome] = field(default_factory=dict)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.nodeid not in self.roles:
            return
        outcome = _outcome_of(report)
        if outcome is None:
            return
        # A teardown error after a passed call still means the case did not finish cleanly.
        if self.outcomes.get(report.nodeid) in (None, "passed"):
            self.outcomes[report.nodeid] = outcome

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        rows = self.rows()
        failed = any(row.bypasses or row.false_refusals for row in rows.values())
        if failed and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        writer = terminalreporter
        writer.write_sep("=", "security report")
        for line in format_table(self.rows()):
            writer.write_line(line)
        for outcome in ("skipped", "error"):
            cases = sorted(nodeid for nodeid, seen in self.outcomes.items() if seen == outcome)
            if cases:
                writer.write_line(f"{len(cases)} marked cases did not run to the end ({outcome}):")
                for nodeid in cases:
                    writer.write_line(f"  {nodeid}")

    def rows(self) -> dict[str, AttackRow]:
        """Return one row per attack name, counting the cases that ran to a result."""
        rows: dict[str, AttackRow] = {role.name: AttackRow() for role in self.roles.values()}
        for nodeid, outcome in self.outcomes.items():
            if outcome not in ("passed", "failed"):
                continue
            role = self.roles[nodeid]
            row = rows[role.name]
            if role.kind == ATTACK:
                row.attack_cases += 1
                row.attempts += role.attempts
                row.bypasses += outcome == "failed"
            else:
                row.legitimate_cases += 1
                row.false_refusals += outcome == "failed"
        return rows


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("security").addoption(
        REPORT_OPTION,
        action="store_true",
        help="run only the cases marked attack or legitimate, print one row per attack, "
        "and fail on any bypass or false refusal",
    )


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption(REPORT_OPTION):
        config.pluginmanager.register(SecurityReport(), "security-report")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        item.stash[ROLE_KEY] = role_of(item)
    report = config.pluginmanager.get_plugin("security-report")
    if not isinstance(report, SecurityReport):
        return

    selected = [item for item in items if item.stash[ROLE_KEY] is not None]
    deselected = [item for item in items if item.stash[ROLE_KEY] is None]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
    items[:] = selected
    report.roles = {item.nodeid: role for item in selected if (role := item.stash[ROLE_KEY]) is not None}


def role_of(item: pytest.Item) -> Role | None:
    """Return the role of a collected case, from the one security marker whose `params` match it.

    Raises:
        pytest.UsageError: A marker is malformed, or two markers match the same case.
    """
    matching: list[Role] = []
    for marker in item.iter_markers():
        if marker.name not in (ATTACK, LEGITIMATE):
            continue
        role, params = _parse_marker(item, marker)
        if _params_match(item, params):
            matching.append(role)
    if len(matching) > 1:
        names = ", ".join(f"{role.kind}({role.name!r})" for role in matching)
        raise pytest.UsageError(
            f"{item.nodeid} matches {names}. Give each marker `params` that tell them apart."
        )
    return matching[0] if matching else None


def format_table(rows: Mapping[str, AttackRow]) -> list[str]:
    """Return the report's lines: a header, one row per attack in name order, and the totals."""
    total = AttackRow()
    for row in rows.values():
        total.attempts += row.attempts
        total.bypasses += row.bypasses
        total.false_refusals += row.false_refusals
        total.attack_cases += row.attack_cases
        total.legitimate_cases += row.legitimate_cases
    width = max([len("attack"), len("total"), *(len(name) for name in rows)])
    header = f"{'attack':<{width}}  {'attempts':>8}  {'bypasses':>8}  {'false refusals':>14}  {'tests':>7}"
    lines = [header, "-" * len(header)]
    for name in sorted(rows):
        lines.append(_format_row(name, rows[name], width))
    lines += ["-" * len(header), _format_row("total", total, width)]
    lines.append("tests: attack cases + legitimate cases that ran to a result.")
    lines.append("A failing attack case counts as one bypass, however many of its attempts got through.")
    return lines


def _format_row(name: str, row: AttackRow, width: int) -> str:
    tests = f"{row.attack_cases}+{row.legitimate_cases}"
    return f"{name:<{width}}  {row.attempts:>8}  {row.bypasses:>8}  {row.false_refusals:>14}  {tests:>7}"


def _parse_marker(item: pytest.Item, marker: pytest.Mark) -> tuple[Role, Mapping[str, Any] | None]:
    allowed = {"attempts", "params"} if marker.name == ATTACK else {"params"}
    unknown = set(marker.kwargs) - allowed
    if len(marker.args) != 1 or not isinstance(marker.args[0], str) or not marker.args[0].strip():
        raise pytest.UsageError(
            f"{item.nodeid}: @pytest.mark.{marker.name} needs one name, a non-empty string."
        )
    if unknown:
        raise pytest.UsageError(
            f"{item.nodeid}: @pytest.mark.{marker.name} has unknown arguments {sorted(unknown)}. "
            f"It takes {sorted(allowed)}."
        )
    attempts = marker.kwargs.get("attempts", 1)
    if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 1:
        raise pytest.UsageError(f"{item.nodeid}: attempts={attempts!r} must be a positive integer.")
    params = marker.kwargs.get("params")
    if params is not None and not isinstance(params, Mapping):
        raise pytest.UsageError(f"{item.nodeid}: params={params!r} must be a dict of parameter values.")
    kind: Kind = ATTACK if marker.name == ATTACK else LEGITIMATE
    return Role(kind=kind, name=marker.args[0], attempts=attempts), params


def _params_match(item: pytest.Item, params: Mapping[str, Any] | None) -> bool:
    if params is None:
        return True
    callspec = getattr(item, "callspec", None)
    values: Mapping[str, Any] = callspec.params if callspec is not None else {}
    missing = sorted(set(params) - set(values))
    if missing:
        raise pytest.UsageError(
            f"{item.nodeid}: the marker's params name {missing}, which this case does not have."
        )
    return all(values[name] == value for name, value in params.items())


def _outcome_of(report: pytest.TestReport) -> Outcome | None:
    if report.when == "call":
        if report.skipped and hasattr(report, "wasxfail"):
            # An expected failure of an attack is a known bypass, and of a legitimate call a known refusal.
            return "failed"
        if report.passed:
            return "passed"
        return "failed" if report.failed else "skipped"
    if report.failed:
        return "error"
    if report.skipped:
        return "skipped"
    return None

"""Splitting a Docker exec's framed output into stdout, stderr and the driver's report."""

from __future__ import annotations

import json

from mcp_guard.sandbox.base import OutputCapture
from mcp_guard.sandbox.docker_stream import ExecStream, run_outcome

MARKER = b"\n--report-7f3a--"


def frame(stream: int, payload: bytes) -> bytes:
    return bytes([stream, 0, 0, 0]) + len(payload).to_bytes(4, "big") + payload


def test_frames_split_anywhere_keep_order() -> None:
    data = frame(1, b"hello ") + frame(2, b"warning\n") + frame(1, b"world\n")
    stream = ExecStream(OutputCapture(1024), MARKER)

    for start in range(0, len(data), 3):
        assert stream.feed(data[start : start + 3])
    stream.finish()

    assert stream.output.text("stdout") == "hello world\n"
    assert stream.output.text("stderr") == "warning\n"


def test_report_split_off_stderr_across_frames() -> None:
    report = json.dumps({"results": [{"kind": "text", "data": "42"}]}).encode()
    stderr = b"Traceback: none" + MARKER + report
    middle = len(b"Traceback: none") + 5
    data = frame(2, stderr[:middle]) + frame(2, stderr[middle:])
    stream = ExecStream(OutputCapture(1024), MARKER)

    stream.feed(data)
    stream.finish()
    outcome = run_outcome(stream, [], 0)

    assert outcome.stderr == "Traceback: none"
    assert [result.data for result in outcome.results] == ["42"]
    assert outcome.exit_code == 0


def test_output_cap_stops_feeding() -> None:
    stream = ExecStream(OutputCapture(10), MARKER)

    more = stream.feed(frame(1, b"x" * 64))

    assert more is False
    assert stream.output.capped


def test_signal_exit_status_reads_as_killed() -> None:
    stream = ExecStream(OutputCapture(1024), MARKER)
    stream.finish()

    outcome = run_outcome(stream, [], 128 + 9)

    assert outcome.exit_code is None
    assert outcome.error is not None
    assert outcome.error.name == "Killed"
    assert "SIGKILL" in outcome.error.value

"""Reading a Docker exec's output: its stream frames, the driver's report, and the run's outcome.

`docker.py` reads the exec's raw socket and feeds the bytes to `ExecStream`, which passes
stdout and stderr on to `OutputCapture` as they arrive and splits the Python driver's
report off stderr at the run's random marker. `run_outcome` then turns both into a
`RunOutcome`.
"""

from __future__ import annotations

import signal
from typing import Literal

from mcp_guard.sandbox.base import CodeError, OutputCapture, RunOutcome, StopReason
from mcp_guard.sandbox.report import parse_report, report_error, report_results

# Largest driver report accepted; the driver caps its own values well below this.
MAX_REPORT_BYTES = 8 * 1024 * 1024
_SIGNAL_NUMBERS = {int(number) for number in signal.Signals}


class ExecStream:
    """Demultiplexes an exec's output frames into `OutputCapture`, and splits the driver's report off stderr.

    Each frame is an 8-byte header (stream number, three zero bytes, big-endian payload size)
    followed by the payload. Payloads are passed on as they arrive, so a large frame never
    collects in memory.
    """

    def __init__(self, output: OutputCapture, marker: bytes) -> None:
        self.output = output
        self.report = bytearray()
        self._marker = marker
        self._header = bytearray()
        self._stream: Literal["stdout", "stderr"] | None = None
        self._remaining = 0
        self._pending = b""
        self._in_report = False

    def feed(self, data: bytes) -> bool:
        """Take bytes read from the exec; return False once the output cap is reached."""
        view = memoryview(data)
        while view:
            if self._remaining == 0:
                take = 8 - len(self._header)
                self._header += view[:take]
                view = view[take:]
                if len(self._header) == 8:
                    self._stream = "stderr" if self._header[0] == 2 else "stdout"
                    self._remaining = int.from_bytes(self._header[4:8], "big")
                    self._header.clear()
                continue
            payload = bytes(view[: self._remaining])
            view = view[len(payload) :]
            self._remaining -= len(payload)
            if not self._add(payload):
                return False
        return True

    def finish(self) -> None:
        """Pass on stderr bytes held back as a possible start of the marker."""
        pending, self._pending = self._pending, b""
        if pending and not self._in_report:
            self.output.add("stderr", pending)

    def _add(self, payload: bytes) -> bool:
        if self._stream == "stdout":
            return self.output.add("stdout", payload)
        if self._in_report:
            self._keep_report(payload)
            return True
        text = self._pending + payload
        found = text.find(self._marker)
        if found >= 0:
            self._in_report = True
            self._pending = b""
            self._keep_report(text[found + len(self._marker) :])
            return self.output.add("stderr", text[:found]) if found else True
        # Hold back a tail that could be the start of the marker split across frames.
        keep = _partial_marker_length(text, self._marker)
        self._pending = text[len(text) - keep :] if keep else b""
        passed = text[: len(text) - keep]
        return self.output.add("stderr", passed) if passed else True

    def _keep_report(self, data: bytes) -> None:
        if len(self.report) + len(data) <= MAX_REPORT_BYTES:
            self.report += data


def _partial_marker_length(text: bytes, marker: bytes) -> int:
    """Return the length of the longest end of `text` that is a start of `marker`."""
    for length in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-length:]):
            return length
    return 0


def run_outcome(stream: ExecStream, stopped: list[StopReason], exit_code: int | None) -> RunOutcome:
    """Build a run's outcome from its captured output, the driver's report and the exit status."""
    output = stream.output
    report = parse_report(bytes(stream.report))
    outcome = RunOutcome(
        stdout=output.text("stdout"),
        stderr=output.text("stderr"),
        exit_code=None if stopped else exit_code,
        seconds=0.0,
        error=report_error(report.get("error")),
        results=report_results(report.get("results")),
        stopped=stopped[0] if stopped else None,
        output_capped=output.capped,
    )
    # The prelude exits with 128 + N when signal N ended the code (the shell's convention), so an
    # exit status of 129 to 159 set by the code itself reads as a signal too.
    if not stopped and exit_code is not None and 128 < exit_code < 128 + signal.NSIG:
        name = signal.Signals(exit_code - 128).name if exit_code - 128 in _SIGNAL_NUMBERS else str(exit_code)
        outcome.exit_code = None
        outcome.error = outcome.error or CodeError(
            name="Killed", value=f"the code was ended by signal {name}", traceback=""
        )
    return outcome

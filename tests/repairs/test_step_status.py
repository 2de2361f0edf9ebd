"""A failed step's sentence in the journal names how the command ended, signals included."""

from __future__ import annotations

from bup_watchdog.repairs.base import Step, step_failed
from bup_watchdog.transport.base import CommandResult
from bup_watchdog.transport.local import LocalTransport


def _failed(argv: list[str]) -> str:
    step = Step("s1", tuple(argv), "the copy")
    result = LocalTransport().run(argv, timeout=30)
    return step_failed(step, result, "last line")


def test_a_step_killed_by_a_signal_is_reported_as_killed_with_the_signals_name() -> None:
    assert _failed(["sh", "-c", "kill -KILL $$"]) == (
        "step 'the copy' failed with status -9 (killed by SIGKILL): last line"
    )


def test_a_step_that_exits_non_zero_is_reported_with_its_status() -> None:
    assert _failed(["sh", "-c", "exit 3"]) == "step 'the copy' failed with status 3: last line"


def test_an_ssh_command_ended_without_an_exit_status_says_so_instead_of_a_bare_minus_one() -> None:
    # paramiko reports -1 when OpenSSH sent a signal's name instead of a status; this is that
    # value as the SSH transport returns it (the real case is a fault row: bup SIGKILLed on prune)
    result = CommandResult(-1, b"", b"", 0.1)
    assert step_failed(Step("s1", ("bup",), "gc"), result, "no output") == (
        "step 'gc' failed with status -1 (no exit status: killed by a signal, or its connection "
        "closed): no output"
    )

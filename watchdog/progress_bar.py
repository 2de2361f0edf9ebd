"""The progress of a batch run (rebuild, evacuation) as people see it: a bar with an ETA in bytes
on a terminal (stderr), one line per item otherwise (stdout), nothing with ``--format json``."""

from __future__ import annotations

from typing import Any


class ItemProgress:
    """``done`` once per item (a copy, a move), ``close`` at the end."""

    def __init__(
        self, verb: str, label: str, total: int, total_bytes: int, json_output: bool
    ) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self.json_output = json_output
        self.total = total
        self.count = 0
        self.bar: Any = None
        if self.console.is_terminal and not json_output and total:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(
                TextColumn(f"[bold]{verb}[/] {{task.description}}"),
                BarColumn(),
                DownloadColumn(),
                TextColumn("{task.fields[items]}"),
                TimeRemainingColumn(),
                console=self.console,
                transient=True,
            )
            self.task = self.bar.add_task(label, total=max(1, total_bytes), items=f"0/{total}")
            self.bar.start()

    def done(
        self, project_id: str, status: str, seconds: float, entry_id: int, message: str, nbytes: int
    ) -> None:
        """One item ended: its line above the bar (or on stdout), the bar advanced by its bytes."""
        from rich.markup import escape

        self.count += 1
        line = (
            f"[{self.count}/{self.total}] {project_id}: {status} in {seconds:.1f} s"
            f" (repair #{entry_id}) — {message}"
        )
        if self.bar is not None:
            self.bar.console.print(escape(line), highlight=False)
            self.bar.update(self.task, advance=nbytes, items=f"{self.count}/{self.total}")
        elif not self.json_output:
            print(line, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()

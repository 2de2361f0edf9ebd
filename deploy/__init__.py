"""Package data: systemd units and drop-ins, the sudoers example (see bup-watchdog files)."""

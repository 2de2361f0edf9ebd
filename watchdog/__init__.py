"""bup-watchdog: watch a bup/ZFS project-storage fleet and repair it under a guard.

Pipeline: inventory -> gather -> checks -> state -> metrics / repairs / reports.
"""

__version__ = "0.1.0"

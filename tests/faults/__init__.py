"""The fault-injection and hostile-input suite (importable as ``faults`` for its helpers)."""

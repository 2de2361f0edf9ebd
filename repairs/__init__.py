"""Repairs: one module per repair (plan, preconditions, execute, verify), run only by the guard."""

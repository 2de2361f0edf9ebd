"""Package data: the runbooks every alert links to, and the reliability table."""

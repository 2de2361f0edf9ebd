"""Programs the operator installs on the storage hosts: stdlib only, they import nothing of ours."""

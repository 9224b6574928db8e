"""The control plane: REST API, Kusto-style commands, roles and policy propagation."""

"""The `egressguard` command line: one sub-module per area, assembled in `main`."""

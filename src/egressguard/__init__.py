"""egressguard."""

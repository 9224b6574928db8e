"""What every enforcement point shares: the decision event and the one checkpoint
(decide, report-only, metrics, audit event, durable record)."""

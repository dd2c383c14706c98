"""The counters the aggregator keeps for a run and records in its END: what arrived, what was
stored, and what was dropped and why (``simvue-hpc show`` and the report list them)."""

COUNTERS = (
    "points_received",
    "points_stored",
    "late_points",
    "events",
    "messages_lost",
    "dropped_points",
    "protocol_errors",
    "points_over_bounds",  # dropped past a bound: max_metrics, max_open_steps, the step range
    "peers_refused",  # ranks refused past peer_margin / max_peers
    "points_after_stop",  # arrived after the run stopped accepting data (a full disk)
    "points_already_stored",  # resent after a restart, already in the store: dropped
)

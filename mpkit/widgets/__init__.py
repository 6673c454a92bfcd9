"""Front-ends: progress bars (and later dashboards) that read engine snapshots, never queues."""

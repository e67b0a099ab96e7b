"""bert4ray pipelines: Ray jobs and the command line."""

"""Subcommands of the `bert4ray` command line; see pipelines/cli.py."""

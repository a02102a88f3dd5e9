"""Command-line shells. Each subcommand is a thin wrapper over a typed library function."""

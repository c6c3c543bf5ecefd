"""The `fastdia` command: main.py holds the subcommand table, one module per subcommand."""

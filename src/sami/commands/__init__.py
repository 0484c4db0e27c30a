"""One module per `sami` subcommand: `add_arguments(parser)` and `run(args) -> int`."""

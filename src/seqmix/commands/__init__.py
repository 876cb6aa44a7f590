"""The `seqmix` subcommands that wrap the library: each module exposes ``configure(parser)`` and ``run(args)``."""

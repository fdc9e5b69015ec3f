//! Command line: serve, sandbox-cloud, client subcommands. (In progress.)

"""The root ``moetape`` click group; subcommands load lazily so --help never imports torch."""

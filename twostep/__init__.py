"""The `twostep` command line: a thin layer that parses arguments and calls the packages."""

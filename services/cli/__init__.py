"""The `dockyard` command line: docker's verbs, sent over the bus."""

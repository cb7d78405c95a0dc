"""The library every dockyard service imports: wire contract, OCI types, bus harness."""

"""Image archives (issue 12): `save` writes docker-archive + OCI layout in one tar, `load` reads them."""

"""OCI values: digests, media types, descriptors, manifests, references."""

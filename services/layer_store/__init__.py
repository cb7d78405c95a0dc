"""layer-store: owns blob bytes, content-addressed (anchor: containerd's content store)."""

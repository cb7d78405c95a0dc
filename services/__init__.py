"""dockyard's services; each may import `shared`, never another service."""

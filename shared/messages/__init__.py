"""The wire contract: every request, reply and event as a msgspec Struct.

One module per service (`layer_store`, `registry`, `agent`, `builder`, `gc`) plus
`common` for what all share. New fields always get defaults (schema evolution).
"""

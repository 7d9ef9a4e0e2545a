"""Generated wire types (scripts/gen-proto) — do not edit.

Private to the project: handwritten code imports the messages from here,
users import the public names from ``secretvault.clients``.
"""

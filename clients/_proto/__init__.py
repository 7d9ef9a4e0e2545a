"""Generated wire types (scripts/gen-proto) — do not edit.

Private: import the public names from ``clients``.
"""

"""Unit tests of the shared API room (secretvault.api): framing, public-key encodings."""

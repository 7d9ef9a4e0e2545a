"""The secretvault client library and the API package the server shares."""

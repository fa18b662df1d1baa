"""Conclave's Python client: the SDK (`client.sdk`), synthetic media and `conclave join`."""

"""Relay node: signalling, peer connections and packet forwarding without decoding."""

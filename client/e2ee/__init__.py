"""End-to-end media encryption: SFrame (RFC 9605) with keys the servers never see.

`client.e2ee.sframe` holds the stateless RFC functions (header, key derivation, AEAD);
`client.e2ee.context` the stateful sender/receiver used on the media path.
`client.e2ee.group` agrees the keys (identity bindings, leader, hash-chained roster,
epochs, security code); see docs/e2ee.md.
"""

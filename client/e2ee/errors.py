"""Named SFrame errors, so callers can tell a bad frame from a misused key."""

from __future__ import annotations


class SFrameError(Exception):
    """Base for every SFrame failure; `decrypt` raises only this family."""


class UnsupportedCipherSuiteError(SFrameError, ValueError):
    """The cipher suite is not one of the five registered in RFC 9605 §8.1."""


class FormatError(SFrameError):
    """The input is not a well-formed SFrame ciphertext (truncated or too long)."""


class HeaderError(FormatError):
    """The SFrame header (RFC 9605 §4.3) is truncated, non-minimal or out of range."""


class AuthenticationError(SFrameError):
    """The AEAD tag did not verify: wrong key, wrong metadata or tampered bytes."""


class KeyUsageError(SFrameError):
    """A key was used, or registered, against its role (RFC 9605 §4.4.1: never both)."""


class CounterExhaustedError(SFrameError):
    """A sending key has used every CTR value; encrypting again would reuse a nonce."""

"""The relay's native media path (relay/native/, docs/native.md): C extensions on
libsrtp2 and OpenSSL's libcrypto (Debian libsrtp2-dev and libssl-dev, which `make`
installs). Everything else about the
package is in pyproject.toml."""

from setuptools import Extension, setup

FLAGS = ["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror"]

setup(
    ext_modules=[
        Extension(
            "relay._native",
            [
                "relay/native/module.c",
                "relay/native/srtp.c",
                "relay/native/srtp_send.c",
                "relay/native/crypto.c",
                "relay/native/engine.c",
                "relay/native/forward.c",
                "relay/native/reception.c",
            ],
            libraries=["srtp2", "crypto", "m"],
            extra_compile_args=FLAGS,
        ),
    ]
)

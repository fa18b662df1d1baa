"""TLS plumbing: certificate files, a throw-away PKI for dev and tests, the
`--etcd-ca/--etcd-cert/--etcd-key` options every etcd client takes, and the
credentials of the control plane's own TLS (gRPC and HTTPS) (issue 11).

etcd runs with `--client-cert-auth`: a client proves itself with a certificate
its CA signed, and sees the server's certificate checked against the same CA.
Production certificates come from the operator (or cert-manager); `dev_pki` is
only for `conclave dev` and the tests.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import hashlib
import ipaddress
import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from conclave.paths import config_dir

CA_ENV = "CONCLAVE_ETCD_CA"
CERT_ENV = "CONCLAVE_ETCD_CERT"
KEY_ENV = "CONCLAVE_ETCD_KEY"
#: the CA a client (RoomsClient, the CLI) checks the control plane's certificate with
CA_FILE_ENV = "CONCLAVE_CA_FILE"
#: the mutual TLS of the relays' gRPC port (control plane -> relay, relay -> relay)
RPC_CA_ENV = "CONCLAVE_RPC_CA"
RPC_CERT_ENV = "CONCLAVE_RPC_CERT"
RPC_KEY_ENV = "CONCLAVE_RPC_KEY"

#: the dev server certificate's hosts; "localhost" is also the TLS server name a
#: client checks when it round-robins over several endpoints (conclave/store.py)
DEV_SERVER_HOSTS = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: the CA that signs the peer's certificate, our chain and key."""

    ca: Path
    cert: Path
    key: Path

    def read(self) -> tuple[bytes, bytes, bytes]:
        """(CA certificate, certificate chain, private key), as PEM bytes."""
        return self.ca.read_bytes(), self.cert.read_bytes(), self.key.read_bytes()


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _builder(
    subject: str, issuer: x509.Name, public: ec.EllipticCurvePublicKey, days: int
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # clock skew
        .not_valid_after(now + datetime.timedelta(days=days))
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    """Signatures (ECDSA handshakes); a CA also signs certificates and CRLs."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def make_ca(common_name: str, days: int = 30) -> tuple[bytes, bytes]:
    """A self-signed ECDSA P-256 CA: (certificate PEM, key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = (
        _builder(common_name, _name(common_name), key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def _subject_alternative_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def issue(
    ca_cert_pem: bytes,
    ca_key_pem: bytes,
    common_name: str,
    *,
    hosts: Sequence[str] = (),
    server: bool,
    client: bool,
    days: int = 30,
) -> tuple[bytes, bytes]:
    """A leaf certificate signed by the CA: (certificate PEM, key PEM). `hosts`
    become IP or DNS subject alternative names; `server`/`client` the extended
    key usages serverAuth/clientAuth."""
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey), "make_ca makes ECDSA CAs"
    key = ec.generate_private_key(ec.SECP256R1())
    usages = [ExtendedKeyUsageOID.SERVER_AUTH] * server + [ExtendedKeyUsageOID.CLIENT_AUTH] * client
    builder = (
        _builder(common_name, ca_cert.subject, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
    )
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if hosts:
        names = _subject_alternative_names(hosts)
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    certificate = builder.sign(ca_key, hashes.SHA256())
    return certificate.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def spki_sha256(certificate: Path) -> str:
    """Base64 SHA-256 of the certificate's public key (SubjectPublicKeyInfo), as
    Chromium's --ignore-certificate-errors-spki-list takes it."""
    public = x509.load_pem_x509_certificate(certificate.read_bytes()).public_key()
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


def _write_private(path: Path, data: bytes) -> None:
    """Create `path` readable by its owner only (never briefly wider)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)
    os.chmod(path, 0o600)


#: what dev_pki issues: (name, hosts, server usage, client usage)
DEV_LEAVES: tuple[tuple[str, Sequence[str], bool, bool], ...] = (
    # client usage too: etcd's JSON gateway dials etcd's own gRPC port with it
    ("etcd-server", DEV_SERVER_HOSTS, True, True),
    ("etcd-client", ("etcd-client",), False, True),  # strict verifiers want a SAN
    ("etcd-peer", DEV_SERVER_HOSTS, True, True),
    ("control-plane", DEV_SERVER_HOSTS, True, False),
    ("cell", DEV_SERVER_HOSTS, True, True),
    ("relay", DEV_SERVER_HOSTS, True, False),
)
DEV_CA_DAYS = 365  # long enough that a CA imported into a browser stays useful
DEV_LEAF_DAYS = 30
#: a certificate closer than this to its end is issued anew
RENEW_BEFORE = datetime.timedelta(days=1)


def dev_pki(directory: Path) -> dict[str, TlsFiles]:
    """A throw-away CA in `directory` (0700, files 0600) and, signed by it:

    - `etcd-server`: etcd's client port;
    - `etcd-client`: what control planes, relays and CLIs present to etcd;
    - `etcd-peer` (server and client): what etcd members present to each other;
    - `control-plane`: the control plane's gRPC and HTTPS server;
    - `cell` (server and client): what relays and control planes present to each
      other on the relays' gRPC port;
    - `relay`: a relay's HTTPS and WSS server.

    Servers' certificates are for 127.0.0.1 and localhost. Files already there are
    reused until a day before they end; a new CA means new leaves."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    ca, ca_key = directory / "ca.pem", directory / "ca-key.pem"
    fresh_ca = not (_current(ca) and ca_key.exists())
    if fresh_ca:
        made = make_ca("conclave dev CA", days=DEV_CA_DAYS)
        for path, data in zip((ca, ca_key), made, strict=True):
            _write_private(path, data)
    files: dict[str, TlsFiles] = {}
    for name, hosts, server, client in DEV_LEAVES:
        cert, key = directory / f"{name}.pem", directory / f"{name}-key.pem"
        if fresh_ca or not (_current(cert) and key.exists()):
            issued = issue(
                ca.read_bytes(), ca_key.read_bytes(), f"conclave {name}",
                hosts=hosts, server=server, client=client, days=DEV_LEAF_DAYS,
            )  # fmt: skip
            for path, data in zip((cert, key), issued, strict=True):
                _write_private(path, data)
        files[name] = TlsFiles(ca, cert, key)
    return files


def _current(certificate: Path) -> bool:
    """The file holds a certificate that is good for more than RENEW_BEFORE."""
    try:
        loaded = x509.load_pem_x509_certificate(certificate.read_bytes())
    except (OSError, ValueError):
        return False
    return loaded.not_valid_after_utc - datetime.datetime.now(datetime.UTC) > RENEW_BEFORE


# --- what clients trust --------------------------------------------------------


def dev_pki_dir() -> Path:
    """Where `conclave dev` keeps its CA and certificates (config_dir()/dev-pki),
    reused from one run to the next so that a CA imported into a browser stays good."""
    return config_dir() / "dev-pki"


def find_ca_file() -> Path | None:
    """The CA a client checks servers' certificates with: the file $CONCLAVE_CA_FILE
    names, else the development CA if `conclave dev` made one, else None (talk in
    clear to the control plane; wss:// relays are checked against the system's CAs)."""
    value = os.environ.get(CA_FILE_ENV, "").strip()
    if value:
        return Path(value).expanduser()
    dev_ca = dev_pki_dir() / "ca.pem"
    return dev_ca if dev_ca.exists() else None


def client_ssl_context(ca: Path | None) -> ssl.SSLContext:
    """A client context (aiohttp: https://, wss://) trusting the system's CAs and `ca`."""
    context = ssl.create_default_context()
    if ca is not None:
        context.load_verify_locations(cafile=ca)
    return context


# --- the control plane's server side, and its clients ------------------------


def server_credentials(files: TlsFiles) -> grpc.ServerCredentials:
    """gRPC server credentials presenting `files.cert` (chain) and `files.key`;
    clients are not asked for a certificate (they prove themselves with tokens)."""
    return grpc.ssl_server_credentials([(files.key.read_bytes(), files.cert.read_bytes())])


def channel_credentials(ca: Path) -> grpc.ChannelCredentials:
    """gRPC channel credentials that check the server's certificate against `ca`."""
    return grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())


def mutual_server_credentials(files: TlsFiles) -> grpc.ServerCredentials:
    """gRPC server credentials presenting `files.cert` and `files.key` that refuse
    any client without a certificate `files.ca` signed (a relay's gRPC port)."""
    ca, chain, key = files.read()
    return grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=ca, require_client_auth=True
    )


def mutual_channel_credentials(files: TlsFiles) -> grpc.ChannelCredentials:
    """gRPC channel credentials that check the server's certificate against
    `files.ca` and present `files.cert` and `files.key` as the client's."""
    ca, chain, key = files.read()
    return grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=chain
    )


def server_ssl_context(files: TlsFiles) -> ssl.SSLContext:
    """An HTTPS server context (aiohttp) presenting `files.cert` and `files.key`."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(files.cert, files.key)
    return context


# --- the etcd client options -------------------------------------------------


def add_etcd_tls_arguments(parser: argparse.ArgumentParser) -> None:
    """`--etcd-ca`, `--etcd-cert`, `--etcd-key`, defaults from the environment."""
    _add_file_arguments(
        parser,
        "etcd TLS (all three or none)",
        (
            ("--etcd-ca", CA_ENV, "CA certificate that signed etcd's server certificate"),
            ("--etcd-cert", CERT_ENV, "client certificate (chain) to present to etcd"),
            ("--etcd-key", KEY_ENV, "private key of --etcd-cert"),
        ),
    )


def _add_file_arguments(
    parser: argparse.ArgumentParser, title: str, options: tuple[tuple[str, str, str], ...]
) -> None:
    """Path options (flag, environment variable, what it is), defaulting to the variable."""
    group = parser.add_argument_group(title)
    for flag, env, what in options:
        group.add_argument(
            flag,
            type=Path,
            default=Path(os.environ[env]) if os.environ.get(env) else None,
            metavar="PATH",
            help=f"{what} (default: ${env})",
        )


def etcd_tls_from(args: argparse.Namespace, parser: argparse.ArgumentParser) -> TlsFiles | None:
    """The TlsFiles the options name, None without any; `parser.error` (exit 2)
    when only some are given or a file cannot be read."""
    given = {"--etcd-ca": args.etcd_ca, "--etcd-cert": args.etcd_cert, "--etcd-key": args.etcd_key}
    return _files_from(given, "etcd TLS", (CA_ENV, CERT_ENV, KEY_ENV), parser)


def _files_from(
    given: dict[str, Path | None],
    what: str,
    envs: tuple[str, str, str],
    parser: argparse.ArgumentParser,
) -> TlsFiles | None:
    """TlsFiles of three (CA, certificate, key) options, None without any."""
    if not any(given.values()):
        return None
    missing = [flag for flag, path in given.items() if path is None]
    if missing:
        *first, last = given
        flags = f"{', '.join(first)} and {last}"
        variables = ", ".join(f"${env}" for env in envs)
        parser.error(
            f"{what} needs {flags} together; missing {', '.join(missing)} (or {variables})"
        )
    paths = {flag: path for flag, path in given.items() if path is not None}
    unreadable = [flag for flag, path in paths.items() if not os.access(path, os.R_OK)]
    if unreadable:
        parser.error(f"cannot read the file of {', '.join(unreadable)}")
    ca, cert, key = paths.values()
    return TlsFiles(ca, cert, key)


# --- a server's own certificate (the control plane's API, a relay's HTTPS) -----


def add_server_tls_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """`--tls-cert` and `--tls-key`: serve `what` over TLS with this certificate."""
    group = parser.add_argument_group(f"TLS of {what} (both or neither)")
    group.add_argument(
        "--tls-cert",
        type=Path,
        metavar="PATH",
        help=f"serve {what} over TLS with this certificate (chain, PEM)",
    )
    group.add_argument(
        "--tls-key", type=Path, metavar="PATH", help="private key of --tls-cert (PEM)"
    )


def server_tls_from(args: argparse.Namespace, parser: argparse.ArgumentParser) -> TlsFiles | None:
    """The certificate `--tls-cert` and `--tls-key` name, None without both;
    `parser.error` (exit 2) when only one is given or a file cannot be read."""
    if args.tls_cert is None and args.tls_key is None:
        return None
    if args.tls_cert is None or args.tls_key is None:
        parser.error("TLS needs --tls-cert and --tls-key together")
    unreadable = [
        flag
        for flag, path in (("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key))
        if not os.access(path, os.R_OK)
    ]
    if unreadable:
        parser.error(f"cannot read the file of {', '.join(unreadable)}")
    # The certificate stands in for the CA, which a server that asks clients for
    # no certificate never reads.
    return TlsFiles(args.tls_cert, args.tls_cert, args.tls_key)


# --- the mutual TLS of the relays' gRPC port ---------------------------------


def add_rpc_tls_arguments(parser: argparse.ArgumentParser) -> None:
    """`--rpc-ca`, `--rpc-cert`, `--rpc-key`, defaults from the environment: the
    mutual TLS between relays and control planes (RelayService, RelayLink)."""
    _add_file_arguments(
        parser,
        "relay gRPC mutual TLS (all three or none)",
        (
            ("--rpc-ca", RPC_CA_ENV, "CA certificate that signs every relay's and control plane's"),
            ("--rpc-cert", RPC_CERT_ENV, "certificate (chain) presented as server and as client"),
            ("--rpc-key", RPC_KEY_ENV, "private key of --rpc-cert"),
        ),
    )


def rpc_tls_from(args: argparse.Namespace, parser: argparse.ArgumentParser) -> TlsFiles | None:
    """The TlsFiles `--rpc-ca/--rpc-cert/--rpc-key` name, None without any;
    `parser.error` (exit 2) when only some are given or a file cannot be read."""
    given = {"--rpc-ca": args.rpc_ca, "--rpc-cert": args.rpc_cert, "--rpc-key": args.rpc_key}
    return _files_from(given, "relay gRPC TLS", (RPC_CA_ENV, RPC_CERT_ENV, RPC_KEY_ENV), parser)

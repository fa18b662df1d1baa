"""The TLS plumbing: certificates as asked for, a dev PKI made once and kept private."""

from __future__ import annotations

import argparse
import base64
import datetime
import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store

from conclave.tls import (
    DEV_LEAF_DAYS,
    DEV_LEAVES,
    DEV_SERVER_HOSTS,
    TlsFiles,
    add_etcd_tls_arguments,
    add_rpc_tls_arguments,
    dev_pki,
    dev_pki_dir,
    etcd_tls_from,
    find_ca_file,
    issue,
    make_ca,
    rpc_tls_from,
    spki_sha256,
)
from control_plane.main import parse_args


def _load(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def test_issued_server_certificate_verifies_for_its_hosts() -> None:
    ca_pem, ca_key = make_ca("test CA")
    cert_pem, _ = issue(
        ca_pem, ca_key, "server", hosts=["127.0.0.1", "localhost"], server=True, client=False
    )
    verifier = PolicyBuilder().store(Store([_load(ca_pem)])).build_server_verifier
    for name in (x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")):
        chain = verifier(name).verify(_load(cert_pem), [])
        assert chain[-1] == _load(ca_pem)
    with pytest.raises(x509.verification.VerificationError):
        verifier(x509.DNSName("example.org")).verify(_load(cert_pem), [])
    usages = _load(cert_pem).extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_issued_client_certificate_verifies_as_client_only() -> None:
    ca_pem, ca_key = make_ca("test CA")
    cert_pem, _ = issue(ca_pem, ca_key, "c", hosts=["c"], server=False, client=True)
    store = Store([_load(ca_pem)])
    PolicyBuilder().store(store).build_client_verifier().verify(_load(cert_pem), [])
    with pytest.raises(x509.verification.VerificationError):  # no serverAuth
        PolicyBuilder().store(store).build_server_verifier(x509.DNSName("client")).verify(
            _load(cert_pem), []
        )


def test_certificate_of_another_ca_does_not_verify() -> None:
    ca_pem, _ = make_ca("ours")
    other_pem, other_key = make_ca("theirs")
    cert_pem, _ = issue(other_pem, other_key, "c", hosts=["c"], server=False, client=True)
    verifier = PolicyBuilder().store(Store([_load(ca_pem)])).build_client_verifier()
    with pytest.raises(x509.verification.VerificationError):
        verifier.verify(_load(cert_pem), [])


def test_ca_is_a_ca() -> None:
    ca = _load(make_ca("test CA")[0])
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign


def test_dev_pki_is_private_and_made_once(tmp_path: Path) -> None:
    directory = tmp_path / "pki"
    first = dev_pki(directory)
    assert set(first) == {name for name, *_ in DEV_LEAVES}
    assert set(first) == {
        "etcd-server",
        "etcd-client",
        "etcd-peer",
        "control-plane",
        "cell",
        "relay",
    }
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    files = sorted(directory.iterdir())
    assert len(files) == 2 + 2 * len(DEV_LEAVES)
    assert all(stat.S_IMODE(path.stat().st_mode) == 0o600 for path in files)
    contents = {path: path.read_bytes() for path in files}
    assert dev_pki(directory) == first
    assert {path: path.read_bytes() for path in files} == contents
    ca, cert, key = first["etcd-client"].read()
    assert (ca, cert) == (contents[directory / "ca.pem"], contents[directory / "etcd-client.pem"])
    assert b"PRIVATE KEY" in key


def test_dev_pki_renews_a_leaf_about_to_end_and_everything_under_a_new_ca(
    tmp_path: Path,
) -> None:
    files = dev_pki(tmp_path)
    ca = files["relay"].ca.read_bytes()
    ca_key = (tmp_path / "ca-key.pem").read_bytes()
    ending = issue(ca, ca_key, "ending", hosts=DEV_SERVER_HOSTS, server=True, client=False, days=0)
    files["relay"].cert.write_bytes(ending[0])
    kept = files["cell"].cert.read_bytes()
    again = dev_pki(tmp_path)
    renewed = _load(again["relay"].cert.read_bytes())
    assert renewed.not_valid_after_utc - datetime.datetime.now(datetime.UTC) > datetime.timedelta(
        days=DEV_LEAF_DAYS - 1
    )
    assert again["cell"].cert.read_bytes() == kept  # the others stay
    old_ca, _ = make_ca("ended", days=0)
    (tmp_path / "ca.pem").write_bytes(old_ca)
    fresh = dev_pki(tmp_path)
    new_ca = fresh["cell"].ca.read_bytes()
    assert new_ca != old_ca
    verifier = PolicyBuilder().store(Store([_load(new_ca)])).build_client_verifier()
    for name in ("cell", "etcd-client"):  # every leaf is the new CA's
        verifier.verify(_load(fresh[name].cert.read_bytes()), [])


def test_dev_pki_issues_a_missing_leaf_from_the_existing_ca(tmp_path: Path) -> None:
    files = dev_pki(tmp_path)
    ca = files["etcd-server"].ca.read_bytes()
    files["etcd-client"].cert.unlink()
    again = dev_pki(tmp_path)
    assert again["etcd-client"].ca.read_bytes() == ca
    verifier = PolicyBuilder().store(Store([_load(ca)])).build_client_verifier()
    verifier.verify(_load(again["etcd-client"].cert.read_bytes()), [])


def _parse(argv: list[str]) -> TlsFiles | None:
    parser = argparse.ArgumentParser()
    add_etcd_tls_arguments(parser)
    return etcd_tls_from(parser.parse_args(argv), parser)


def test_etcd_tls_options_all_or_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("CONCLAVE_ETCD_CA", "CONCLAVE_ETCD_CERT", "CONCLAVE_ETCD_KEY"):
        monkeypatch.delenv(name, raising=False)
    files = dev_pki(tmp_path)["etcd-client"]
    assert _parse([]) is None
    flags = ["--etcd-ca", str(files.ca), "--etcd-cert", str(files.cert), "--etcd-key"]
    assert _parse([*flags, str(files.key)]) == files
    with pytest.raises(SystemExit):
        _parse(flags[:4])
    assert "missing --etcd-key" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _parse([*flags, str(tmp_path / "absent")])
    assert "cannot read" in capsys.readouterr().err
    monkeypatch.setenv("CONCLAVE_ETCD_CA", str(files.ca))
    monkeypatch.setenv("CONCLAVE_ETCD_CERT", str(files.cert))
    monkeypatch.setenv("CONCLAVE_ETCD_KEY", str(files.key))
    assert _parse([]) == files


def test_control_plane_tls_options_both_or_neither(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = dev_pki(tmp_path)["control-plane"]
    assert parse_args([]).tls is None
    tls = parse_args(["--tls-cert", str(files.cert), "--tls-key", str(files.key)]).tls
    assert tls is not None and (tls.cert, tls.key) == (files.cert, files.key)
    with pytest.raises(SystemExit):
        parse_args(["--tls-cert", str(files.cert)])
    assert "--tls-cert and --tls-key together" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--tls-cert", str(files.cert), "--tls-key", str(tmp_path / "absent")])
    assert "cannot read the file of --tls-key" in capsys.readouterr().err


def test_dev_pki_cell_certificate_is_server_and_client(tmp_path: Path) -> None:
    cell = dev_pki(tmp_path)["cell"]
    store = Store([_load(cell.ca.read_bytes())])
    leaf = _load(cell.cert.read_bytes())
    builder = PolicyBuilder().store(store)
    builder.build_server_verifier(x509.IPAddress(ipaddress.ip_address("127.0.0.1"))).verify(
        leaf, []
    )
    builder.build_server_verifier(x509.DNSName("localhost")).verify(leaf, [])
    builder.build_client_verifier().verify(leaf, [])


def _parse_rpc(argv: list[str]) -> TlsFiles | None:
    parser = argparse.ArgumentParser()
    add_rpc_tls_arguments(parser)
    return rpc_tls_from(parser.parse_args(argv), parser)


def test_rpc_tls_options_all_or_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("CONCLAVE_RPC_CA", "CONCLAVE_RPC_CERT", "CONCLAVE_RPC_KEY"):
        monkeypatch.delenv(name, raising=False)
    files = dev_pki(tmp_path)["cell"]
    assert _parse_rpc([]) is None
    assert parse_args([]).relay_tls is None
    flags = ["--rpc-ca", str(files.ca), "--rpc-cert", str(files.cert), "--rpc-key"]
    assert _parse_rpc([*flags, str(files.key)]) == files
    assert parse_args([*flags, str(files.key)]).relay_tls == files
    with pytest.raises(SystemExit):
        _parse_rpc(flags[:4])
    assert "missing --rpc-key" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _parse_rpc([*flags, str(tmp_path / "absent")])
    assert "cannot read the file of --rpc-key" in capsys.readouterr().err
    monkeypatch.setenv("CONCLAVE_RPC_CA", str(files.ca))
    monkeypatch.setenv("CONCLAVE_RPC_CERT", str(files.cert))
    monkeypatch.setenv("CONCLAVE_RPC_KEY", str(files.key))
    assert _parse_rpc([]) == files


def test_clients_find_the_named_ca_else_the_dev_ca_else_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("CONCLAVE_CA_FILE", raising=False)
    assert find_ca_file() is None  # no dev cluster ran here: the control plane in clear
    assert dev_pki_dir() == tmp_path / "config" / "conclave" / "dev-pki"
    files = dev_pki(dev_pki_dir())
    assert find_ca_file() == files["cell"].ca
    monkeypatch.setenv("CONCLAVE_CA_FILE", str(tmp_path / "theirs.pem"))
    assert find_ca_file() == tmp_path / "theirs.pem"


def test_spki_pins_are_the_sha256_of_each_public_key(tmp_path: Path) -> None:
    files = dev_pki(tmp_path)
    pins = {spki_sha256(files[name].cert) for name in ("control-plane", "relay")}
    assert len(pins) == 2
    assert all(len(base64.b64decode(pin)) == 32 for pin in pins)
    renewed = issue(
        files["relay"].ca.read_bytes(), (tmp_path / "ca-key.pem").read_bytes(), "again",
        hosts=DEV_SERVER_HOSTS, server=True, client=False,
    )  # fmt: skip
    (tmp_path / "again.pem").write_bytes(renewed[0])
    assert spki_sha256(tmp_path / "again.pem") not in pins  # a new key, a new pin

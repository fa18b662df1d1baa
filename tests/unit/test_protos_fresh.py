"""The committed generated stubs must match the .proto files (run `make protos`)."""

from __future__ import annotations

import shutil
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[2]
PROTOS = ["protos/rooms.proto", "protos/relay.proto", "protos/grant.proto", "protos/link.proto"]


def test_generated_stubs_are_up_to_date(tmp_path: Path) -> None:
    (tmp_path / "protos").mkdir()
    for proto in PROTOS:
        shutil.copy(ROOT / proto, tmp_path / proto)
    args = ["protoc", f"-I{tmp_path}", f"--python_out={tmp_path}", f"--pyi_out={tmp_path}",
            f"--grpc_python_out={tmp_path}", *(str(tmp_path / p) for p in PROTOS)]  # fmt: skip
    assert protoc.main(args) == 0
    generated = sorted(p.name for p in (tmp_path / "protos").glob("*_pb2*.py*"))
    generated.remove("grant_pb2_grpc.py")  # grant.proto has no service
    committed = sorted(p.name for p in (ROOT / "protos").glob("*_pb2*.py*"))
    assert generated == committed
    stale = [
        name
        for name in generated
        if (tmp_path / "protos" / name).read_text() != (ROOT / "protos" / name).read_text()
    ]
    assert not stale, f"stale generated stubs {stale}: run `make protos`"

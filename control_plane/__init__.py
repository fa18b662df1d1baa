"""Conclave's control plane: the gRPC RoomService, node registry, placement and grant signing."""

"""Metrics both servers export the same way: gRPC calls they serve and the etcd
requests they make (docs/metrics.md). Labels are method names, status-code names
and operation names: closed sets, never ids."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

ETCD_OPERATIONS = (
    "get",
    "get_prefix",
    "put",
    "delete",
    "transaction",
    "lease_grant",
    "lease_keepalive",
    "lease_revoke",
)


class ServerMetrics:
    """One process's (or one test replica's) gRPC and etcd metrics."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.grpc_handling = Histogram(
            "conclave_grpc_server_handling_seconds",
            "gRPC calls served, by method and status code",
            ["method", "code"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.etcd_duration = Histogram(
            "conclave_etcd_request_duration_seconds",
            "etcd requests by operation",
            ["operation"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.etcd_errors = Counter(
            "conclave_etcd_request_errors_total",
            "etcd requests that failed, by operation",
            ["operation"],
            registry=registry,
        )
        for operation in ETCD_OPERATIONS:
            self.etcd_duration.labels(operation=operation)
            self.etcd_errors.labels(operation=operation)

    def observe_etcd(self, operation: str, seconds: float, failed: bool) -> None:
        """Called by conclave.store.EtcdStore after every request."""
        self.etcd_duration.labels(operation=operation).observe(seconds)
        if failed:
            self.etcd_errors.labels(operation=operation).inc()

    def interceptor(self) -> grpc.aio.ServerInterceptor:
        """Times every unary call the server handles."""
        return _CallTimer(self.grpc_handling)


Behavior = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]


class _CallTimer(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, histogram: Histogram) -> None:
        self._histogram = histogram

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        # Unknown methods (None) are not counted: their names are the caller's choice.
        if handler is None or handler.unary_unary is None:
            return handler
        method = str(handler_call_details.method).rsplit("/", 1)[-1]
        timed = self._timed(method, handler.unary_unary)
        return grpc.unary_unary_rpc_method_handler(
            timed,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _timed(self, method: str, behavior: Behavior) -> Behavior:
        histogram = self._histogram

        async def timed(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            started = time.perf_counter()
            failed = False
            try:
                return await behavior(request, context)
            except BaseException:
                failed = True
                raise
            finally:
                code = _code_name(context.code(), failed)
                histogram.labels(method=method, code=code).observe(time.perf_counter() - started)

        return timed


def _code_name(code: object, failed: bool) -> str:
    """The status the call ended with: what the handler set or aborted with; an
    exception without one is UNKNOWN, as grpc reports it to the caller."""
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    if isinstance(code, int):
        for status in grpc.StatusCode:
            if status.value[0] == code:
                return str(status.name)
    return "UNKNOWN" if failed else "OK"

"""AsyncCascadeClient offers CascadeClient's API: the same names and arguments, and the same settings (the same
answers and errors on a real server: tests/server/test_async_client_server.py)."""

import asyncio
import inspect

from cascade import contract
from cascade_client import AsyncCascadeClient, CascadeClient

#: Context-manager and closing methods differ by nature (``with``/``close()`` vs ``async with``/``await close()``).
LIFECYCLE = {"close", "__enter__", "__exit__", "__aenter__", "__aexit__"}


def public_methods(cls) -> set[str]:
    return {name for name, member in inspect.getmembers(cls, callable) if not name.startswith("_")} - LIFECYCLE


def test_the_async_client_has_every_public_method_of_the_sync_one_with_the_same_parameters():
    sync, aio = public_methods(CascadeClient), public_methods(AsyncCascadeClient)
    assert sync <= aio, f"missing from AsyncCascadeClient: {sorted(sync - aio)}"
    for name in sorted(sync):
        method = getattr(AsyncCascadeClient, name)
        assert inspect.iscoroutinefunction(method), name
        assert inspect.signature(method) == inspect.signature(getattr(CascadeClient, name)), name
    assert inspect.signature(AsyncCascadeClient) == inspect.signature(CascadeClient)
    assert inspect.iscoroutinefunction(AsyncCascadeClient.close)
    assert hasattr(AsyncCascadeClient, "__aenter__") and hasattr(AsyncCascadeClient, "__aexit__")


def test_both_clients_send_the_same_admin_header(monkeypatch):
    async def settings(**kwargs):
        async with AsyncCascadeClient("127.0.0.1:1", **kwargs) as aclient:
            return aclient._admin_headers, aclient.url, aclient.timeout_s

    cases = [  # (constructor arguments, $CASCADE_ADMIN_KEY, the key sent)
        ({"admin_key": "k1"}, None, "k1"),
        ({"admin_key": "k1"}, "k2", "k1"),
        ({}, None, None),
        ({}, "k2", "k2"),
        ({"admin_key": "", "timeout_s": 3.0}, "k2", None),
    ]
    for kwargs, env, key in cases:
        if env is None:
            monkeypatch.delenv(contract.ADMIN_KEY_ENV, raising=False)
        else:
            monkeypatch.setenv(contract.ADMIN_KEY_ENV, env)
        with CascadeClient("127.0.0.1:1", **kwargs) as client:
            expected = client._admin_headers, client.url, client.timeout_s
        assert expected[0] == ({contract.GRPC_ADMIN_HEADER: key} if key else None)
        assert asyncio.run(settings(**kwargs)) == expected, (kwargs, env)


def test_async_is_ready_is_false_without_a_server():
    from cascade.server.launcher import free_ports

    (port,) = free_ports(1)

    async def run():
        async with AsyncCascadeClient(f"127.0.0.1:{port}", timeout_s=5) as aclient:
            return await aclient.is_ready()

    with CascadeClient(f"127.0.0.1:{port}", timeout_s=5) as client:
        assert client.is_ready() is False
    assert asyncio.run(run()) is False


def test_a_metadata_call_to_a_server_that_never_answers_fails_as_unavailable():
    # A socket that accepts connections and never speaks (a stuck server): a metadata call gives up at its
    # deadline, as an error the job's first-contact retry understands, for both clients.
    import socket
    import time

    import pytest

    from cascade.errors import ServerUnavailable

    with socket.socket() as stuck:
        stuck.bind(("127.0.0.1", 0))
        stuck.listen(8)
        url = f"127.0.0.1:{stuck.getsockname()[1]}"
        start = time.monotonic()
        with CascadeClient(url, timeout_s=1.0) as client, pytest.raises(ServerUnavailable, match="DEADLINE"):
            client.task_info("sst2")

        async def aio():
            async with AsyncCascadeClient(url, timeout_s=1.0) as client:
                await client.model_stats()

        with pytest.raises(ServerUnavailable, match="DEADLINE"):
            asyncio.run(aio())
        assert time.monotonic() - start < 20

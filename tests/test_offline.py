"""Nothing in the test suite reaches the network."""
import os
import socket
import urllib.request

import pytest

from conftest import NetworkBlocked


def test_hub_is_offline():
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    import huggingface_hub.constants as c

    assert c.HF_HUB_OFFLINE


@pytest.mark.parametrize("address", [("huggingface.co", 443), ("93.184.216.34", 80), ("10.0.0.1", 22)])
def test_socket_guard_blocks_remote(address):
    with pytest.raises(NetworkBlocked):
        socket.create_connection(address, timeout=1)


def test_urllib_is_blocked():
    with pytest.raises((NetworkBlocked, OSError)) as info:
        urllib.request.urlopen("https://huggingface.co/facebook/esm2_t6_8M_UR50D", timeout=1)
    assert "must not use the network" in str(info.value) or isinstance(info.value.__cause__, NetworkBlocked) \
        or "NetworkBlocked" in repr(info.value)


def test_loopback_is_allowed():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = socket.create_connection(server.getsockname(), timeout=1)
    client.close()
    server.close()

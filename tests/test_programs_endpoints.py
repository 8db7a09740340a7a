"""How the openai backend meets what real servers send (QA report llm.md): refusals of the response format,
servers that fail every request, rate limits, timeouts, error bodies and base URLs."""

import asyncio

import pytest


def test_a_connection_closed_mid_response_is_said_in_words():
    from leap_cli.programs.http import HTTPClient, HTTPConnectionError

    async def on_conn(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n{\"choices\": [")
        await writer.drain()
        writer.close()

    async def main():
        server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
        client = HTTPClient(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1", {}, timeout=5)
        try:
            with pytest.raises(HTTPConnectionError, match="^the server closed the connection mid-response$"):
                await client.post("/chat/completions", b"{}")
        finally:
            await client.aclose()
            server.close()

    asyncio.run(main())

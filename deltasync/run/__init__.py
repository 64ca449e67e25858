"""The only asyncio: one driver moves bytes between a transport and the
conversation machine and performs its effects; client, server and watch use it."""

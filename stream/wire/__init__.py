"""The wire: typed events and client messages, the sans-I/O connection core, and the asyncio
WebSocket/HTTP shell that serves them to clients and the overlay."""

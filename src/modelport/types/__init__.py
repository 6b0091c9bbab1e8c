"""Wire models shared by the API, the client and the engine (pydantic, no behaviour)."""

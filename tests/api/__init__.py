"""chatkeep's native HTTP API, served by uvicorn on a real socket in the test's process."""

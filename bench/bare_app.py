"""The reference of the throughput benchmark: a bare FastAPI app answering /health,
run in the same virtual environment and under the same server as the service."""

from fastapi import FastAPI

app = FastAPI()


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}

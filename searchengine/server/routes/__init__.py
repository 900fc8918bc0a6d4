"""The HTTP API's routes, one ``APIRouter`` per area (status, search, images, admin, the page);
:func:`searchengine.server.app.create_app` includes each explicitly. Importing them needs FastAPI."""

__all__: list[str] = []

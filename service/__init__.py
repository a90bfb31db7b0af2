"""HTTP object-localization service: ``POST /v1/boxes`` answers object boxes (LOST, TokenCut), one per uploaded image
or several, with their pixel masks on request.

``service.app.create_app`` builds the FastAPI app; ``uvicorn service.app:app`` or ``lost-reg serve``
runs it. Configuration: :class:`service.settings.Settings` (``LOST_REG_*`` environment variables).
"""

MAX_SIDE = 1024
"""The service's default longest side of the network input (``--max-side``): graphs grow with the square of
the patch count, so a server bounds it. Here, not in settings, so ``lost-reg serve --help`` shows it cheaply."""

"""HTTP object-localization service: ``POST /v1/boxes`` answers one object box (LOST, TokenCut) per uploaded image.

``service.app.create_app`` builds the FastAPI app; ``uvicorn service.app:app`` or ``lost-reg serve``
runs it. Configuration: :class:`service.settings.Settings` (``LOST_REG_*`` environment variables).
"""

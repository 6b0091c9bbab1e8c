"""Persistence: SQL metadata (``db``, ``tables``, ``migrations``) and the artifact store.

Import the submodules directly (``from modelport.storage.artifacts import verify_file``).
This package module re-exports nothing on purpose: worker processes only need
``artifacts.verify_file`` and must not pay for importing SQLAlchemy and Alembic.
"""

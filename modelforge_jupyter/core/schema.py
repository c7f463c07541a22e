"""The registry's tables (SQLAlchemy Core). Alembic migrations in ``migrations/`` create and evolve them.

- ``mf_models``: one row per model name; ``id`` is a uuid stable across versions; ``last_version`` is the highest
  version number ever given, so numbers are never reused after a delete.
- ``mf_model_versions``: one row per (model, version) with the declared inputs/outputs (JSON lists of TensorSpec
  dicts), the sha256 of its ONNX bytes and, for a version converted from a fitted object, its ``conversion`` (JSON:
  converter, version, tolerance, measured errors; NULL for a version registered as ONNX).
- ``mf_blobs``: the ONNX bytes, content-addressed by sha256, so any process connected to the database can load a
  model without a shared filesystem. A blob no version references is deleted with its last version.
- ``mf_registry_state``: one row whose ``generation`` every write transaction increments first: it serializes writers
  and tells readers cheaply whether anything changed.
"""

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
)

metadata = MetaData()

models = Table(
    "mf_models",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("name", String(255), nullable=False, unique=True),
    Column("last_version", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

blobs = Table(
    "mf_blobs",
    metadata,
    Column("sha256", String(64), primary_key=True),
    Column("data", LargeBinary, nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

model_versions = Table(
    "mf_model_versions",
    metadata,
    Column("model_id", String(36), ForeignKey("mf_models.id", ondelete="CASCADE"), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("sha256", String(64), ForeignKey("mf_blobs.sha256"), nullable=False, index=True),
    Column("inputs", JSON, nullable=False),
    Column("outputs", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("conversion", JSON(none_as_null=True), nullable=True),
)

registry_state = Table(
    "mf_registry_state",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("generation", BigInteger, nullable=False),
)

"""tei-manager: plan, run and route TEI embedding and rerank models for several tenants."""

__version__ = "0.1.0"

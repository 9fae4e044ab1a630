"""A TEI-compatible embedding and rerank server on transformers, for hosts where TEI cannot run.

It speaks text-embeddings-inference 1.9's HTTP API and takes text-embeddings-router's flags, so a
caller cannot tell the two apart except through the extra fields it adds. It never imports
tei_manager: the HTTP API is the only contract between them.
"""

__version__ = "0.1.0"
# The TEI release whose API (routes, bodies, errors, /info) this worker reproduces.
TEI_API_VERSION = "1.9.3"

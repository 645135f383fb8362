"""ragworks: raw corpus in, tuned, evaluated and served RAG stack out, on Ray."""

__version__ = "0.1.0"

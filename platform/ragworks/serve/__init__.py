"""Ray Serve application: embedder, retriever and generator deployments behind one FastAPI ingress."""

from .app import ServeOptions, build, start

__all__ = ["ServeOptions", "build", "start"]

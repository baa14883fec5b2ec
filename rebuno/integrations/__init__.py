"""Adapters between Rebuno tools and agent frameworks.

Each submodule needs its framework installed (an optional extra of ``rebuno``):

* :mod:`rebuno.integrations.langchain` — LangChain / LangGraph tools
  (``pip install 'rebuno[langgraph]'``).

Importing this package imports no framework.
"""

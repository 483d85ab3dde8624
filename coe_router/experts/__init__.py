"""Experts: the catalog, replica clients, launched processes and the pool that owns them.

The only package that talks to vLLM.
"""

"""Integrations with other libraries, each an optional extra:

- :mod:`.inseq`: the inseq attribution method ``"influence_patterns"``.
"""

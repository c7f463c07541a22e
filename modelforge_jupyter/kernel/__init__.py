"""The kernel side of ModelForge: IPython magics (``magics``) and the ``%mf_bench`` dashboard (``dashboard``).

Load with ``%load_ext modelforge_jupyter``; the entry points live in the package ``__init__``.
"""
